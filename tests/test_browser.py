"""The web page at ``/`` in a real browser: Debian's Chromium, driven by Playwright, against a real uvicorn server.

Chromium comes from the system (``apt-get install chromium``), never from ``playwright install``. Without it
(or without the playwright package) the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from scripts import local_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SEVEN = ROOT / "examples" / "seven.png"
SCREENSHOTS = ROOT / "build" / "screenshots"
TIMEOUT_MS = 60_000


def missing(message: str) -> None:
    """A missing browser fails under CI, where it must be installed, and skips elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI=true: install it, e.g. apt-get install -y chromium)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn process serving the committed models; yields its base URL."""
    log = (tmp_path_factory.mktemp("browser") / "uvicorn.log").open("w")
    process, base, _ = local_server.start("app.main:app", log=log)
    try:
        yield base
    finally:
        local_server.stop(process)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright."""
    if not CHROMIUM.exists():
        missing(f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, base: str, width: int = 1280, height: int = 900, **options: Any) -> tuple[Any, list[str]]:
    """The page, loaded and its model list filled in; also the list that collects its JavaScript errors."""
    page = browser.new_page(viewport={"width": width, "height": height}, **options)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None)
    page.goto(f"{base}/")
    page.wait_for_selector("body[data-ready='true']")
    return page, errors


