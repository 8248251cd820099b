"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_cluster_accuracy_is_one_under_any_permutation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    permutation = rng.permutation(10)
    assert metrics.cluster_accuracy(labels, permutation[labels]) == 1.0
    assert metrics.nmi(labels, permutation[labels]) == pytest.approx(1.0)


def test_cluster_accuracy_counts_the_best_matching():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    clusters = np.array([2, 2, 1, 0, 0, 0, 1, 1, 1, 2])
    # best map: 2->0, 0->1, 1->2 gives 2 + 3 + 3 = 8 correct
    assert metrics.cluster_mapping(labels, clusters) == {2: 0, 0: 1, 1: 2}
    assert metrics.cluster_accuracy(labels, clusters) == pytest.approx(0.8)


def test_majority_labels():
    labels = np.array([3, 3, 5, 7, 7, 7])
    clusters = np.array([0, 0, 0, 1, 1, 1])
    assert metrics.majority_labels(labels, clusters, 3) == [3, 7, -1]


def test_reconstruction_metrics():
    images = np.zeros((2, 28, 28), np.float32)
    recon = np.full((2, 28, 28), 0.1, np.float32)
    assert metrics.per_image_mse(images, recon) == pytest.approx([0.01, 0.01])
    assert metrics.psnr_db(0.01) == pytest.approx(20.0)
    assert metrics.rounded_accuracy(images, recon) == 1.0
    assert metrics.rounded_accuracy(images, recon + 0.5) == 0.0


def test_accuracy_and_confusion():
    labels, predicted = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    assert metrics.accuracy(labels, predicted) == 0.75
    matrix = metrics.confusion_matrix(labels, predicted)
    assert matrix[1, 2] == 1 and matrix[2, 2] == 2 and matrix.sum() == 4
