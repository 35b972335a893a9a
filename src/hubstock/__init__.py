"""hubstock: locked, tested notebook environments and stock kernels for a batch-scheduled JupyterHub."""

#: the one place the version is written (pyproject.toml reads it from here: [tool.hatch.version]);
#: a literal, so that every command starts without importlib.metadata
__version__ = "0.1.0"
