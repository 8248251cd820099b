"""Regenerate README's request/response examples from a real running service.

Starts ``uvicorn app.main:app`` on a free loopback port, writes the sample inputs under
``examples/`` (digits drawn here, not taken from the datasets), runs every example, and
rewrites the README between ``<!-- api-examples:start -->`` and ``<!-- api-examples:end -->``.
Run it with ``make examples``.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import local_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
START, END = "<!-- api-examples:start -->", "<!-- api-examples:end -->"


def draw_digit(digit: int, seed: int) -> Image.Image:
    """A digit drawn in dark ink on light, slightly noisy paper (300x200), like a phone photo."""
    image = Image.new("L", (300, 200), 225)
    draw = ImageDraw.Draw(image)
    if digit == 0:
        draw.ellipse((105, 30, 195, 170), outline=25, width=14)
    elif digit == 1:
        draw.line([(150, 35), (150, 165)], fill=25, width=14)
    else:
        draw.line([(105, 45), (195, 45), (135, 165)], fill=25, width=14, joint="curve")
    noisy = np.asarray(image, np.float64) + np.random.default_rng(seed).normal(0, 12, (200, 300))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_inputs() -> None:
    """examples/seven.png, examples/zero.png, examples/digits.npy (uint8 3x28x28), examples/digit.json, and the
    same digits as a TF Serving request (examples/tfserving.json) and an Open Inference Protocol one (v2.json)."""
    from app.imaging import mnist_style

    EXAMPLES.mkdir(exist_ok=True)
    drawn = {d: draw_digit(d, seed=d) for d in (0, 1, 7)}
    drawn[7].save(EXAMPLES / "seven.png")
    drawn[0].save(EXAMPLES / "zero.png")
    batch = np.stack([mnist_style(np.asarray(drawn[d], np.float32) / 255) for d in (0, 1, 7)])
    np.save(EXAMPLES / "digits.npy", (batch * 255).round().astype(np.uint8))
    flat = (batch[2] * 255).round().astype(int).reshape(-1).tolist()
    (EXAMPLES / "digit.json").write_text(json.dumps({"images": [flat], "pixel_scale": 255}) + "\n")
    pixels = batch.astype(np.float64).round(4)
    tfserving = {"signature_name": "serving_default", "instances": pixels[1:].tolist()}
    (EXAMPLES / "tfserving.json").write_text(json.dumps(tfserving) + "\n")
    tensor = {"name": "images", "shape": [3, 784], "datatype": "FP32", "data": pixels.reshape(-1).tolist()}
    v2 = {"id": "42", "inputs": [tensor], "outputs": [{"name": "codes"}]}
    (EXAMPLES / "v2.json").write_text(json.dumps(v2) + "\n")


def shorten(value, width: int = 4):
    """Long lists become their first items and a count, images a placeholder, so a response fits on a screen."""
    if isinstance(value, list) and len(value) == 28 and all(isinstance(r, list) and len(r) == 28 for r in value):
        return "<28x28 floats>"
    if isinstance(value, list):
        if len(value) > width:
            return [shorten(v, width) for v in value[:width]] + [f"... {len(value) - width} more"]
        return [shorten(v, width) for v in value]
    if isinstance(value, dict):
        return {k: shorten(v, width) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


def uploads(*names: str, accept: str | None = None):
    """httpx arguments for a multipart request of example files (read when the example runs)."""
    return lambda: {
        "files": [("file", (name, (EXAMPLES / name).read_bytes(), "image/png")) for name in names],
        **({"headers": {"accept": accept}} if accept else {}),
    }


def body(name: str, content_type: str, accept: str | None = None):
    """httpx arguments for a request whose body is one example file."""
    headers = {"content-type": content_type} | ({"accept": accept} if accept else {})
    return lambda: {"content": (EXAMPLES / name).read_bytes(), "headers": headers}


JSON, NPY = "application/json", "application/x-npy"


EXAMPLE_RUNS = [
    # (title, curl arguments before the URL, endpoint + query, httpx arguments builder)
    (
        "Classify a photo of a drawn digit (multipart)",
        "-F file=@examples/seven.png",
        "/classify",
        uploads("seven.png"),
    ),
    (
        "Classify two files at once, the model named (multipart)",
        "-F file=@examples/seven.png -F file=@examples/zero.png",
        "/classify?model=mnist-pretrained-classifier",
        uploads("seven.png", "zero.png"),
    ),
    (
        "Encode a JSON image (flat 784 values, 0..255)",
        "-H 'Content-Type: application/json' -d @examples/digit.json",
        "/encode",
        body("digit.json", JSON),
    ),
    (
        "Encode an npy batch (uint8, 3x28x28) with a named model",
        "-H 'Content-Type: application/x-npy' --data-binary @examples/digits.npy",
        "/encode?model=mnist-kmeans",
        body("digits.npy", NPY),
    ),
    (
        "Reconstruct, with per-image error and the in-distribution flag (npy in)",
        "-H 'Content-Type: application/x-npy' --data-binary @examples/digits.npy",
        "/reconstruct",
        body("digits.npy", NPY),
    ),
    (
        "Reconstruct as .npy (Accept)",
        "-H 'Content-Type: application/x-npy' -H 'Accept: application/x-npy' --data-binary @examples/digits.npy "
        "-o reconstruction.npy",
        "/reconstruct",
        body("digits.npy", NPY, accept=NPY),
    ),
    (
        "Denoise with server-side noise (std 0.6, seed 1), JSON in",
        "-H 'Content-Type: application/json' -d @examples/digit.json",
        "/denoise?noise_std=0.6&seed=1",
        body("digit.json", JSON),
    ),
    (
        "Denoise to a PNG grid (Accept: image/png)",
        "-F file=@examples/seven.png -F file=@examples/zero.png -H 'Accept: image/png' -o denoised.png",
        "/denoise?noise_std=0.5&seed=2",
        uploads("seven.png", "zero.png", accept="image/png"),
    ),
    (
        "Cluster (multipart)",
        "-F file=@examples/zero.png",
        "/cluster",
        uploads("zero.png"),
    ),
    (
        "Classify with the Fashion-MNIST default model (npy in; digits are not clothes, this shows the class names)",
        "-H 'Content-Type: application/x-npy' --data-binary @examples/digits.npy",
        "/classify?dataset=fashion-mnist",
        body("digits.npy", NPY),
    ),
    (
        "TensorFlow Serving's REST API: predict, row format (every output of the signature, per instance)",
        "-d @examples/tfserving.json",
        "/v1/models/mnist-stacked:predict",
        body("tfserving.json", JSON),
    ),
    (
        "Open Inference Protocol (KServe V2): infer, only the codes",
        "-H 'Content-Type: application/json' -d @examples/v2.json",
        "/v2/models/mnist-conv/infer",
        body("v2.json", JSON),
    ),
    (
        "An error: an image of the wrong shape",
        "-H 'Content-Type: application/json' -d '{\"images\": [[2.0]]}'",
        "/encode",
        lambda: {"json": {"images": [[2.0]]}},
    ),
    (
        "An error: an unknown model",
        "-F file=@examples/seven.png",
        "/classify?model=mnist-unknown",
        uploads("seven.png"),
    ),
]


# The same requests through the Python client, by title: the call, and what of its result to show.
PYTHON = {
    "Classify a photo of a drawn digit (multipart)": (
        'client.classify("examples/seven.png")',
        "result.labels, result.class_names, result.confidences",
    ),
    "Classify two files at once, the model named (multipart)": (
        'client.classify(["examples/seven.png", "examples/zero.png"], model="mnist-pretrained-classifier")',
        "result.labels, result.model, result.version",
    ),
    "Encode a JSON image (flat 784 values, 0..255)": (
        'client.encode(np.load("examples/digits.npy")[2])  # the same image, uint8 [28,28]',
        "result.codes.shape, result.codes[0, :4]",
    ),
    "Encode an npy batch (uint8, 3x28x28) with a named model": (
        'client.encode(np.load("examples/digits.npy"), model="mnist-kmeans")',
        "result.codes.shape, result.codes.dtype",
    ),
    "Reconstruct, with per-image error and the in-distribution flag (npy in)": (
        'client.reconstruct(np.load("examples/digits.npy"))',
        "result.errors, result.in_distribution",
    ),
    "Reconstruct as .npy (Accept)": (
        'client.reconstruct(np.load("examples/digits.npy"))',
        "result.images.shape, result.images.dtype",
    ),
    "Denoise with server-side noise (std 0.6, seed 1), JSON in": (
        'client.denoise(np.load("examples/digits.npy")[2], noise_std=0.6, seed=1)',
        "result.images.shape, result.noisy.shape",
    ),
    "Denoise to a PNG grid (Accept: image/png)": (
        'client.denoise(["examples/seven.png", "examples/zero.png"], noise_std=0.5, seed=2)',
        "result.images.shape, result.model",
    ),
    "Cluster (multipart)": (
        'client.cluster("examples/zero.png")',
        "result.clusters, result.label_hints, result.score_kind",
    ),
    "Classify with the Fashion-MNIST default model (npy in; digits are not clothes, this shows the class names)": (
        'client.classify(np.load("examples/digits.npy"), dataset="fashion-mnist")',
        "result.class_names",
    ),
    "An error: an image of the wrong shape": ("client.encode(np.array([[2.0]]))", None),
    "An error: an unknown model": ('client.classify("examples/seven.png", model="mnist-unknown")', None),
}


def python_example(client, call: str, show: str | None) -> str:
    """The client's call as Python and what it gave, run against the same service."""
    import aeserve

    try:
        result = eval(call, {"client": client, "np": np})
    except aeserve.ApiError as exc:
        return f"```python\n{call}\n# raises aeserve.ApiError: {exc}\n```\n"
    shown = repr(eval(show, {"result": result, "np": np}))
    return f"```python\nresult = {call}\n{show}\n# {shown}\n```\n"


