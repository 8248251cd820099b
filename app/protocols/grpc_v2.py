"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port.

The six RPCs of the protocol (``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``,
``ModelMetadata``, ``ModelInfer``; stubs in :mod:`app.protocols.oip`) answer from the same registry,
batchers, limits and checks as the REST form (:mod:`app.protocols.v2`), so an answer is the REST
answer's numbers to the bit. The server runs on uvicorn's event loop, started and stopped by the
app's lifespan (:func:`start`), on ``AESERVE_GRPC_PORT``.

- Input: the one tensor as ``raw_input_contents`` (what tritonclient and KServe's client send) or in
  the contents field of its datatype (``fp32_contents``, ``fp64_contents``, ``uint_contents`` for UINT8;
  FP16 only raw). Output: every requested tensor (all by default) in ``raw_output_contents``.
- Errors: the REST error's message, with the status code of its HTTP status (:data:`CODES`); a message
  larger than ``AESERVE_MAX_BODY_BYTES`` is refused by gRPC itself with ``RESOURCE_EXHAUSTED``.
- ``AESERVE_API_KEY``: every RPC but ``ServerLive`` and ``ServerReady`` needs the metadata
  ``authorization: Bearer <key>``, as REST needs the header.
- Metrics and access log lines as for HTTP requests, with method ``GRPC``, the RPC's full name as the
  route and the HTTP status of the same answer over REST (200 for OK).
"""

from __future__ import annotations

import hmac
import logging
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import FastAPI

from app import __version__
from app.errors import ApiError
from app.inputs import Limits
from app.metrics import Metrics
from app.observability import REQUEST_ID, SANE_ID
from app.protocols.common import find_model
from app.protocols.oip import grpc_predict_v2_pb2 as pb
from app.protocols.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from app.protocols.v2 import (
    EXTENSIONS,
    SCALES,
    datatype_of,
    describe,
    images_from_bytes,
    images_from_values,
    output_names,
    raw_bytes,
)
from app.registry import Registry

log = logging.getLogger("aeserve")
access = logging.getLogger("aeserve.access")

SERVICE = "inference.GRPCInferenceService"
# Probes carry no credentials (REST's /v2/health/live and /v2/health/ready).
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The contents field that carries each accepted datatype's values (FP16 has none: raw only).
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "UINT8": "uint_contents"}

Answer = tuple[Any, str]  # the response message and the model that answered ("" for none)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over one app's registry, limits, metrics and API key."""

    def __init__(self, registry: Registry, limits: Limits, metrics: Metrics, api_key: str | None, access_log: str):
        self.registry = registry
        self.limits = limits
        self.metrics = metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.access_log = access_log

    async def _serve(self, method: str, context: grpc.aio.ServicerContext, answer: Callable[[], Awaitable[Answer]]):
        start = time.perf_counter()
        metadata_in = dict(context.invocation_metadata() or ())
        given_id = str(metadata_in.get("x-request-id", "")).encode()
        request_id = given_id.decode() if SANE_ID.fullmatch(given_id) else os.urandom(16).hex()
        token = REQUEST_ID.set(request_id)
        context.set_trailing_metadata((("x-request-id", request_id),))
        status, model = 499, ""  # 499: the client left before an answer
        try:
            if self.expected is not None and method not in OPEN_METHODS:
                self._authorize(str(metadata_in.get("authorization", "")))
            response, model = await answer()
            status = 200
            return response
        except ApiError as exc:
            status = exc.status
            await context.abort(CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)
        except Exception:
            status = 500
            log.exception("unhandled error on gRPC %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; the request was logged")
        finally:
            seconds = time.perf_counter() - start
            route = f"/{SERVICE}/{method}"
            self.metrics.observe_request("GRPC", route, model, status, seconds)
            if self.access_log == "all" or (self.access_log == "errors" and status >= 400):
                fields = {
                    "request_id": request_id,
                    "method": "GRPC",
                    "path": route,
                    "route": route,
                    "status": status,
                    "model": model or None,
                    "duration_ms": round(seconds * 1000, 3),
                }
                access.info("GRPC %s %d", route, status, extra={"fields": fields})
            REQUEST_ID.reset(token)

    def _authorize(self, given: str) -> None:
        if not hmac.compare_digest(given.encode(), self.expected):
            if given:
                raise ApiError(401, "the API key is wrong (metadata authorization: Bearer <key>)")
            raise ApiError(401, "this service needs an API key: send the metadata authorization: Bearer <key>")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            return pb.ServerLiveResponse(live=True), ""

        return await self._serve("ServerLive", context, answer)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            return pb.ServerReadyResponse(ready=self.registry.ready), ""

        return await self._serve("ServerReady", context, answer)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            try:
                find_model(self.registry, request.name, request.version or None)
            except ApiError as exc:
                if exc.status != 503:  # unknown model or version: NOT_FOUND, as REST's 404
                    raise
                return pb.ModelReadyResponse(ready=False), ""
            return pb.ModelReadyResponse(ready=True), ""

        return await self._serve("ModelReady", context, answer)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            return pb.ServerMetadataResponse(name="aeserve", version=__version__, extensions=EXTENSIONS), ""

        return await self._serve("ServerMetadata", context, answer)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            model = find_model(self.registry, request.name, request.version or None)
            described = describe(self.registry, model)
            tensors = {
                key: [pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in described[key]]
                for key in ("inputs", "outputs")
            }
            fields = {key: described[key] for key in ("name", "versions", "platform")}
            return pb.ModelMetadataResponse(**fields, **tensors), model.name

        return await self._serve("ModelMetadata", context, answer)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async def answer() -> Answer:
            return await self._infer(request)

        return await self._serve("ModelInfer", context, answer)

    async def _infer(self, request: pb.ModelInferRequest) -> Answer:
        model = find_model(self.registry, request.model_name, request.model_version or None)
        if len(request.inputs) != 1:
            count = len(request.inputs)
            raise ApiError(400, f'a request has one input tensor, the "images" input; this one has {count}')
        tensor = request.inputs[0]
        shape = list(tensor.shape)
        raw = request.raw_input_contents
        if raw:
            if len(raw) != 1:
                raise ApiError(400, f"raw_input_contents has {len(raw)} entries for the one input")
            if tensor.HasField("contents"):
                raise ApiError(400, "the input tensor has both contents and raw_input_contents; send one")
            images = images_from_bytes(tensor.datatype, shape, raw[0], self.limits, "raw_input_contents[0]")
        else:
            field = CONTENTS.get(tensor.datatype)
            if field is None and tensor.datatype in SCALES:
                raise ApiError(400, f"{tensor.datatype} tensors come as raw_input_contents only")
            values = getattr(tensor.contents, field) if field else []
            images = images_from_values(tensor.datatype, shape, values, self.limits)
        keys = output_names(model, [output.name for output in request.outputs])
        results = await model.run_outputs(images, keys)
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
        for key in keys:
            array = results[key]
            response.outputs.add(name=key, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(raw_bytes(array))
        return response, model.name


def listen_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start(app: FastAPI) -> grpc.aio.Server:
    """Start the gRPC server of ``app`` on the running event loop (uvicorn's); stop it with ``stop(grace)``.

    Under several uvicorn workers (each a child process) every worker listens on the same port with
    ``SO_REUSEPORT`` and the kernel spreads the connections; a single process takes the port alone, so
    a second server on it fails to start instead of sharing it.
    """
    settings = app.state.settings
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", int(multiprocessing.parent_process() is not None)),
    ]
    server = grpc.aio.server(options=options)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    service = InferenceService(app.state.registry, app.state.limits, app.state.metrics, key, settings.access_log)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = listen_address(settings.grpc_host, settings.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {address} (AESERVE_GRPC_HOST, AESERVE_GRPC_PORT): {exc}") from None
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", address)
    return server
