"""quanta.qio: safetensors save and load of quantized models."""

__version__ = "0.1.0"

__all__: list[str] = []
