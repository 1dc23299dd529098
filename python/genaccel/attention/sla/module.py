"""nn.Module form of SLA, a drop-in for the attention call of a transformer block."""

from typing import Tuple, Union

import torch

from ..._utils import block_size_pair, check_choice
from ..block_sparse import ATTENTION_BACKENDS
from .block_map import check_sla_fractions
from .ops import sparse_linear_attention
from .spec import FEATURE_MAPS, PRECISIONS


class SparseLinearAttention(torch.nn.Module):
    """SLA over (B, H, N, D) q, k, v: exact attention on the top `topk` key blocks of each query
    block, linear attention (feature map phi) on the marginal ones, projected by `proj`.

    `proj` is Linear(head_dim, head_dim), shared by all heads and zero-initialised, so a fresh layer
    computes exactly sparse-only attention and fine-tuning learns the compensation. Parameters stay
    float32; the op applies the projection's weight in float32 (TF32 on CUDA) also under autocast,
    and adds the bias in the attention's dtype.

    State dicts of the original repository's module (thu-ml/SLA, whose projection is `proj_l`) load
    as they are; its main branch computes the linear branch over all keys without a negligible
    class: `low_k=0.0, linear_over_all_keys=True`. `precision` and `backend` are passed to
    `genaccel.sparse_linear_attention`.
    """

    def __init__(self, head_dim: int, topk: float = 0.05, low_k: float = 0.10,
                 block_size: Union[int, Tuple[int, int]] = (64, 64), feature_map: str = "softmax",
                 linear_over_all_keys: bool = False, *, precision: str = "tf32", backend: str = "auto"):
        super().__init__()
        check_choice("feature_map", feature_map, FEATURE_MAPS)
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.backend = check_choice("backend", backend, ATTENTION_BACKENDS)
        self.topk, self.low_k = check_sla_fractions(topk, low_k)
        self.block_size = block_size_pair(block_size)
        self.feature_map = feature_map
        self.linear_over_all_keys = linear_over_all_keys
        self.proj = torch.nn.Linear(head_dim, head_dim)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)
        self._register_load_state_dict_pre_hook(_rename_original_projection)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_sparsity: bool = False):
        return sparse_linear_attention(q, k, v, self.proj.weight, self.proj.bias, self.topk, self.low_k,
                                       self.block_size, self.feature_map, self.linear_over_all_keys,
                                       return_sparsity, precision=self.precision, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"head_dim={self.proj.in_features}, topk={self.topk}, low_k={self.low_k}, "
                f"block_size={self.block_size}, feature_map={self.feature_map!r}")


def _rename_original_projection(state_dict, prefix, *args):
    """Loads thu-ml/SLA's `proj_l.weight` / `proj_l.bias` into `proj` (same shapes and meaning)."""
    for name in ("weight", "bias"):
        key = f"{prefix}proj_l.{name}"
        if key in state_dict:
            state_dict[f"{prefix}proj.{name}"] = state_dict.pop(key)
