"""The ceiling: a bare FastAPI app that returns a fixed answer without reading the body."""

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
ANSWER = b'{"model":"bare","version":1,"codes":[[0.0]]}'


@app.post("/encode")
async def encode() -> Response:
    return Response(ANSWER, media_type="application/json")


@app.post("/classify")
async def classify() -> Response:
    return Response(ANSWER, media_type="application/json")


@app.get("/readyz")
async def readyz() -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")
