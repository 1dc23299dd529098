"""genaccel: C++/CUDA kernels for cheaper generative-AI inference, exposed as torch.ops.genaccel.*."""

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from . import _ops  # noqa: F401  (loads genaccel._C, which registers torch.ops.genaccel.*)
from . import nn  # noqa: F401
from ._ops import build_info, has_cuda_kernels
from .attention import block_mask_to_indices, block_sparse_attention, mask_density
from .attention.radial import radial_block_mask
from .attention.sla import sla_block_map, sparse_linear_attention
from .attention.svg2 import cluster_permute, cluster_unpermute, kmeans, svg2_attention
from .autoencoder import channel_to_space, chunk_causal_conv3d, space_to_channel
from .kvcache import QuantizedTensor, dequantize, quantize, xquant_matmul, xquant_weighted_sum

__version__ = build_info()["version"]

__all__ = [
    "QuantizedTensor",
    "__version__",
    "block_mask_to_indices",
    "block_sparse_attention",
    "build_info",
    "channel_to_space",
    "chunk_causal_conv3d",
    "cluster_permute",
    "cluster_unpermute",
    "dequantize",
    "has_cuda_kernels",
    "kmeans",
    "mask_density",
    "quantize",
    "radial_block_mask",
    "sla_block_map",
    "space_to_channel",
    "sparse_linear_attention",
    "svg2_attention",
    "xquant_matmul",
    "xquant_weighted_sum",
]
