"""Dependencies the routers inject."""

from __future__ import annotations

from fastapi import Request

from app.registry import Registry


async def get_registry(request: Request) -> Registry:
    """The registry of the app serving this request."""
    return request.app.state.registry
