"""KV-cache compression: XQuant's quantized layer-input (X) caches (variant `xquant`)."""

from .xquant import QuantizedTensor, dequantize, quantize, xquant_matmul, xquant_weighted_sum

__all__ = ["QuantizedTensor", "dequantize", "quantize", "xquant_matmul", "xquant_weighted_sum"]
