"""The CUDA backward of block-sparse attention, composed of batched GEMMs on gathered key blocks
(FlashAttention-2's backward equations, P recomputed from the saved lse), until a fused CUDA
kernel exists. Work and memory follow the planned blocks: per query block only its listed key
blocks are gathered, in chunks of query blocks that bound the temporaries. The arithmetic is
float32 (cuBLAS; TF32 only where the user enabled it for matmuls).

Device-generic torch code: it is registered as the CUDA kernel of genaccel::block_sparse_attn_bwd,
and the tests run the same function on CPU tensors against the CPU kernel."""

import math

import torch
import torch.nn.functional as F

from .block_sparse import token_blocks

# Bytes of float32 temporaries (gathered K and V, scores) per chunk of query blocks.
_CHUNK_BYTES = 1 << 30


def block_sparse_attn_bwd_gathered(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale):
    """(dq, dk, dv) of block_sparse_attn_fwd, in the dtypes of q, k, v (see the op's schema)."""
    torch.ops.genaccel.check_block_sparse_attn_bwd_inputs(
        dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale)
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    group = H // max(hkv, 1)
    bq, bk = block_q, block_k
    tq, tk, m = kv_indices.shape[2], -(-nk // bk), kv_indices.shape[3]
    dq = torch.zeros(B, H, tq, bq, D, dtype=torch.float32, device=q.device)
    dk = torch.zeros(B * hkv * tk * bk, D, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    if q.numel() and k.numel() and m:
        qb, dob = token_blocks(q.float(), bq), token_blocks(dout.float(), bq)
        pad = (0, tq * bq - nq)
        lse_b = F.pad(lse, pad, value=-math.inf).view(B, H, tq, bq)
        delta_b = F.pad(delta, pad).view(B, H, tq, bq)
        # Keys of every query head's kv head, as rows: (B, H, tk * bk, D).
        head_of = torch.arange(H, device=q.device) // group
        kh = token_blocks(k.float(), bk).flatten(2, 3)[:, head_of]
        vh = token_blocks(v.float(), bk).flatten(2, 3)[:, head_of]
        idx = kv_indices.expand(B, H, tq, m).long()
        used = torch.arange(m, device=q.device) < kv_counts.expand(B, H, tq).unsqueeze(-1)
        rows = (torch.where(used, idx, 0).unsqueeze(-1) * bk + torch.arange(bk, device=q.device)).flatten(3)
        keep = (used.unsqueeze(-1) & (rows.view(B, H, tq, m, bk) < nk)).flatten(3)  # (B, H, tq, m * bk)
        # Flat row of dk/dv that each gathered key lands on.
        base = ((torch.arange(B, device=q.device).view(B, 1) * hkv + head_of.view(1, H)) * (tk * bk)).view(B, H, 1, 1)
        per_block = 4 * (2 * m * bk * D + 3 * bq * m * bk)
        step = max(1, _CHUNK_BYTES // max(B * H * per_block, 1))
        for i0 in range(0, tq, step):
            s = slice(i0, min(i0 + step, tq))
            r = rows[:, :, s]
            gather = r.unsqueeze(-1).expand(*r.shape, D)
            ks = torch.gather(kh.unsqueeze(2).expand(-1, -1, r.shape[2], -1, -1), 3, gather)
            vs = torch.gather(vh.unsqueeze(2).expand(-1, -1, r.shape[2], -1, -1), 3, gather)
            p = torch.exp(qb[:, :, s] @ ks.transpose(-1, -2) * scale - lse_b[:, :, s].unsqueeze(-1))
            p = torch.where(keep[:, :, s].unsqueeze(-2) & torch.isfinite(lse_b[:, :, s]).unsqueeze(-1), p, 0.0)
            do = dob[:, :, s]
            ds = p * (do @ vs.transpose(-1, -2) - delta_b[:, :, s].unsqueeze(-1))
            dq[:, :, s] = ds @ ks * scale
            target = (base + r).flatten()
            dk.index_add_(0, target, (ds.transpose(-1, -2) @ qb[:, :, s] * scale).reshape(-1, D))
            dv.index_add_(0, target, (p.transpose(-1, -2) @ do).reshape(-1, D))
    dq = dq.flatten(2, 3)[:, :, :nq]
    dk = dk.view(B, hkv, tk * bk, D)[:, :, :nk]
    dv = dv.view(B, hkv, tk * bk, D)[:, :, :nk]
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


torch.library.register_kernel("genaccel::block_sparse_attn_bwd", "cuda", block_sparse_attn_bwd_gathered)