def canvas_ink(page: Any, selector: str) -> float:
    """Mean brightness (0..255) of a canvas: 0 when nothing is drawn on it."""
    return page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] * d[i + 3] / 255;
                  return s / (d.length / 4); }""",
    )


def canvas_png(page: Any, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL()")


def wait_done(page: Any, name: str) -> None:
    """Wait until the page reports every endpoint answered for the input ``name``, none failing."""
    page.wait_for_function(
        "name => document.getElementById('status').textContent.startsWith(name + ': done in')", arg=name
    )
    visible_errors = page.locator(".error:not([hidden])").all_inner_texts()
    assert visible_errors == [], visible_errors


def results(page: Any) -> dict[str, Any]:
    """What the page shows, read from the DOM."""
    return {
        "class": page.inner_text("#classify-result"),
        "bars": page.locator("#probabilities li").all_inner_texts(),
        "top": page.locator("#probabilities li.top .name").all_inner_texts(),
        "reconstruct": page.inner_text("#reconstruct-result"),
        "cluster": page.inner_text("#cluster-result"),
        "encode": page.inner_text("#encode-result"),
        "reconstruction": canvas_png(page, "#reconstruction"),
    }


def test_draw_choose_file_and_denoise(server: str, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    defaults = httpx.get(f"{server}/models", timeout=30).json()["defaults"]["mnist"]
    page, errors = open_page(browser, server)
    for endpoint, name in defaults.items():
        assert page.input_value(f"#model-{endpoint}") == name, endpoint

    # a "1": one vertical stroke with the mouse (pointer events) on the drawing pad
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] * 0.5
    page.mouse.move(x, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(x + 4, box["y"] + box["height"] * 0.85, steps=25)
    page.mouse.up()
    wait_done(page, "drawing.png")
    drawn = results(page)
    assert drawn["class"].startswith("1 ("), drawn["class"]
    assert drawn["top"] == ["1"] and len(drawn["bars"]) == 10
    assert re.search(r"error \(MSE\) 0\.\d{4}, (in|out of) distribution", drawn["reconstruct"]), drawn["reconstruct"]
    assert re.fullmatch(r"Cluster \d+, mostly “\d” in training", drawn["cluster"]), drawn["cluster"]
    assert f"{defaults['encode']} v1: " in drawn["encode"]
    for canvas in ("#reconstruction", "#input28", "#code"):
        assert canvas_ink(page, canvas) > 5, canvas

    # a real digit photo through the file input: the page shows what the API answers for that file
    page.set_input_files("#file", str(SEVEN))
    wait_done(page, "seven.png")
    chosen = results(page)
    assert chosen["class"].startswith("7 ("), chosen["class"]
    assert chosen["top"] == ["7"]
    assert chosen["reconstruction"] != drawn["reconstruction"]
    assert canvas_ink(page, "#reconstruction") > 5
    files = {"file": ("seven.png", SEVEN.read_bytes(), "image/png")}
    cluster = httpx.post(f"{server}/cluster", files=files, timeout=30).json()["assignments"][0]
    assert chosen["cluster"] == f"Cluster {cluster['cluster']}, mostly “{cluster['label_hint']}” in training"
    reconstructed = httpx.post(f"{server}/reconstruct", files=files, timeout=30).json()
    assert f"error (MSE) {reconstructed['errors'][0]:.4f}" in chosen["reconstruct"]

    # the noise slider, by keyboard: noise is added client-side and the noisy image goes to /denoise as JSON
    assert page.get_attribute("#denoised", "data-noise-std") == "0.00"
    before = {c: canvas_png(page, c) for c in ("#noisy", "#denoised")}
    sent: list[str] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("content-type", "")) if r.url.split("?")[0].endswith("/denoise") else None,
    )
    page.focus("#noise")
    for _ in range(12):
        page.keyboard.press("ArrowRight")
    page.wait_for_selector("#denoised[data-noise-std='0.60']")
    assert page.inner_text("#noise-value") == "0.60"
    assert "noise std 0.60" in page.inner_text("#denoise-result")
    assert sent and all(kind == "application/json" for kind in sent), sent
    for canvas, png in before.items():
        assert canvas_png(page, canvas) != png, f"{canvas} did not change with the noise"
    assert canvas_ink(page, "#denoised") > 5

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOTS / "page.png")
    with capsys.disabled():
        print(f"\nscreenshot: {shot}\nscreenshot: {SCREENSHOTS / 'page.png'}")
    assert shot.stat().st_size > 10_000
    assert errors == []
    page.close()


def touch_stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """One finger stroke through ``points`` (page coordinates), as raw touch events."""
    cdp = page.context.new_cdp_session(page)
    for i, (x, y) in enumerate(points):
        kind = "touchStart" if i == 0 else "touchMove"
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_touch_fashion_errors_and_phone_width(server: str, browser: Any, tmp_path: Path) -> None:
    page, errors = open_page(browser, server, width=375, height=800, has_touch=True, is_mobile=True)
    # every control is labelled, and the page fits a phone's width without scrolling sideways
    unlabelled = page.eval_on_selector_all(
        "input, select, button",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !e.textContent.trim()).map(e => e.id)",
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    # a finger stroke on the pad (a "1") is drawn and sent as well
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] / 2
    touch_stroke(page, [(x, box["y"] + box["height"] * (0.15 + 0.05 * i)) for i in range(15)])
    wait_done(page, "drawing.png")
    assert page.inner_text("#classify-result").startswith("1 (")
    assert canvas_ink(page, "#pad") < 250  # ink on the white pad

    # fashion-mnist: the selects list only its models, the bars its class names; panels without one say so
    page.select_option("#dataset", "fashion-mnist")
    wait_done(page, "drawing.png")
    options = page.eval_on_selector_all("#model-reconstruct option", "os => os.map(o => o.value)")
    assert options and all(name.startswith("fashion-mnist-") for name in options)
    assert page.is_disabled("#model-denoise")
    names = page.locator("#probabilities li .name").all_inner_texts()
    assert names[:2] == ["T-shirt/top", "Trouser"] and names[-1] == "Ankle boot"

    # a file that is not an image: the service's JSON error is shown in the page
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"this is text, not a PNG")
    page.set_input_files("#file", str(bogus))
    page.wait_for_selector("#classify-error:not([hidden])")
    assert "not an image of the accepted formats" in page.inner_text("#classify-error")
    assert "no model serves /denoise for fashion-mnist" in page.inner_text("#denoise-result").lower()
    assert page.inner_text("#classify-result") == ""  # nothing stale beside the error
    assert page.locator("#probabilities li").count() == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "page-phone-error.png"), full_page=True)
    assert [e for e in errors if "400" not in e] == []
    page.close()


def test_a_dropped_product_photo_is_classified_by_the_fashion_models_rule(
    server: str, browser: Any, data_dir: Path
) -> None:
    from scripts.upload_accuracy import on_white_page
    from training.datasets import load_dataset

    test = load_dataset("fashion-mnist", data_dir, allow_download=False).test
    boot = int(np.flatnonzero(test.labels == 9)[0])  # an ankle boot, dark on a white page, off-centre, JPEG
    photo = on_white_page(test.images[boot], seed=boot)
    api = httpx.post(f"{server}/classify?dataset=fashion-mnist", files={"file": ("boot.jpg", photo)}, timeout=30)
    assert api.json()["predictions"][0]["class_name"] == "Ankle boot"

    page, errors = open_page(browser, server)
    page.select_option("#dataset", "fashion-mnist")
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], "ankle-boot.jpg", { type: "image/jpeg" }));
                    return transfer; }""",
        base64.b64encode(photo).decode(),
    )
    page.dispatch_event("#input-panel", "drop", {"dataTransfer": transfer})
    wait_done(page, "ankle-boot.jpg")
    assert page.inner_text("#classify-result").startswith("Ankle boot ("), page.inner_text("#classify-result")
    # the 28x28 input shown is the product pipeline's (no Fashion-MNIST model denoises: an MNIST one shows it)
    product = f"{server}/denoise?dataset=mnist&noise_std=0&preprocess=product"
    shown = httpx.post(product, files={"file": ("boot.jpg", photo)}, timeout=30)
    assert canvas_ink(page, "#input28") == pytest.approx(np.mean(shown.json()["noisy"]) * 255, abs=1)
    assert errors == []
    page.close()
