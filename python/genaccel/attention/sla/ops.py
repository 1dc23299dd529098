"""SLA: O = O^s + Proj(O^l) with O^s exact softmax attention over each query block's critical key
blocks and O^l linear attention over its marginal ones (paper semantics; see reference.py).
Differentiable in q, k, v and the projection: op sla_fwd computes both branches (and the feature
maps phi(q), phi(k) itself, in float32 scratch; the projection's weight W on the values, since O^l W^T
is the linear branch of V W^T) and op sla_bwd their gradients in one call (the
block-sparse backward kernel for the sparse branch, a pre-aggregated kernel for the linear one,
whose formula is linear_branch_backward_reference in reference.py, and the gradient through phi)."""

import math
from typing import Optional, Tuple

import torch

from ..._utils import BlockSize, autocast_enabled, block_size_pair, refuse_double_backward
from ..block_sparse import attention_delta
from .block_map import sla_block_map
from .spec import FEATURE_MAPS


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
    *,
    precision: str = "tf32",
    backend: str = "auto",
    block_map: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
):
    """Sparse-linear attention of q (B, H, Nq, D) over k, v (B, Hkv, Nk, D).

    Per query block the top `topk` fraction of key blocks (by pooled scores, at least one) get exact
    softmax attention, the bottom `low_k` fraction are skipped and the rest feed a linear-attention
    branch with feature map phi in {"softmax" (over the feature dim), "elu" (elu+1), "relu"}, whose
    output goes through Proj = F.linear(., proj_weight, proj_bias) (identity when proj_weight is
    None). `linear_over_all_keys=True` is the original repository's main-branch variant (linear
    attention over every key, denominator + 1e-5). Under autocast q, k, v are cast to the autocast
    dtype first, as SDPA's are. Returns out in the dtype of q (after that cast), and with
    return_sparsity also the fraction of key blocks computed exactly. On CUDA, precision picks the
    linear branch's GEMMs ("tf32": TF32 per-block products and two-part bf16 mask sums; "fp32": float32
    and exact mask sums) and backend the sparse branch's kernels ("auto", "sm80", "sm90"); the CPU
    computes in float32 with one kernel. block_map: a (codes, kv_indices, kv_counts) plan from
    `sla_block_map` to reuse (e.g. across denoising steps) instead of planning from q and k;
    topk and low_k are then unused, and the op checks the plan (one host sync on CUDA).
    """
    bq, bk = block_size_pair(block_size)
    if autocast_enabled(q):
        # As SDPA under autocast: the attention runs in the autocast dtype (the CUDA kernels take
        # half precision only, so a float32 model under autocast would otherwise be refused).
        amp = torch.get_autocast_dtype(q.device.type)
        q, k, v = (t.to(amp) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in (q, k, v))
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if proj_weight is None and proj_bias is not None:
        raise ValueError("proj_bias needs proj_weight")
    if block_map is None:
        codes, kv_indices, kv_counts = sla_block_map(q, k, topk, low_k, (bq, bk))  # also checks q and k
        # Valid by construction: check_plan=False spares the plan checks' host sync on CUDA.
        check_plan = False
    else:
        if not (isinstance(block_map, (tuple, list)) and len(block_map) == 3
                and all(isinstance(t, torch.Tensor) for t in block_map)):
            raise ValueError("block_map must be the (codes, kv_indices, kv_counts) tuple of sla_block_map")
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D), got {getattr(t, 'shape', type(t))}")
        codes, kv_indices, kv_counts = block_map
        check_plan = True
    D = q.shape[-1]
    for name, t, shape in (("proj_weight", proj_weight, (D, D)), ("proj_bias", proj_bias, (D,))):
        if t is not None and (not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != shape
                              or t.device != q.device):
            raise ValueError(f"{name} must be a floating-point tensor of shape {shape} on the device of q "
                             f"({q.device}), got {getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))} "
                             f"on {getattr(t, 'device', None)}")
    scale = 1.0 / math.sqrt(D)
    # The op applies proj_weight itself (out_linear = O^l W^T, in float32 on the
    # values V W^T: no float32 pass over the output), whatever the weight's dtype, also under autocast.
    out_sparse, _, out_linear, _ = torch.ops.genaccel.sla_fwd(
        q, k, v, codes, kv_indices, kv_counts, bq, bk, scale, feature_map, linear_over_all_keys, proj_weight,
        check_plan=check_plan, precision=precision, backend=backend)
    # Without autograd the sum goes into out_sparse itself (fresh from the op, saved by nobody): a
    # (B, H, N, D) allocation less, whose page faults cost as much as the sum on the CPU. The bias is
    # added in place either way (into a fresh tensor that the addition does not keep for backward).
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, proj_weight, proj_bias))
    out = out_sparse + out_linear if grads else out_sparse.add_(out_linear)
    if proj_bias is not None:
        out = out.add_(proj_bias.to(out.dtype))
    if return_sparsity:
        return out, kv_indices.shape[-1] / max(codes.shape[-1], 1)
    return out


def _sla_fwd_setup_context(ctx, inputs, output):
    (q, k, v, codes, kv_indices, kv_counts, block_q, block_k, scale, feature_map, all_keys, proj_weight, _,
     precision, backend) = inputs
    out_sparse, lse, out_linear, denom = output
    ctx.save_for_backward(q, k, v, codes, kv_indices, kv_counts, out_sparse, lse, out_linear, denom, proj_weight)
    ctx.args = (block_q, block_k, scale, feature_map, all_keys, precision, backend)
    ctx.mark_non_differentiable(denom)


def _sla_fwd_backward(ctx, grad_sparse, grad_lse, grad_linear, grad_denom):
    q, k, v, codes, kv_indices, kv_counts, out_sparse, lse, out_linear, denom, proj_weight = ctx.saved_tensors
    block_q, block_k, scale, feature_map, all_keys, precision, backend = ctx.args
    if grad_sparse is None:
        grad_sparse = torch.zeros_like(out_sparse)
    if grad_linear is None:
        grad_linear = torch.zeros_like(out_linear)
    delta = attention_delta(grad_sparse, out_sparse, grad_lse)
    # The forward checked this very plan, or was told it was valid: no second check (and no sync).
    dq, dk, dv, d_proj = torch.ops.genaccel.sla_bwd(
        grad_sparse, grad_linear, q, k, v, codes, kv_indices, kv_counts,
        out_sparse, lse, delta, out_linear, denom, block_q, block_k, scale, feature_map, all_keys, proj_weight,
        check_plan=False, precision=precision, backend=backend,
    )
    d_proj = None if proj_weight is None else d_proj
    return dq, dk, dv, None, None, None, None, None, None, None, None, d_proj, None, None, None


torch.library.register_autograd("genaccel::sla_fwd", _sla_fwd_backward, setup_context=_sla_fwd_setup_context)
refuse_double_backward("sla_bwd", "sparse_linear_attention")
