"""The interactive API documentation, /docs (Swagger UI) and /redoc (ReDoc), served entirely by the service.

- No HTML (nor CSS) the service serves names a host other than its own; the same check flags FastAPI's stock
  pages, which load their files from a CDN.
- The pages and their files need the API key when one is set, as every route does.
- In Chromium, with every request to another host blocked: both pages render the five inference operations,
  "Try it out" on /classify answers for an uploaded PNG and for an .npy body, and no request fails and no
  console error is logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ROOT
from fastapi import FastAPI
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from test_browser import CHROMIUM, TIMEOUT_MS, missing

from app.main import create_app
from app.routers import docs
from app.settings import Settings
from scripts import local_server

SEVEN = ROOT / "examples" / "seven.png"
DIGITS = ROOT / "examples" / "digits.npy"
KEY = "docs-key"
OPERATIONS = ("encode", "reconstruct", "denoise", "classify", "cluster")
# An address's host: after a scheme's // or a bare //, a domain name, localhost or an IP address.
HOST = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*:)?//(localhost|\[[0-9a-f:.]+\]|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}|[\d.]{7,15})"
    r"(?::\d+)?(?![\w.-])",
    re.IGNORECASE,
)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)|@import\s+['"]([^'"]+)""", re.IGNORECASE)


class References(HTMLParser):
    """What an HTML page can make a browser load: its attribute values and the text of its scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for _, value in attrs if value]
        self.inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self.inside = None

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.found.append(data)


def hosts_named(text: str, media_type: str) -> set[str]:
    """The hosts an HTML page or a stylesheet refers to (a ``data:`` URI's own contents aside)."""
    if media_type.startswith("text/css"):
        values = [a or b for a, b in CSS_URL.findall(text)]
    else:
        parser = References()
        parser.feed(text)
        values = parser.found
    return {m[1].lower() for v in values if not v.lstrip().lower().startswith("data:") for m in HOST.finditer(v)}


def get_paths(routes: list, prefix: str = "") -> Iterator[str]:
    """The paths of the GET routes without parameters, and of the .html and .css files of the static mounts."""
    for route in routes:
        included = getattr(route, "original_router", None)  # newer FastAPI keeps an included router whole
        if included is not None:
            yield from get_paths(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            folder = Path(route.app.directory)
            for file in sorted(folder.rglob("*")):
                if file.suffix in (".html", ".css"):
                    yield f"{prefix}{route.path}/{file.relative_to(folder).as_posix()}"
        elif isinstance(route, Route) and "GET" in (route.methods or ()) and "{" not in route.path:
            yield prefix + route.path


async def pages_served(app: FastAPI, http: httpx.AsyncClient) -> dict[str, httpx.Response]:
    """Every HTML page and stylesheet ``app`` serves, by path."""
    answers = {path: await http.get(path) for path in get_paths(app.routes)}
    return {p: a for p, a in answers.items() if a.headers.get("content-type", "").startswith(("text/html", "text/css"))}


@pytest.mark.anyio
async def test_no_page_the_service_serves_names_another_host(client, committed_app):
    served = await pages_served(committed_app, client)
    assert {
        "/",
        "/docs",
        "/redoc",
        "/docs/oauth2-redirect",
        "/static/index.html",
        "/docs-assets/swagger-ui.css",
    } <= set(served)
    for path, answer in served.items():
        assert answer.status_code == 200, path
        assert hosts_named(answer.text, answer.headers["content-type"]) <= {"test"}, path


@pytest.mark.anyio
async def test_the_same_check_flags_fastapis_stock_docs_pages():
    stock = FastAPI()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stock), base_url="http://test") as http:
        served = await pages_served(stock, http)
    assert set(served) == {"/docs", "/redoc", "/docs/oauth2-redirect"}
    assert "cdn.jsdelivr.net" in hosts_named(served["/docs"].text, "text/html")
    assert "cdn.jsdelivr.net" in hosts_named(served["/redoc"].text, "text/html")
    assert (
        hosts_named('<link rel="icon" href="data:image/svg+xml,<svg xmlns=\'http://www.w3.org/2000/svg\'/>">', "")
        == set()
    )
    assert hosts_named("a { background: url(//fonts.example.org/x.woff) }", "text/css") == {"fonts.example.org"}