def describe(response: httpx.Response) -> str:
    kind = response.headers["content-type"]
    head = f"HTTP {response.status_code} {response.reason_phrase}; Content-Type: {kind}"
    if "x-model" in response.headers:
        head += f"; X-Model: {response.headers['x-model']}; X-Model-Version: {response.headers['x-model-version']}"
    if kind == "application/json":
        body = shorten(response.json())
        return head + "\n{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()) + "\n}"
    if kind == "application/x-npy":
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
        return head + f"\n(.npy: {array.dtype} array of shape {array.shape})"
    image = Image.open(io.BytesIO(response.content))
    return head + f"\n(PNG: {image.size[0]}x{image.size[1]} {image.mode})"


def main() -> None:
    import aeserve

    os.chdir(ROOT)  # the Python examples name the example files relative to the checkout
    write_inputs()
    process, base, _ = local_server.start()
    sections = []
    try:
        with httpx.Client(base_url=base, timeout=30) as http, aeserve.Client(base) as client:
            for title, curl, path, kwargs in EXAMPLE_RUNS:
                response = http.post(path, **kwargs())
                python = python_example(client, *PYTHON[title]) if title in PYTHON else ""
                sections.append(
                    f"**{title}**\n\n```sh\ncurl -s {curl} 'localhost:8000{path}'\n```\n```\n"
                    f"{describe(response)}\n```\n{python}"
                )
            listing = http.get("/models").json()
    finally:
        local_server.stop(process)
    defaults = "\n".join(
        f"| {d} | "
        + " | ".join(
            listing["defaults"][d].get(e, "none") for e in ("encode", "reconstruct", "denoise", "classify", "cluster")
        )
        + " |"
        for d in listing["defaults"]
    )
    text = (
        "Generated by `make examples` (scripts/api_examples.py) against a running service; long lists are cut "
        "to their first items. Each request is shown with curl and, where the Python client covers it, as a call of "
        '`client = aeserve.Client("http://localhost:8000")` (see [Python client and command line]'
        "(#python-client-and-command-line)).\n\nDefault model per endpoint (the best test metric per dataset, from the "
        "manifests):\n\n| dataset | /encode | /reconstruct | /denoise | /classify | /cluster |\n"
        "|---|---|---|---|---|---|\n" + defaults + "\n\n" + "\n".join(sections)
    )
    readme = (ROOT / "README.md").read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    (ROOT / "README.md").write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", readme))
    print(f"README.md: {len(EXAMPLE_RUNS)} examples")


if __name__ == "__main__":
    main()
