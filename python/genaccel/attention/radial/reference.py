"""Readable specification of the Radial block mask (never used in the fast path): every frame pair's
s x s token mask is built from the rules, placed at its token offsets, reduced to blocks by the
column-density rule and OR-ed in, the way the paper's code does, in its float arithmetic.
Attention under the mask is block-sparse attention (block_sparse/reference.py)."""

import math

import torch


def radial_block_mask_reference(num_frames, tokens_per_frame, block_size=128, decay_factor=1.0, sink_frame=True,
                                text_tokens=0):
    f, s, B = num_frames, tokens_per_frame, block_size
    video = f * s
    T = math.ceil((video + text_tokens) / B)
    out = torch.zeros(T, T, dtype=torch.bool)
    rows = torch.arange(s).view(-1, 1)
    cols = torch.arange(s).view(1, -1)
    ref_len = 2 ** (math.floor(math.log2(s)) + 1)
    for i in range(f):
        for j in range(f):
            d = abs(i - j)
            if sink_frame and j == 0 or d <= 1:
                local = torch.ones(s, s, dtype=torch.bool)
            else:
                group_len = 2 ** (math.floor(math.log2(d)) + 1)
                width = max(B, ref_len / group_len * decay_factor)
                local = (rows - cols).abs().float() <= torch.tensor(width, dtype=torch.float32)
                decimated = ref_len / group_len
                if decimated < B and d % int(B / decimated) != 0:
                    local = torch.zeros_like(local)
            rem_r, rem_c = (i * s) % B, (j * s) % B
            nb = math.ceil(s / B)
            region = torch.zeros(rem_r + nb * B, rem_c + nb * B, dtype=torch.bool)
            region[rem_r:rem_r + s, rem_c:rem_c + s] = local
            blocks = reduce_to_blocks(region[:nb * B, :nb * B], B)
            r0, c0 = (i * s) // B, (j * s) // B
            out[r0:r0 + nb, c0:c0 + nb] |= blocks
    if text_tokens > 0:
        out[video // B:, :] = True
        out[:, video // B:] = True
    return out


def reduce_to_blocks(token_mask, B):
    """Block (p, q) of a token mask (whole blocks) is kept iff more than 60 % of its key columns with
    any active row have more than 1/3 of the block's rows active."""
    n = token_mask.shape[0] // B
    m = token_mask.view(n, B, n, B)
    density = m.sum(dim=1).double() / B  # (n, n, B): per block row, per key column
    nonzero = (density > 0).sum(-1)
    high = (density > 1 / 3).sum(-1)
    frac = high.double() / nonzero.clamp_min(1).double()
    return (frac > 0.6) & (nonzero > 0)
