"""Every setting of the service, read from ``AESERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Relative: ./models in the working directory (the checkout's committed models under `make serve`), never
# inside the installed package.
DEFAULT_MODELS_DIR = Path("models")
# AESERVE_ACCESS_LOG's earlier boolean values and what they mean now.
EARLIER_ACCESS_LOG = {"true": "all", "1": "all", "yes": "all", "false": "off", "0": "off", "no": "off"}


class Settings(BaseSettings):
    """Service settings; ``AESERVE_MAX_BATCH=64`` sets ``max_batch``, and so on."""

    model_config = SettingsConfigDict(env_prefix="AESERVE_", extra="ignore")

    models_dir: Path = Field(
        DEFAULT_MODELS_DIR, description="folder of <name>/<version>/ models (default: ./models in the working dir)"
    )
    runtime: Literal["litert", "tensorflow"] = Field(
        "litert",
        description="litert: run each model's model.tflite (no TensorFlow needed); "
        "tensorflow: run the SavedModel (needs pip install 'aeserve[train]')",
    )
    model_threads: int = Field(
        2,
        gt=0,
        description="threads one LiteRT call of 32 images or more may use (XNNPACK); smaller calls use one",
    )
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="largest request body accepted (413 above)")
    max_batch: int = Field(1024, gt=0, description="most images in one request (413 above)")
    max_image_pixels: int = Field(16_000_000, gt=0, description="most pixels of one uploaded image (413 above)")
    batching: bool = Field(True, description="answer requests that arrive together with one model call")
    batch_max_size: int = Field(256, gt=0, description="most images in one batch (LiteRT runs it in calls of 64)")
    batch_max_delay_us: int = Field(
        500,
        ge=0,
        description="longest wait of a batch's first request for others (like TF Serving's batch_timeout_micros)",
    )
    batch_max_queue_images: int = Field(16384, gt=0, description="most images queued per model; 503 beyond")
    batch_inline_max_us: int = Field(
        100,
        ge=0,
        description="model calls measured to cost at most this many µs run on the event loop, where they cost "
        "less than the hand-off to the model thread; 0: every call on the model thread",
    )
    warmup: bool = Field(True, description="run each model once on a dummy batch before reporting ready")
    require_models: bool = Field(
        False, description="refuse to start when models_dir is missing or empty (else /readyz reports it)"
    )
    api_key: SecretStr | None = Field(
        None, description="when set, every route but the health checks needs Authorization: Bearer <key>"
    )
    cors_origins: list[str] = Field(
        [], description='origins allowed to call from a browser, as JSON (["https://a.example"]); none by default'
    )
    log_level: str = Field("info", description="Python log level of the service's own logger")
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line; text: plain")
    access_log: Literal["all", "errors", "off"] = Field(
        "errors",
        description="a log line per request (request id, route, status, model, latency): for every request (all), "
        "for 4xx and 5xx answers only (errors: a line costs a fast request much of its time), or none",
    )

    # Work a request may cost the worker: image decoding off the event loop, under a budget, and a
    # deadline on waiting for the model.
    decode_pool: Literal["thread", "process"] = Field(
        "thread",
        description="where uploaded image files (multipart, TF Serving b64) are decoded, off the event loop: "
        "thread (Pillow releases the GIL while it decodes) or process (see benchmarks/decode_pool.py)",
    )
    decode_workers: int = Field(2, gt=0, description="requests whose image files are decoded at once")
    max_request_pixels: int = Field(
        64_000_000, gt=0, description="most pixels of all the image files of one request, from their headers (413)"
    )
    max_image_scans: int = Field(
        64, gt=0, description="most scans of one progressive JPEG, counted before decoding (422 above)"
    )
    decode_cpu_ms: int = Field(
        2000,
        gt=0,
        description="CPU time the decoding of one request's image files may take, checked after each file (413)",
    )
    queue_deadline_ms: int = Field(
        2000,
        gt=0,
        description="longest wait of a request for its model call, or for an image decoder; 503 with "
        "Retry-After when it cannot start within it (refused at once when the queue's measured cost says so)",
    )

    # The edge: what one connection, and all of them together, may hold (app/edge.py; app/serve.py gives
    # uvicorn its part).
    max_head_bytes: int = Field(
        64 * 2**10, gt=0, description="largest request head (request line and headers); 431 and the connection closed"
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="seconds a request head may take to arrive, from the connection's opening or the previous "
        "request's end; then the connection is closed (408 when part of a head came)",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="seconds a request body may stall (no byte arriving); then 408 and the connection closed",
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="seconds an answer may wait for a client that stopped reading it; then the connection is dropped",
    )
    max_connections: int = Field(
        512,
        gt=0,
        description="open connections (and requests in progress) beyond which a request gets 503 with Retry-After "
        "(uvicorn's limit_concurrency; the health checks are still answered)",
    )
    max_body_bytes_in_flight: int = Field(
        256 * 2**20,
        gt=0,
        description="request body bytes held by all requests in progress together; 503 with Retry-After beyond",
    )

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log_switch(cls, value: object) -> object:
        """``true``/``false`` (the setting's earlier form) mean ``all``/``off``."""
        if isinstance(value, bool):
            return "all" if value else "off"
        if isinstance(value, str):
            return EARLIER_ACCESS_LOG.get(value.strip().lower(), value)
        return value

    # The Open Inference Protocol over gRPC (app/protocols/grpc_v2.py), beside the HTTP server in the same process.
    grpc_port: int = Field(
        8081, ge=0, le=65535, description="port of the Open Inference Protocol's gRPC service (KServe's); 0: none"
    )
    grpc_host: str = Field(
        "127.0.0.1", description="address the gRPC service listens on (the image sets 0.0.0.0, as uvicorn's --host)"
    )
    grpc_shutdown_grace_s: float = Field(
        10.0, ge=0, description="after SIGTERM, once HTTP has drained, how long gRPC calls in flight may still finish"
    )
