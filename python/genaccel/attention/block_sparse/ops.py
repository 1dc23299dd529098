"""Block-sparse attention: the wrapper of op block_sparse_attn_fwd, the fake kernels and autograd of
block_sparse_attn_fwd / block_sparse_attn_bwd / attention_delta.

Each query block of `block_q` tokens attends, with one softmax, to the key blocks its mask row
selects (plan.py turns a block mask into those lists).
"""

import math
from typing import Optional, Union

import torch

from ..._utils import BlockSize, block_size_pair, check_scale, refuse_double_backward
from .plan import BlockSparsePlan, block_mask_to_indices

# The ops' `backend` argument: which CUDA kernels run ("auto" is "sm80" until the wgmma kernels pass a
# GPU check); the CPU validates it and runs its one kernel.
ATTENTION_BACKENDS = ("auto", "sm80", "sm90")


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Union[torch.Tensor, BlockSparsePlan],
    block_size: Optional[BlockSize] = None,
    scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
):
    """Attention of each query block over the key blocks that `block_mask` selects.

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D) with H % Hkv == 0. block_mask: a bool mask
    (B or 1, H or 1, ceil(Nq/bq), ceil(Nk/bk)) with block_size (default (64, 64)), or a
    `BlockSparsePlan` made once for many calls (its block sizes, and variable-size blocks, come with
    it). Returns out (B, H, Nq, D) in the dtype of q, and with return_lse also the float32
    log-sum-exp (B, H, Nq) (-inf where a row selects no key; such a row's output is zero). scale
    defaults to 1/sqrt(D). backend picks the CUDA kernels: "auto", "sm80" (mma.sync) or "sm90"
    (wgmma; Hopper; not yet run on a GPU); the CPU has one kernel.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D), got {getattr(t, 'shape', type(t))}")
    if isinstance(block_mask, BlockSparsePlan):
        if block_size is not None:
            raise ValueError("block_size comes with the plan; pass block_size=None with a BlockSparsePlan")
        plan = block_mask
        # A user's plan is checked by the op (one host sync on CUDA).
        check_plan = True
    else:
        plan = _plan_mask(block_mask, q, k, block_size_pair((64, 64) if block_size is None else block_size))
        # A plan from block_mask_to_indices is valid by construction: check_plan=False spares the op
        # its host sync on CUDA (the planning's own max_kv sync remains).
        check_plan = False
    if plan.kv_indices.device != q.device:
        raise ValueError(f"the plan must be on the device of q ({q.device}), got {plan.kv_indices.device}")
    D = q.shape[-1]
    scale = (1.0 / math.sqrt(D) if D > 0 else 1.0) if scale is None else check_scale(scale)
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(
        q, k, v, plan.kv_indices, plan.kv_counts, plan.block_q, plan.block_k, scale,
        check_plan=check_plan, backend=backend, **plan.op_args())
    return (out, lse) if return_lse else out


def _plan_mask(block_mask, q: torch.Tensor, k: torch.Tensor, block_size) -> BlockSparsePlan:
    """The plan of a block mask for q, k (no key-major lists: the backward builds them if it runs)."""
    bq, bk = block_size
    B, H, nq = q.shape[:3]
    nk = k.shape[2]
    tq, tk = math.ceil(nq / bq), math.ceil(nk / bk)
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor or a BlockSparsePlan, got "
                         f"{getattr(block_mask, 'dtype', type(block_mask))}")
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
    kv_indices, kv_counts = block_mask_to_indices(block_mask)
    return BlockSparsePlan(kv_indices, kv_counts, bq, bk, max(tk, 1))


def _block_sparse_attn_setup_context(ctx, inputs, output):
    q, k, v, kv_indices, kv_counts, block_q, block_k, scale, _, backend, *plan = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_counts, *plan)
    ctx.args = (block_q, block_k, scale, backend)


def attention_delta(dout: torch.Tensor, out: torch.Tensor, dlse: Optional[torch.Tensor]) -> torch.Tensor:
    """rowsum(dout * out) - dlse in float32: the softmax-Jacobian term of the backward, with any
    gradient that reached the lse output folded in (d lse / d logits = P). The row sums are op
    attention_delta: one pass over half-precision dout and out, without float32 copies."""
    delta = torch.ops.genaccel.attention_delta(dout, out)
    return delta if dlse is None else delta - dlse.float()


def _block_sparse_attn_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_indices, kv_counts, q_offsets, k_offsets, km_offsets, km_queries = ctx.saved_tensors
    block_q, block_k, scale, backend = ctx.args
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    delta = attention_delta(grad_out, out, grad_lse)
    # The forward checked this very plan, or was told it was valid: no second check (and no sync).
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(
        grad_out, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale, check_plan=False,
        backend=backend, q_block_offsets=q_offsets, k_block_offsets=k_offsets, key_major_offsets=km_offsets,
        key_major_queries=km_queries,
    )
    return (dq, dk, dv) + (None,) * 11


torch.library.register_autograd(
    "genaccel::block_sparse_attn_fwd",
    _block_sparse_attn_backward,
    setup_context=_block_sparse_attn_setup_context,
)


refuse_double_backward("block_sparse_attn_bwd", "block_sparse_attention")
