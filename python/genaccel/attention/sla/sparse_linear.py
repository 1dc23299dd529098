"""SLA: O = O^s + Proj(O^l) with O^s exact softmax attention over each query block's critical key
blocks and O^l linear attention over its marginal ones (paper semantics; see reference.py).
Differentiable in q, k, v and the projection: the sparse branch's backward is the block-sparse
backward kernel, the linear branch's is written in torch ops for now (see _linear_branch_backward);
gradients through the feature map come from autograd."""

import math
from typing import Optional

import torch

from ..block_sparse import BlockSize, _block_size, attention_delta
from .block_map import sla_block_map
from .reference import FEATURE_MAPS
from .reference import feature_map as apply_feature_map


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
    if proj_weight is None:
        out = out_sparse + out_linear
    elif out_sparse.dtype == proj_weight.dtype:
        # out_sparse + out_linear W^T (+ b) as one addmm: one fewer (B, H, N, D) temporary and pass.
        out = torch.addmm(out_sparse.reshape(-1, out_sparse.shape[-1]), out_linear.reshape(-1, out_linear.shape[-1]),
                          proj_weight.t()).view(out_sparse.shape)
        if proj_bias is not None:
            out = out.add_(proj_bias)  # addmm does not keep its output for backward
    else:
        # Projection in the parameters' dtype (float32 for the module; autocast applies its rules).
        out = out_sparse + torch.nn.functional.linear(out_linear.to(proj_weight.dtype), proj_weight, proj_bias)
    out = out.to(q.dtype)
    if return_sparsity:
        return out, kv_indices.shape[-1] / max(codes.shape[-1], 1)
    return out


def _phi(x: torch.Tensor, name: str) -> torch.Tensor:
    return apply_feature_map(x.float(), name)


@torch.library.register_fake("genaccel::sla_fwd")
def _sla_fwd_fake(q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, block_q, block_k, scale, linear_over_all_keys):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    stats = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, stats, torch.empty_like(out), torch.empty_like(stats)


def _sla_fwd_setup_context(ctx, inputs, output):
    q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, block_q, block_k, scale, all_keys = inputs
    out_sparse, lse, out_linear, denom = output
    ctx.save_for_backward(q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, out_sparse, lse, out_linear, denom)
    ctx.args = (block_q, block_k, scale, all_keys)
    ctx.mark_non_differentiable(denom)


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(..., N, D) -> (..., T, block, D), zero padded to whole blocks."""
    n = x.shape[-2]
    t = -(-n // block)
    return torch.nn.functional.pad(x, (0, 0, 0, t * block - n)).unflatten(-2, (t, block))


def _linear_branch_backward(grad_linear, phi_q, phi_k, v, codes, out_linear, denom, block_q, block_k, all_keys):
    """Gradients of O^l = phi_q H_i / denom w.r.t. phi_q, phi_k and v (paper section 1.5 /
    Alg. 2), in float32 torch ops with dense block sums: O(Tq * Tk * D^2). The fused kernel version
    (pre-aggregated like the forward) is still to come; this is the correctness baseline."""
    B, H, nq, D = phi_q.shape
    hkv, nk = phi_k.shape[1], phi_k.shape[2]
    group = H // hkv
    fq, fk, vv = phi_q.float(), phi_k.float(), v.float()
    kb, vb = _blocks(fk, block_k), _blocks(vv, block_k)                    # (B, Hkv, Tk, bk, D)
    h = (kb.transpose(-1, -2) @ vb).repeat_interleave(group, dim=1)        # (B, H, Tk, D, D)
    z = kb.sum(dim=-2).repeat_interleave(group, dim=1)                     # (B, H, Tk, D)
    tq, tk = -(-nq // block_q), h.shape[2]
    marginal = torch.ones(B, H, tq, tk) if all_keys else (codes == 0).float().expand(B, H, tq, tk)
    Hi = torch.einsum("bhij,bhjde->bhide", marginal, h)                  # (B, H, Tq, D, D)
    Zi = torch.einsum("bhij,bhjd->bhid", marginal, z)                    # (B, H, Tq, D)

    seen = (denom > 0).unsqueeze(-1)
    inv = torch.where(denom > 0, 1.0 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    dout = grad_linear.float() * seen
    d_l = (dout * out_linear.float()).sum(-1, keepdim=True)               # D^l, (B, H, Nq, 1)
    q_tilde = fq * inv.unsqueeze(-1)                                      # phi(q) / denom
    dob, qtb, dlb = _blocks(dout, block_q), _blocks(q_tilde, block_q), _blocks(d_l, block_q)
    inv_b = _blocks(inv.unsqueeze(-1), block_q)
    d_phi_q = (dob @ Hi.transpose(-1, -2) - dlb * Zi.unsqueeze(-2)) * inv_b
    d_phi_q = d_phi_q.flatten(2, 3)[:, :, :nq]
    dHi = qtb.transpose(-1, -2) @ dob                                     # (B, H, Tq, D, D)
    dZi = -(qtb * dlb).sum(dim=-2)                                        # (B, H, Tq, D)
    dH = torch.einsum("bhij,bhide->bhjde", marginal, dHi).unflatten(1, (hkv, group)).sum(2)
    dZ = torch.einsum("bhij,bhid->bhjd", marginal, dZi).unflatten(1, (hkv, group)).sum(2)
    d_phi_k = (vb @ dH.transpose(-1, -2) + dZ.unsqueeze(-2)).flatten(2, 3)[:, :, :nk]
    dv = (kb @ dH).flatten(2, 3)[:, :, :nk]
    return d_phi_q, d_phi_k, dv


def _sla_fwd_backward(ctx, grad_sparse, grad_lse, grad_linear, grad_denom):
    q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, out_sparse, lse, out_linear, denom = ctx.saved_tensors
    block_q, block_k, scale, all_keys = ctx.args
    if grad_sparse is None:
        grad_sparse = torch.zeros_like(out_sparse)
    delta = attention_delta(grad_sparse, out_sparse, grad_lse)
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(
        grad_sparse, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale
    )
    d_phi_q = d_phi_k = None
    if grad_linear is not None:
        d_phi_q, d_phi_k, dv_linear = _linear_branch_backward(
            grad_linear, phi_q, phi_k, v, codes, out_linear, denom, block_q, block_k, all_keys
        )
        dv = dv + dv_linear.to(dv.dtype)
        d_phi_q, d_phi_k = d_phi_q.to(phi_q.dtype), d_phi_k.to(phi_k.dtype)
    return dq, dk, dv, d_phi_q, d_phi_k, None, None, None, None, None, None, None


torch.library.register_autograd("genaccel::sla_fwd", _sla_fwd_backward, setup_context=_sla_fwd_setup_context)
