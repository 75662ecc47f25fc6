"""The package's version (pyproject.toml's), for a checkout run without being installed."""

__version__ = "0.1.0"
