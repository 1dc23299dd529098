"""SVG2's critical cluster pairs: which key clusters each query cluster attends to, estimated from the
centroids alone (top-p of the size-weighted centroid softmax)."""

import math
from typing import Optional

import torch

from ..._utils import check_fraction


def critical_cluster_pairs(q_centroids: torch.Tensor, k_centroids: torch.Tensor, k_counts: torch.Tensor,
                           top_p: float = 0.9, min_kc_ratio: float = 0.10,
                           scale: Optional[float] = None) -> torch.Tensor:
    """bool (B, H, QC, KC): True where query cluster a attends to key cluster b.

    q_centroids float32 (B, H, QC, D); k_centroids float32 (B, Hkv, KC, D) and k_counts int32
    (B, Hkv, KC) (H % Hkv == 0: query head h uses key head h // (H / Hkv)). The attention mass of a on b
    is estimated as P(a, b) = |K_b| exp(s_ab) / sum_b' |K_b'| exp(s_ab'), s_ab = c_q[a] . c_k[b] * scale
    (default 1/sqrt(D)), in float32. Per query cluster the key clusters are kept in descending P until
    the kept mass reaches top_p (the crossing cluster kept, the top-1 always), and at least
    floor(min_kc_ratio * KC) of them. top_p = 1 keeps every key cluster (a float32 cumulative sum
    reaches 1 before the tail, which would drop the smallest clusters).
    """
    top_p = check_fraction("top_p", top_p)
    min_kc_ratio = check_fraction("min_kc_ratio", min_kc_ratio)
    for name, t, dims in (("q_centroids", q_centroids, 4), ("k_centroids", k_centroids, 4), ("k_counts", k_counts, 3)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise ValueError(f"{name} must be a {dims}-D tensor, got {getattr(t, 'shape', type(t))}")
    B, H, _, D = q_centroids.shape
    Hkv, KC = k_centroids.shape[1], k_centroids.shape[2]
    if (k_centroids.shape[0] != B or k_centroids.shape[3] != D or Hkv < 1 or H % Hkv
            or tuple(k_counts.shape) != (B, Hkv, KC)):
        raise ValueError(f"k_centroids must be (B, Hkv, KC, D) and k_counts (B, Hkv, KC) with B = {B}, D = {D} and "
                         f"H = {H} a multiple of Hkv, got {tuple(k_centroids.shape)} and {tuple(k_counts.shape)}")
    if k_counts.dtype not in (torch.int32, torch.int64) or k_counts.device != q_centroids.device \
            or k_centroids.device != q_centroids.device:
        raise ValueError(f"k_counts must be int32 or int64, and k_centroids and k_counts on the device of q_centroids "
                         f"({q_centroids.device}); got k_counts {k_counts.dtype} on {k_counts.device}, k_centroids on "
                         f"{k_centroids.device}")
    if not (q_centroids.is_floating_point() and k_centroids.is_floating_point()):
        raise ValueError(f"q_centroids and k_centroids must be floating point, got {q_centroids.dtype} and "
                         f"{k_centroids.dtype}")
    # One host sync for the three value checks (garbage otherwise: log of a negative size is NaN).
    if not torch.compiler.is_compiling() and q_centroids.device.type != "meta":
        flags = torch.stack([~torch.isfinite(q_centroids).all(), ~torch.isfinite(k_centroids).all(),
                             (k_counts < 0).any()]).tolist()
        for name, bad, what in zip(("q_centroids", "k_centroids", "k_counts"), flags,
                                   ("finite", "finite", "non-negative")):
            if bad:
                raise ValueError(f"{name} must be {what}")
    group = H // Hkv
    kc = k_centroids.float().repeat_interleave(group, dim=1)
    sizes = k_counts.repeat_interleave(group, dim=1).float()
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    # log |K_b| folds the cluster size into the softmax; an empty cluster gets -inf, i.e. no mass.
    logits = torch.matmul(q_centroids.float(), kc.transpose(-1, -2)) * scale + sizes.log()[..., None, :]
    mass = torch.softmax(logits, dim=-1)
    ranked, order = torch.sort(mass, dim=-1, descending=True)
    above = torch.nn.functional.pad(ranked.cumsum(-1)[..., :-1], (1, 0))  # the mass ranked before each
    rank = torch.arange(KC, device=mass.device)
    keep = (above < top_p) | (rank < max(1, math.floor(min_kc_ratio * KC))) | (top_p >= 1.0)
    return torch.zeros_like(keep).scatter_(-1, order, keep)


def pair_density(pairs: torch.Tensor, q_counts: torch.Tensor, k_counts: torch.Tensor) -> float:
    """The fraction of (query, key) token pairs that the cluster pairs cover, over all (batch, head)s:
    sum pairs[a, b] |Q_a| |K_b| / (Nq Nk) (k_counts of Hkv heads broadcast over the query heads)."""
    group = pairs.shape[1] // k_counts.shape[1]
    qs, ks = q_counts.double(), k_counts.repeat_interleave(group, dim=1).double()
    covered = torch.einsum("zhij,zhi,zhj->zh", pairs.double(), qs, ks)
    total = qs.sum(-1) * ks.sum(-1)
    return float((covered / total.clamp_min(1)).mean())
