"""``/metrics`` scraped after real requests, request ids in and out, and the JSON log lines."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from conftest import ready_app
from helpers import npy_bytes
from prometheus_client.parser import text_string_to_metric_families

from app.observability import JsonFormatter
from app.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
NPY = {"content-type": "application/x-npy"}


async def scrape(client) -> dict[str, list]:
    """Every sample of ``/metrics``, by metric family name."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def value(samples: list, name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (0 when there is none yet)."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


async def test_metrics_after_real_requests(client, committed_app, mnist_test):
    images = (mnist_test[0][:24] / 255.0).astype(np.float32)
    before = await scrape(client)
    model = "mnist-stacked"

    for count in (1, 7, 16):
        answer = await client.post(f"/encode?model={model}", content=npy_bytes(images[:count]), headers=NPY)
        assert answer.status_code == 200
    assert (await client.post(f"/encode?model={model}", json={"images": [[[2.0] * 28] * 28]})).status_code == 422
    assert (await client.post("/v1/models/mnist-stacked:predict", json={"instances": images[:2].tolist()})).is_success

    after = await scrape(client)

    def grew(family: str, name: str, **labels: str) -> float:
        return value(after[family], name, **labels) - value(before.get(family, []), name, **labels)

    route = {"route": "/encode", "model": model}  # errors carry no model: they may come before one is chosen
    latency = after["aeserve_request_duration_seconds"]
    assert grew("aeserve_request_duration_seconds", "aeserve_request_duration_seconds_count", **route) == 3
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in latency
        if s.name.endswith("_bucket") and route.items() <= s.labels.items()
    )
    assert buckets[-1][0] == float("inf") and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert value(latency, "aeserve_request_duration_seconds_sum", **route) > 0

    counted = after["aeserve_requests"]
    ok = {"method": "POST", "route": "/encode", "model": model, "status": "200"}
    assert grew("aeserve_requests", "aeserve_requests_total", **ok) == 3
    assert grew("aeserve_request_errors", "aeserve_request_errors_total", route="/encode", status="422") == 1
    protocol = {"route": "/v1/models/{name}:predict", "model": model, "status": "200"}
    assert value(counted, "aeserve_requests_total", **protocol) >= 1

    batches = {"model": model, "outputs": "codes"}
    sizes = after["aeserve_batch_size"]
    assert grew("aeserve_batch_size", "aeserve_batch_size_sum", **batches) == 1 + 7 + 16
    assert value(after["aeserve_batch_queue_delay_seconds"], "aeserve_batch_queue_delay_seconds_count", **batches) >= 3
    assert value(sizes, "aeserve_batch_size_count", model=model, outputs="codes+reconstruction") >= 1

    registry = committed_app.state.registry
    versions = sum(len(by_version) for by_version in registry.models.values())
    assert versions > len(registry.latest_models())  # mnist-conv-denoiser serves versions 1, 2 and 3
    assert value(after["aeserve_models_loaded"], "aeserve_models_loaded") == versions
    assert value(after["aeserve_model_state"], "aeserve_model_state", model=model, state="ready") == 1
    assert value(after["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0


async def test_request_id_is_echoed_or_made(client):
    made = await client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != (await client.get("/healthz")).headers["x-request-id"]

    kept = await client.post("/encode", json={"images": []}, headers={"X-Request-ID": "client-7.a:b"})
    assert kept.status_code == 422 and kept.headers["x-request-id"] == "client-7.a:b"
    for odd in ("has space", "x" * 129, "new\\nline"):
        replaced = await client.get("/healthz", headers={"X-Request-ID": odd})
        assert replaced.headers["x-request-id"] != odd and len(replaced.headers["x-request-id"]) == 32


async def test_access_log_all_is_one_json_line_per_request(caplog):
    transport = httpx.ASGITransport(app=ready_app(access_log="all"))
    with caplog.at_level(logging.INFO, logger="aeserve.access"):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post(
                "/classify", json={"images": [[[0.0] * 28] * 28]}, headers={"X-Request-ID": "abc-1"}
            )
    assert answer.status_code == 200
    (record,) = [r for r in caplog.records if r.name == "aeserve.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["logger"] == "aeserve.access" and line["message"] == "POST /classify 200"
    assert line["request_id"] == "abc-1" and line["route"] == "/classify" and line["status"] == 200
    assert line["model"] == answer.headers["x-model"] and line["duration_ms"] > 0
    assert "time" in line


async def test_access_log_by_default_names_the_failed_requests_only(client, caplog):
    with caplog.at_level(logging.INFO, logger="aeserve.access"):
        good = await client.post("/encode", json={"images": [[[0.0] * 28] * 28]})
        bad = await client.post("/encode", json={"images": []}, headers={"X-Request-ID": "bad-1"})
        missing = await client.get("/no-such-route", headers={"X-Request-ID": "bad-2"})
    assert (good.status_code, bad.status_code, missing.status_code) == (200, 422, 404)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "aeserve.access"]
    assert [(line["request_id"], line["status"]) for line in lines] == [("bad-1", 422), ("bad-2", 404)]


@pytest.mark.parametrize(("given", "meant"), [("true", "all"), ("false", "off"), ("errors", "errors"), ("1", "all")])
def test_access_log_setting_reads_its_earlier_boolean_form(monkeypatch, given, meant):
    monkeypatch.setenv("AESERVE_ACCESS_LOG", given)
    assert Settings().access_log == meant


def test_json_formatter_keeps_exceptions_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("aeserve", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=True)
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "failed here" and "ValueError: boom" in line["exception"]
