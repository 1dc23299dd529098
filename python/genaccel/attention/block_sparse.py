"""Block-sparse attention: plan (block mask -> key-block index lists) and run.

Each query block of `block_q` tokens attends, with one softmax, to the key blocks its mask row
selects. Planning is split from running, as in FlashInfer: build the index lists once with
`block_mask_to_indices`, then call `torch.ops.genaccel.block_sparse_attn_fwd` as often as needed.
"""

import math
from typing import Optional, Tuple, Union

import torch

BlockSize = Union[int, Tuple[int, int]]


def _block_size(block_size: BlockSize) -> Tuple[int, int]:
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    if (
        not isinstance(block_size, (tuple, list))
        or len(block_size) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block_size)
    ):
        raise ValueError(f"block_size must be a positive int or a pair of them, got {block_size!r}")
    return tuple(block_size)


def token_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(..., N, D) -> (..., ceil(N / block), block, D), the last block zero padded."""
    n = x.shape[-2]
    t = -(-n // block)
    return torch.nn.functional.pad(x, (0, 0, 0, t * block - n)).unflatten(-2, (t, block))


def block_mask_to_indices(block_mask: torch.Tensor, max_kv_blocks: Optional[int] = None):
    """Plans a block mask: returns (kv_indices, kv_counts).

    block_mask: bool (Bm, Hm, Tq, Tk); True = compute that (query block, key block) pair.
    kv_indices: int32 (Bm, Hm, Tq, max_kv_blocks), the selected key blocks of each query block in
    ascending order, padded with -1; kv_counts: int32 (Bm, Hm, Tq). Bm/Hm stay as in the mask (1
    broadcasts over batch/heads). max_kv_blocks defaults to the largest row count (one host sync);
    under torch.compile it defaults to Tk, which needs no sync.
    """
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor, got {getattr(block_mask, 'dtype', type(block_mask))}")
    if block_mask.dim() != 4:
        raise ValueError(f"block_mask must be 4-D (B or 1, H or 1, Tq, Tk), got shape {tuple(block_mask.shape)}")
    tk = block_mask.shape[-1]
    counts = block_mask.sum(dim=-1, dtype=torch.int32)
    if max_kv_blocks is None:
        if torch.compiler.is_compiling() or counts.numel() == 0:
            max_kv_blocks = tk
        else:
            max_kv_blocks = int(counts.max())
    elif not torch.compiler.is_compiling() and counts.numel() > 0 and int(counts.max()) > max_kv_blocks:
        raise ValueError(
            f"max_kv_blocks={max_kv_blocks} is smaller than the {int(counts.max())} blocks a row of "
            "block_mask selects; a plan must list every selected block"
        )
    if not 0 <= max_kv_blocks <= tk:
        raise ValueError(f"max_kv_blocks must be in [0, {tk}], got {max_kv_blocks}")
    # Selected block ids sort before the sentinel tk; a stable sort keeps them ascending.
    ids = torch.arange(tk, device=block_mask.device, dtype=torch.int32)
    keyed = torch.where(block_mask, ids, torch.full_like(ids, tk))
    ordered = torch.sort(keyed, dim=-1, stable=True).values[..., :max_kv_blocks]
    kv_indices = torch.where(ordered == tk, torch.full_like(ordered, -1), ordered).contiguous()
    return kv_indices, counts.contiguous()


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: BlockSize = (64, 64),
    scale: Optional[float] = None,
    return_lse: bool = False,
):
    """Attention of each query block over the key blocks that `block_mask` selects.

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D) with H % Hkv == 0. block_mask: bool
    (B or 1, H or 1, ceil(Nq/bq), ceil(Nk/bk)). Returns out (B, H, Nq, D) in the dtype of q, and with
    return_lse also the float32 log-sum-exp (B, H, Nq) (-inf where a row selects no key block; such a
    row's output is zero). scale defaults to 1/sqrt(D).
    """
    bq, bk = _block_size(block_size)
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
                                                        check_plan=False)
    return (out, lse) if return_lse else out


@torch.library.register_fake("genaccel::block_sparse_attn_fwd")
def _block_sparse_attn_fwd_fake(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, check_plan=True):
    torch._check(q.dim() == 4, lambda: f"q must be 4-D, got {q.dim()}-D")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.register_fake("genaccel::block_sparse_attn_bwd")
def _block_sparse_attn_bwd_fake(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale,
                                check_plan=True):
    # The kernels return contiguous gradients whatever the inputs' strides.
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _block_sparse_attn_setup_context(ctx, inputs, output):
    q, k, v, kv_indices, kv_counts, block_q, block_k, scale, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_counts)
    ctx.args = (block_q, block_k, scale)


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
    block_q, block_k, scale = ctx.args
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    delta = attention_delta(grad_out, out, grad_lse)
    # The forward checked this very plan, or was told it was valid: no second check (and no sync).
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(
        grad_out, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale, check_plan=False
    )
    return dq, dk, dv, None, None, None, None, None, None


torch.library.register_autograd(
    "genaccel::block_sparse_attn_fwd",
    _block_sparse_attn_backward,
    setup_context=_block_sparse_attn_setup_context,
)


def refuse_double_backward(backward_op: str, forward_op: str) -> None:
    """Gives the backward op `genaccel::<backward_op>` an autograd formula that raises: gradients of
    its gradients are not implemented, and without a formula torch would warn and return zeros.
    The formula only runs when the first backward was taken with create_graph=True."""

    def backward(ctx, *grads):
        raise RuntimeError(f"{forward_op}: double backward (the gradient of its gradients, e.g. "
                           f"autograd.grad(..., create_graph=True) then backward) is not supported")

    torch.library.register_autograd(f"genaccel::{backward_op}", backward,
                                    setup_context=lambda ctx, inputs, output: None)


refuse_double_backward("block_sparse_attn_bwd", "block_sparse_attention")
