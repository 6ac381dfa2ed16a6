"""zoo's version, as installed (importing it imports nothing else of zoo)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zoo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