@pytest.mark.anyio
async def test_the_docs_and_their_files_need_the_api_key_when_one_is_set(tmp_path):
    app = create_app(Settings(models_dir=tmp_path, api_key=KEY))
    paths = ["/docs", "/redoc", app.swagger_ui_oauth2_redirect_url, "/openapi.json"]
    paths += [f"{docs.ASSETS_URL}/{name}" for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        for path in paths:
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers={"Authorization": f"Bearer {KEY}"})).status_code == 200, path


@pytest.mark.anyio
async def test_redoc_is_served_without_the_redocly_logo_address(client):
    packaged = (docs.ASSETS_DIR / "redoc.standalone.js").read_bytes()
    assert packaged.count(docs.REDOCLY_LOGO) == 1  # the one address ReDoc's bundle loads from outside
    served = await client.get(f"{docs.ASSETS_URL}/redoc.standalone.js")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/javascript")
    assert served.content == packaged.replace(docs.REDOCLY_LOGO, docs.EMPTY_IMAGE)
    assert b"cdn.redoc.ly" not in served.content


# --- in Chromium --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn process serving the committed models; yields its base URL."""
    log = (tmp_path_factory.mktemp("docs") / "uvicorn.log").open("w")
    process, base, _ = local_server.start("app.main:app", log=log)
    try:
        yield base
    finally:
        local_server.stop(process)
        log.close()


@pytest.fixture(scope="module")
def offline_browser(server: str) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    """A Chromium context that blocks every request to another host than the server's, and what went wrong:
    requests blocked, requests failed, console errors and uncaught exceptions of its pages."""
    if not CHROMIUM.exists():
        missing(f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")
    own = urlsplit(server).netloc
    trouble: dict[str, list[str]] = {"blocked": [], "failed": [], "console": []}

    def only_own_host(route: Any) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != own:
            trouble["blocked"].append(route.request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", only_own_host)
        context.on("requestfailed", lambda r: trouble["failed"].append(f"{r.url} {r.failure}"))
        context.on("console", lambda m: trouble["console"].append(m.text) if m.type == "error" else None)
        context.on("weberror", lambda e: trouble["console"].append(str(e.error)))
        try:
            yield context, trouble
        finally:
            context.close()
            chromium.close()


def shown(operation: Any) -> dict:
    """The answer Swagger UI shows under an operation after "Execute": its status must be 200; its JSON body."""
    status = operation.locator(".live-responses-table .response .response-col_status")
    status.wait_for()
    assert status.inner_text().strip() == "200"
    return json.loads(operation.locator(".live-responses-table .response .highlight-code pre").first.inner_text())


@pytest.mark.slow
def test_swagger_ui_renders_and_tries_classify_offline(server, offline_browser, tmp_path):
    context, trouble = offline_browser
    page = context.new_page()
    page.goto(f"{server}/docs")
    for name in OPERATIONS:
        page.locator(f"#operations-inference-{name}_{name}_post").wait_for()
    operation = page.locator("#operations-inference-classify_classify_post")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()

    # multipart/form-data, the body's first form: one PNG in the "file" part
    operation.locator("input[type=file]").set_input_files(str(SEVEN))
    with page.expect_response(lambda r: urlsplit(r.url).path == "/classify") as answered:
        operation.locator("button.execute").click()
    answer = answered.value
    assert answer.status == 200 and answer.request.headers["content-type"].startswith("multipart/form-data")
    assert shown(operation)["predictions"][0]["label"] == 7

    # the .npy body: the request body's type switched to application/x-npy, the file sent as it is
    operation.locator("select.content-type").first.select_option("application/x-npy")
    operation.locator("input[type=file]").set_input_files(str(DIGITS))
    with page.expect_response(lambda r: urlsplit(r.url).path == "/classify") as answered:
        operation.locator("button.execute").click()
    answer = answered.value
    assert answer.status == 200 and answer.request.headers["content-type"] == "application/x-npy"
    assert answer.request.post_data_buffer == DIGITS.read_bytes()
    assert len(shown(operation)["predictions"]) == 3
    page.close()
    assert trouble == {"blocked": [], "failed": [], "console": []}


@pytest.mark.slow
def test_redoc_renders_every_operation_offline(server, offline_browser):
    context, trouble = offline_browser
    page = context.new_page()
    page.goto(f"{server}/redoc")
    for name in OPERATIONS:
        page.locator(f"[data-section-id='operation/{name}_{name}_post']").wait_for()
    assert page.locator("h2", has_text="Images to classes").count() == 1
    page.wait_for_load_state("networkidle")
    page.close()
    assert trouble == {"blocked": [], "failed": [], "console": []}
