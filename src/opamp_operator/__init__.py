"""opamp-operator: manages fleets of OpenTelemetry Collectors through OpAMP."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opamp-operator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
