"""The aeserve REST service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aeserve")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
