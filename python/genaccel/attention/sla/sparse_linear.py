"""SLA forward: O = O^s + Proj(O^l) with O^s exact softmax attention over each query block's
critical key blocks and O^l linear attention over its marginal ones (paper semantics; see
reference.py). The fused backward is not written yet: calling backward raises."""

import math
from typing import Optional

import torch

from ..block_sparse import BlockSize, _block_size
from .block_map import sla_block_map
from .reference import FEATURE_MAPS, feature_map


def sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: Optional[torch.Tensor] = None,
    proj_bias: Optional[torch.Tensor] = None,
    topk: float = 0.05,
    low_k: float = 0.10,
    block_size: BlockSize = (64, 64),
    feature_map: str = "softmax",
    linear_over_all_keys: bool = False,
    return_sparsity: bool = False,
):
    """Sparse-linear attention of q (B, H, Nq, D) over k, v (B, Hkv, Nk, D).

    Per query block the top `topk` fraction of key blocks (by pooled scores, at least one) get exact
    softmax attention, the bottom `low_k` fraction are skipped and the rest feed a linear-attention
    branch with feature map phi in {"softmax" (over the feature dim), "elu" (elu+1), "relu"}, whose
    output goes through Proj = F.linear(., proj_weight, proj_bias) (identity when proj_weight is
    None). `linear_over_all_keys=True` is the original repository's main-branch variant (linear
    attention over every key, denominator + 1e-5). Returns out in the dtype of q, and with
    return_sparsity also the fraction of key blocks computed exactly.
    """
    bq, bk = _block_size(block_size)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if proj_weight is None and proj_bias is not None:
        raise ValueError("proj_bias needs proj_weight")
    if proj_weight is not None and tuple(proj_weight.shape) != (q.shape[-1], q.shape[-1]):
        raise ValueError(f"proj_weight must have shape ({q.shape[-1]}, {q.shape[-1]}), got {tuple(proj_weight.shape)}")
    codes, kv_indices, kv_counts = sla_block_map(q, k, topk, low_k, (bq, bk))
    # phi in float32: its outputs are small probabilities/activations that half precision would
    # round before the sums over thousands of keys.
    phi_q, phi_k = _phi(q, feature_map), _phi(k, feature_map)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out_sparse, _, out_linear, _ = torch.ops.genaccel.sla_fwd(
        q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, bq, bk, scale, linear_over_all_keys
    )
    if proj_weight is not None:
        out_linear = torch.nn.functional.linear(out_linear, proj_weight.to(out_linear.dtype),
                                                None if proj_bias is None else proj_bias.to(out_linear.dtype))
    out = out_sparse + out_linear
    if return_sparsity:
        return out, kv_indices.shape[-1] / max(codes.shape[-1], 1)
    return out


def _phi(x: torch.Tensor, name: str) -> torch.Tensor:
    return feature_map(x.float(), name)


@torch.library.register_fake("genaccel::sla_fwd")
def _sla_fwd_fake(q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, block_q, block_k, scale, linear_over_all_keys):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    stats = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, stats, torch.empty_like(out), torch.empty_like(stats)


def _sla_fwd_setup_context(ctx, inputs, output):
    pass


def _sla_fwd_backward(ctx, *grads):
    raise NotImplementedError(
        "genaccel.sparse_linear_attention has no backward yet (the fused SLA backward is the next "
        "step of this family); run it under torch.no_grad() for inference."
    )


torch.library.register_autograd("genaccel::sla_fwd", _sla_fwd_backward, setup_context=_sla_fwd_setup_context)
