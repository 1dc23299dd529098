"""KV-cache compression: XQuant's quantized layer-input (X) caches (variant `xquant`)."""

from .xquant import QuantizedTensor, dequantize, quantize

__all__ = ["QuantizedTensor", "dequantize", "quantize"]
