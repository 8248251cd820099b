"""Test-set metrics: reconstruction, classification and clustering."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score


def per_image_mse(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Mean squared error of each image, over its pixels."""
    diff = images.reshape(len(images), -1) - reconstructions.reshape(len(images), -1)
    return np.mean(diff * diff, axis=1)


def psnr_db(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, for pixels in 0..peak."""
    return float(10.0 * np.log10(peak * peak / mse))


def rounded_accuracy(images: np.ndarray, reconstructions: np.ndarray) -> float:
    """Fraction of pixels that agree once both are rounded to 0 or 1."""
    return float(np.mean(np.round(images) == np.round(reconstructions)))


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def cluster_mapping(labels: np.ndarray, clusters: np.ndarray) -> dict[int, int]:
    """The one-to-one cluster-to-class map that agrees with the most labels (Hungarian algorithm)."""
    size = int(max(labels.max(), clusters.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True)}


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering accuracy (ACC): accuracy under the best one-to-one cluster-to-class map."""
    labels, clusters = np.asarray(labels, dtype=np.int64), np.asarray(clusters, dtype=np.int64)
    mapping = cluster_mapping(labels, clusters)
    return float(np.mean(np.array([mapping[c] for c in clusters]) == labels))


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalized mutual information between labels and clusters."""
    return float(normalized_mutual_info_score(labels, clusters))


def majority_labels(labels: np.ndarray, clusters: np.ndarray, n_clusters: int) -> list[int]:
    """Per cluster, the most frequent label of its members (-1 for an empty cluster)."""
    result = []
    for k in range(n_clusters):
        members = labels[clusters == k]
        result.append(int(np.bincount(members, minlength=10).argmax()) if len(members) else -1)
    return result


def auroc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling outliers (higher score) from inliers by a score."""
    scores = np.concatenate([inlier_scores, outlier_scores])
    is_outlier = np.concatenate([np.zeros(len(inlier_scores)), np.ones(len(outlier_scores))])
    return float(roc_auc_score(is_outlier, scores))
