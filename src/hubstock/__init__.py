"""hubstock: locked, tested notebook environments and stock kernels for a batch-scheduled JupyterHub."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hubstock")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
