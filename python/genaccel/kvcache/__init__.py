"""KV-cache compression: XQuant's quantized layer-input (X) caches (variant `xquant`)."""

from .xquant import QuantizedTensor, dequantize, quantize, xquant_matmul, xquant_weighted_sum

__all__ = ["QuantizedTensor", "dequantize", "quantize", "xquant_matmul", "xquant_weighted_sum"]


def __getattr__(name):
    # The transformers Cache classes load transformers, which genaccel does not need otherwise.
    if name in ("XQuantCache", "enable_xquant", "svd_factors"):
        from .xquant import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
