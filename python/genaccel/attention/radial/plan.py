"""Radial attention's block mask (arXiv 2506.19852, the rules of its code's `gen_log_mask_shrinked`):
a static spatio-temporal pattern whose attention window halves each time the frame distance doubles.

Each (query frame i, key frame j) pair has a token mask: dense for |i - j| <= 1 and for the sink frame
j = 0, otherwise a band |k - l| <= w(d) around the diagonal, and some distant pairs are dropped
altogether (frame decimation). The pair's token mask sits at its real token offsets (i*s, j*s), is
reduced to blocks by the reference code's density rule and OR-ed into the global block mask. The
reduction of a pair depends only on (band half-width, i*s mod B, j*s mod B), so it is computed from
interval arithmetic on whole blocks once per such key, never from an s x s token mask.
"""

import math
from functools import lru_cache
import numpy as np
import torch

from ..._utils import check_int

# Limits of the planner (a video DiT has tens of latent frames and up to ~10^5 tokens): the frame pairs
# are enumerated, and the mask is a dense (T, T) bool.
MAX_FRAMES = 4096
MAX_BLOCKS = 1 << 16

def radial_block_mask(num_frames: int, tokens_per_frame: int, block_size: int = 128, decay_factor: float = 1.0,
                      sink_frame: bool = True, text_tokens: int = 0) -> torch.Tensor:
    """The Radial attention block mask, bool (T, T) on the CPU, T = ceil((num_frames *
    tokens_per_frame + text_tokens) / block_size); True = the (query block, key block) pair is computed.

    Video tokens come frame after frame (tokens_per_frame = s each), then text_tokens text tokens that
    attend and are attended densely. Frame distance d = |i - j|: d <= 1 is dense; d >= 2 is the band
    |k - l| <= max(block_size, 2^bitlen(s) / 2^bitlen(d) * decay_factor) (bitlen(x) = floor(log2 x) + 1),
    and when 2^bitlen(s) / 2^bitlen(d) < block_size the pair is kept only if d is a multiple of
    block_size * 2^bitlen(d) / 2^bitlen(s). sink_frame: every frame attends densely to frame 0 (Wan;
    Hunyuan has no sink). A block of a pair's token mask is kept iff, among its key columns with an
    active row, more than 60 % have more than 1/3 of the block's rows active. Differences from the
    reference code: the decimation threshold is block_size (the code hard-codes 128, the same at the
    default), and without text tokens a partial last block is not made dense (the code pads the
    sequence to whole blocks and marks the padded block dense).
    """
    f = check_int("num_frames", num_frames, 1)
    s = check_int("tokens_per_frame", tokens_per_frame, 1)
    B = check_int("block_size", block_size, 1)
    if B >= 1 << 31:
        raise ValueError(f"block_size must be below 2^31 (the kernels' int32 block size), got {B}")
    text = check_int("text_tokens", text_tokens, 0)
    decay = _check_decay(decay_factor)
    if not isinstance(sink_frame, bool):
        raise ValueError(f"sink_frame must be a bool, got {sink_frame!r}")
    video = f * s
    if f > MAX_FRAMES:
        raise ValueError(f"num_frames must be at most {MAX_FRAMES}, got {f}")
    if video + text >= 1 << 31:
        raise ValueError(f"num_frames * tokens_per_frame + text_tokens must be below 2^31 tokens, got {video + text}")
    T = -(-(video + text) // B)
    if T > MAX_BLOCKS:
        raise ValueError(f"num_frames * tokens_per_frame + text_tokens = {video + text} tokens make {T} blocks of "
                         f"block_size={B}; the (T, T) mask is limited to {MAX_BLOCKS} blocks a side")
    mask = np.zeros((T, T), dtype=bool)
    # Frame pairs grouped by (half-width, i*s mod B, j*s mod B) share one reduction; a pair's blocks
    # start at ((i*s)//B, (j*s)//B) and never run past T (ceil((i+1)*s/B) <= T).
    halves = np.array([band_half_width(d, s, B, decay) for d in range(f)], dtype=np.int64)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(f), np.arange(f), indexing="ij"))
    half = np.where(sink_frame & (j == 0), s, halves[np.abs(i - j)])
    keep = half >= 0
    i, j, half = i[keep], j[keep], half[keep]
    row0, rem_r = np.divmod(i * s, B)
    col0, rem_c = np.divmod(j * s, B)
    keys, group = np.unique(np.stack([half, rem_r, rem_c]), axis=1, return_inverse=True)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(keys.shape[1] + 1))
    for u in range(keys.shape[1]):
        pairs = order[bounds[u]:bounds[u + 1]]
        p, q = np.nonzero(_pair_blocks(s, B, *map(int, keys[:, u])))
        mask[row0[pairs, None] + p, col0[pairs, None] + q] = True
    if text > 0:
        border = video // B
        mask[border:, :] = True
        mask[:, border:] = True
    return torch.from_numpy(mask)


def band_half_width(d: int, s: int, B: int, decay: float) -> int:
    """The band half-width in tokens of frames at distance d (s = the whole frame), or -1 when frame
    decimation drops such pairs."""
    if d <= 1:
        return s
    ref, den = 1 << s.bit_length(), 1 << d.bit_length()
    # Decimation: 2^bitlen(s)/2^bitlen(d) below B keeps every (B*den/ref)-th distance (exact in ints).
    if ref < B * den and d % ((B * den) // ref) != 0:
        return -1
    # The code compares integer distances with the float width in float32 (torch's default dtype).
    width = float(np.float32(ref / den * decay))
    return min(s, max(B, math.floor(width)))


@lru_cache(maxsize=4096)
def _pair_blocks(s: int, B: int, half: int, rem_r: int, rem_c: int) -> np.ndarray:
    """The reduced (nb, nb) block mask of one frame pair whose s x s band |k - l| <= half sits at
    offset (rem_r, rem_c) of a region of nb = ceil(s/B) blocks (tokens past nb*B are cut, as in the
    code)."""
    nb = -(-s // B)
    edges = np.arange(nb) * B
    # Block p holds the pair's local rows [a, b), block q its local key columns [cl, ch).
    a = np.maximum(edges - rem_r, 0)[:, None]
    b = np.minimum(edges + B - rem_r, s)[:, None]
    cl = np.maximum(edges - rem_c, 0)[None, :]
    ch = np.minimum(edges + B - rem_c, s)[None, :]

    def columns_with_at_least(t: int) -> np.ndarray:
        # Column c has |[max(a, c - half), min(b, c + half + 1))| active rows: at least t exactly for
        # c in [a + t - half - 1, b + half - t], provided b - a >= t and 2 * half + 1 >= t.
        first = np.maximum(a + t - half - 1, cl)
        last = np.minimum(b + half - t + 1, ch)
        n = np.maximum(last - first, 0)
        return np.where((b - a >= t) & (2 * half + 1 >= t), n, 0)

    nonzero = columns_with_at_least(1)
    high = columns_with_at_least(B // 3 + 1)  # the least count with count / B > 1/3
    blocks = 5 * high > 3 * nonzero
    blocks.setflags(write=False)
    return blocks


def _check_decay(decay_factor) -> float:
    if isinstance(decay_factor, bool) or not isinstance(decay_factor, (int, float)) or not (
            math.isfinite(decay_factor) and decay_factor >= 0):
        raise ValueError(f"decay_factor must be a finite number >= 0, got {decay_factor!r}")
    return float(decay_factor)
