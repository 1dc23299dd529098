"""Block-sparse attention: the wrapper of op block_sparse_attn_fwd, the fake kernels and autograd of
block_sparse_attn_fwd / block_sparse_attn_bwd / attention_delta.

Each query block of `block_q` tokens attends, with one softmax, to the key blocks its mask row
selects (plan.py turns a block mask into those lists).
"""

import math
from typing import Optional

import torch

from ..._utils import BlockSize, block_size_pair, refuse_double_backward
from .plan import block_mask_to_indices

# The ops' `backend` argument: which CUDA kernels run ("auto" is "sm80" until the wgmma kernels pass a
# GPU check); the CPU validates it and runs its one kernel.
ATTENTION_BACKENDS = ("auto", "sm80", "sm90")


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: BlockSize = (64, 64),
    scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
):
    """Attention of each query block over the key blocks that `block_mask` selects.

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D) with H % Hkv == 0. block_mask: bool
    (B or 1, H or 1, ceil(Nq/bq), ceil(Nk/bk)). Returns out (B, H, Nq, D) in the dtype of q, and with
    return_lse also the float32 log-sum-exp (B, H, Nq) (-inf where a row selects no key block; such a
    row's output is zero). scale defaults to 1/sqrt(D). backend picks the CUDA kernels: "auto",
    "sm80" (mma.sync) or "sm90" (wgmma; Hopper; not yet run on a GPU); the CPU has one kernel.
    """
    bq, bk = block_size_pair(block_size)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D), got {getattr(t, 'shape', type(t))}")
    B, H, nq, D = q.shape
    nk = k.shape[2]
    tq, tk = math.ceil(nq / bq), math.ceil(nk / bk)
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor, got {getattr(block_mask, 'dtype', type(block_mask))}")
    if (
        block_mask.dim() != 4
        or block_mask.shape[0] not in (1, B)
        or block_mask.shape[1] not in (1, H)
        or tuple(block_mask.shape[2:]) != (tq, tk)
    ):
        raise ValueError(
            f"block_mask must have shape ({B} or 1, {H} or 1, {tq}, {tk}) for Nq={nq}, Nk={nk}, "
            f"block_size=({bq}, {bk}); got {tuple(block_mask.shape)}"
        )
    if block_mask.device != q.device:
        raise ValueError(f"block_mask must be on the device of q ({q.device}), got {block_mask.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    kv_indices, kv_counts = block_mask_to_indices(block_mask)
    # A plan from block_mask_to_indices is valid by construction: check_plan=False spares the op its
    # host sync on CUDA (the planning's own max_kv sync remains).
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, kv_indices, kv_counts, bq, bk, float(scale),
                                                        check_plan=False, backend=backend)
    return (out, lse) if return_lse else out


@torch.library.register_fake("genaccel::block_sparse_attn_fwd")
def _block_sparse_attn_fwd_fake(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, check_plan=True,
                                backend="auto"):
    torch._check(q.dim() == 4, lambda: f"q must be 4-D, got {q.dim()}-D")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.register_fake("genaccel::block_sparse_attn_bwd")
def _block_sparse_attn_bwd_fake(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale,
                                check_plan=True, backend="auto"):
    # The kernels return contiguous gradients whatever the inputs' strides.
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _block_sparse_attn_setup_context(ctx, inputs, output):
    q, k, v, kv_indices, kv_counts, block_q, block_k, scale, _, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_counts)
    ctx.args = (block_q, block_k, scale, backend)


def attention_delta(dout: torch.Tensor, out: torch.Tensor, dlse: Optional[torch.Tensor]) -> torch.Tensor:
    """rowsum(dout * out) - dlse in float32: the softmax-Jacobian term of the backward, with any
    gradient that reached the lse output folded in (d lse / d logits = P). The row sums are op
    attention_delta: one pass over half-precision dout and out, without float32 copies."""
    delta = torch.ops.genaccel.attention_delta(dout, out)
    return delta if dlse is None else delta - dlse.float()


@torch.library.register_fake("genaccel::attention_delta")
def _attention_delta_fake(dout, out):
    return out.new_empty(out.shape[:3], dtype=torch.float32)


def _block_sparse_attn_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_indices, kv_counts = ctx.saved_tensors
    block_q, block_k, scale, backend = ctx.args
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    delta = attention_delta(grad_out, out, grad_lse)
    # The forward checked this very plan, or was told it was valid: no second check (and no sync).
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(
        grad_out, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale, check_plan=False,
        backend=backend,
    )
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd(
    "genaccel::block_sparse_attn_fwd",
    _block_sparse_attn_backward,
    setup_context=_block_sparse_attn_setup_context,
)


refuse_double_backward("block_sparse_attn_bwd", "block_sparse_attention")
