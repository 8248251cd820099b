"""The Python client of the aeserve service: ``aeserve.Client`` and ``aeserve.AsyncClient``.

It needs httpx and numpy only; the service (``app``) and the training code are never imported here.

    >>> import aeserve
    >>> with aeserve.Client("http://127.0.0.1:8000") as client:
    ...     client.classify("examples/seven.png").labels
    array([7])
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aeserve")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from aeserve.client import DEFAULT_URL, ApiError, AsyncClient, Client, Limits
from aeserve.results import (
    ClassifyResult,
    ClusterResult,
    DenoiseResult,
    EncodeResult,
    ReconstructResult,
    Result,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "ClassifyResult",
    "Client",
    "ClusterResult",
    "DenoiseResult",
    "EncodeResult",
    "Limits",
    "ReconstructResult",
    "Result",
    "__version__",
]
