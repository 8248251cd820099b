"""Operating endpoints: ``/models``, ``/models/{name}``, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import __version__
from app.dependencies import get_registry
from app.errors import ApiError, brief, error_response
from app.metrics import CONTENT_TYPE
from app.registry import Registry, ServedModel
from app.responses import JSON
from app.schemas import ErrorResponse
from app.workers import Worker

router = APIRouter(tags=["operations"])

SUMMARY_KEYS = ("dataset", "recipe", "endpoints", "latent_dim", "code_image_shape", "class_names")


def _json(payload: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type=JSON)


def describe(registry: Registry, name: str) -> dict:
    """One model: its versions' states, and the newest loaded version's manifest summary and metrics."""
    states = sorted((s for s in registry.states.values() if s.name == name), key=lambda s: s.version)
    entry: dict = {
        "name": name,
        "versions": [
            {"version": s.version, "status": s.status, "reason": s.reason, "load_seconds": s.load_seconds}
            for s in states
        ],
    }
    loaded: ServedModel | None = None
    if name in registry.models:
        loaded = registry.get(name)
    if loaded is None:
        entry["status"] = states[-1].status if states else "unknown"
        entry["reason"] = states[-1].reason if states else None
        return entry
    manifest = loaded.manifest
    entry |= {"status": "ready", "version": loaded.version} | {k: manifest.get(k) for k in SUMMARY_KEYS}
    entry["default_for"] = sorted(e for e, n in registry.defaults.get(loaded.dataset, {}).items() if n == name)
    entry["metrics"] = manifest.get("metrics", {}).get("test", {})
    entry["architecture"] = manifest.get("architecture", {}).get("description")
    entry["parameters"] = manifest.get("architecture", {}).get("parameters")
    entry["preprocess"] = loaded.preprocess  # the rule its uploaded image files get by default
    if "in_distribution" in manifest:
        entry["in_distribution"] = {
            k: manifest["in_distribution"][k] for k in ("threshold", "threshold_quantile", "test_false_positive_rate")
        }
    if "clusters" in manifest:
        entry["clusters"] = {k: manifest["clusters"][k] for k in ("n_clusters", "label_hints")}
    entry["manifest"] = _public(manifest)
    return entry


def _public(manifest: dict) -> dict:
    """The manifest without the file system path the training read its data from (only the folder name)."""
    data = manifest.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("source"), str) or "/" not in data["source"]:
        return manifest
    return manifest | {"data": data | {"source": data["source"].rstrip("/").rsplit("/", 1)[-1]}}


@router.get("/models", summary="Every model with its manifest summary and status, the service's version and limits")
async def list_models(request: Request, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    names = sorted({name for name, _ in registry.states})
    models = [describe(registry, n) for n in names]
    # the request limits, so that a client can split a large batch into requests the service accepts
    limits = dataclasses.asdict(request.app.state.limits)
    return _json(
        {
            "models": models,
            "datasets": list(registry.defaults),
            "defaults": registry.defaults,
            "aeserve_version": __version__,
            "limits": limits,
        }
    )


@router.get("/models/{name}", summary="One model", responses={404: {"model": ErrorResponse}})
async def get_model(name: str, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    if name not in {n for n, _ in registry.states}:
        raise ApiError(404, f"unknown model {brief(name)}; GET /models lists the models served")
    return _json(describe(registry, name))


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Readiness: every model loaded and warmed up, in every worker",
    responses={503: {"model": ErrorResponse}},
)
async def readyz(request: Request, registry: Annotated[Registry, Depends(get_registry)]) -> Response:
    worker: Worker | None = request.app.state.worker
    ready, workers = worker.count() if worker is not None else (int(registry.ready), 1)
    if worker is not None and ready < workers:
        mine = "" if registry.ready else f"; this one: {registry.not_ready_reason()}"
        return error_response(503, f"{ready} of {workers} workers ready{mine}", {"Retry-After": "1"})
    if not registry.ready:
        return error_response(503, registry.not_ready_reason(), {"Retry-After": "1"})
    count = sum(len(v) for v in registry.models.values())
    return _json({"status": "ready", "models": count, "workers": {"ready": ready, "total": workers}})


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, errors, latency, batch sizes and queue delays, models loaded",
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
