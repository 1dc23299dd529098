"""XQuant (arXiv 2508.10395): group quantization of a layer's input X (ops xquant_quantize /
xquant_dequantize) as the building block of quantized X caches."""

from .ops import QuantizedTensor, dequantize, quantize, xquant_matmul, xquant_weighted_sum

__all__ = ["QuantizedTensor", "dequantize", "quantize", "xquant_matmul", "xquant_weighted_sum"]
