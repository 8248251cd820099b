"""Dependencies the routers inject: the app's registry and limits."""

from __future__ import annotations

from fastapi import Request

from app.inputs import Limits
from app.registry import Registry


async def get_registry(request: Request) -> Registry:
    """The registry of the app serving this request."""
    return request.app.state.registry


async def get_limits(request: Request) -> Limits:
    """The request limits of the app serving this request."""
    return request.app.state.limits
