"""The API key, CORS (off unless configured), and a missing models directory as a startup error."""

from __future__ import annotations

import shutil

import httpx
import pytest
from conftest import MODELS_DIR, ready_app

from scripts import local_server

pytestmark = pytest.mark.anyio
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """A models directory holding one small committed model."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS_DIR / "fashion-mnist-tied", folder / "fashion-mnist-tied")
    return folder


def client_of(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


IMAGE = {"images": [[[0.0] * 28] * 28]}


async def test_api_key_guards_every_route_but_the_health_checks(small_models):
    app = ready_app(models_dir=small_models, api_key=KEY)
    async with client_of(app) as http:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert (await http.get(path)).status_code == 200, path

        guarded = [
            ("POST", "/encode?dataset=fashion-mnist", IMAGE),
            ("POST", "/v1/models/fashion-mnist-tied:predict", {"instances": IMAGE["images"]}),
            ("GET", "/models", None),
            ("GET", "/metrics", None),
            ("GET", "/v2/models/fashion-mnist-tied", None),
            ("GET", "/openapi.json", None),
            ("GET", "/", None),
            ("GET", "/no-such-route", None),
        ]
        for method, path, body in guarded:
            missing = await http.request(method, path, json=body)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"].startswith("Bearer") and "API key" in missing.json()["error"]
            wrong = await http.request(method, path, json=body, headers={"Authorization": "Bearer " + KEY[:-1]})
            assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
            assert KEY not in wrong.text
            assert (await http.request(method, path, json=body, headers={"Authorization": KEY})).status_code == 401

        right = {"Authorization": f"Bearer {KEY}"}
        assert (await http.post("/encode?dataset=fashion-mnist", json=IMAGE, headers=right)).status_code == 200
        assert (await http.get("/models", headers=right)).status_code == 200
        assert (await http.get("/no-such-route", headers=right)).status_code == 404
        metrics = (await http.get("/metrics", headers=right)).text
        assert 'route="unmatched",status="401"' in metrics  # refusals are counted too


async def test_no_api_key_and_no_cors_by_default(small_models):
    app = ready_app(models_dir=small_models)
    async with client_of(app) as http:
        origin = {"Origin": "https://elsewhere.example"}
        answer = await http.post("/encode?dataset=fashion-mnist", json=IMAGE, headers=origin)
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
        preflight = await http.options(
            "/encode", headers=origin | {"Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


async def test_cors_when_configured(small_models):
    allowed = "https://page.example"
    app = ready_app(models_dir=small_models, cors_origins=[allowed], api_key=KEY)
    async with client_of(app) as http:
        preflight_headers = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        preflight = await http.options("/encode", headers={"Origin": allowed} | preflight_headers)
        assert preflight.status_code == 200  # answered before the API key is asked for
        assert preflight.headers["access-control-allow-origin"] == allowed
        answer = await http.post(
            "/encode?dataset=fashion-mnist", json=IMAGE, headers={"Origin": allowed, "Authorization": f"Bearer {KEY}"}
        )
        assert answer.headers["access-control-allow-origin"] == allowed
        assert "x-model" in answer.headers["access-control-expose-headers"].lower()
        refused = await http.options("/encode", headers={"Origin": "https://other.example"} | preflight_headers)
        assert "access-control-allow-origin" not in refused.headers


async def test_missing_models_dir_as_a_startup_error(tmp_path):
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=tmp_path / "absent", require_models=True))
    with pytest.raises(RuntimeError, match="holds no <name>/<version>/ models"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.slow
def test_real_server_refuses_to_start_without_models(tmp_path):
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log, pytest.raises(RuntimeError, match="exited"):
        local_server.start(
            env={"AESERVE_MODELS_DIR": str(tmp_path / "absent"), "AESERVE_REQUIRE_MODELS": "true"}, log=log, timeout=60
        )
    assert "AESERVE_REQUIRE_MODELS is set" in log_path.read_text()


@pytest.mark.slow
async def test_no_response_names_a_path_of_the_server(client, committed_app, tmp_path, data_dir):
    paths = ["/models", "/readyz", "/v1/models/mnist-conv/metadata", "/v2/models/mnist-conv", "/openapi.json"]
    paths += [f"/models/{model.name}" for model in committed_app.state.registry.latest_models()]
    for path in paths:
        text = (await client.get(path)).text
        for secret in (str(MODELS_DIR.parent), str(data_dir)):
            assert secret not in text, (path, secret)
    empty = ready_app(models_dir=tmp_path / "absent")
    async with client_of(empty) as http:
        assert str(tmp_path) not in (await http.get("/readyz")).text
