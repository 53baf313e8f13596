"""mubench: the open benchmark harness for machine unlearning."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mubench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
