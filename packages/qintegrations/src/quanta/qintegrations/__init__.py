"""quanta.qintegrations: the `quanta` command line and the real-model demo."""

__version__ = "0.1.0"

__all__ = ["__version__"]
