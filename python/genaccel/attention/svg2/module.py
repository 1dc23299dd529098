"""nn.Module form of SVG2 (Sparse VideoGen2): semantic-aware permutation + variable-block sparse
attention, with the centroid cache that makes k-means cheap across denoising steps."""

from typing import Optional, Tuple

import torch

from ..._utils import check_choice, check_fraction, check_int
from ..block_sparse import ATTENTION_BACKENDS, BlockSparsePlan, block_sparse_attention
from .ops import cluster_permute, cluster_unpermute, kmeans, permute_rows
from .select import critical_cluster_pairs, pair_density


def svg2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_q_clusters: int = 200,
                   num_k_clusters: int = 1000, top_p: float = 0.9, min_kc_ratio: float = 0.10, iters: int = 50,
                   q_init: Optional[torch.Tensor] = None, k_init: Optional[torch.Tensor] = None,
                   tol: float = 1e-4, seed: Optional[int] = None, *, backend: str = "auto"):
    """One SVG2 attention call: q (B, H, N, D), k, v (B, Hkv, N, D) -> (out (B, H, N, D) in the original
    token order, state).

    k-means on q (num_q_clusters) and on k (num_k_clusters) per (batch, head), from q_init / k_init
    (float32 centroids of an earlier call: the warm start) or random tokens; the cluster pairs by
    top-p of the centroid estimate (`critical_cluster_pairs`); q, k, v permuted so that clusters are
    contiguous; block-sparse attention with the clusters as variable-size blocks (exact softmax over
    the selected keys; a query with no key gets 0); the output permuted back. Cluster counts above N
    are clamped to N. Differentiable in q, k, v (the clustering is not differentiated).
    state: dict(q_centroids, k_centroids, q_labels, k_labels, pairs, density: the token-pair density
    the pairs cover).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D), got {getattr(t, 'shape', type(t))}")
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype) or q.is_meta:
        raise ValueError(f"q, k, v must share one floating-point dtype on a real device, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype} on {q.device}")
    for name, t in (("k", k), ("v", v), ("q_init", q_init), ("k_init", k_init)):
        if isinstance(t, torch.Tensor) and t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    nq, nk = q.shape[2], k.shape[2]
    qc = min(check_int("num_q_clusters", num_q_clusters, 1), max(nq, 1))
    kc = min(check_int("num_k_clusters", num_k_clusters, 1), max(nk, 1))
    for name, init, c in (("q", q_init, qc), ("k", k_init, kc)):
        if isinstance(init, torch.Tensor) and init.dim() == 4 and init.shape[2] != c:
            raise ValueError(f"{name}_init has {init.shape[2]} centroids, but num_{name}_clusters clamped to the "
                             f"{name} tokens is {c}")
    with torch.no_grad():
        q_labels, q_centroids, q_counts = kmeans(q.detach(), qc, iters, q_init, tol, seed)
        k_labels, k_centroids, k_counts = kmeans(k.detach(), kc, iters, k_init, tol, None if seed is None else seed + 1)
        # k-means leaves the tokens of a (batch, head) holding NaN or inf unlabelled (counts 0). One host
        # sync, as the planning below has anyway.
        for name, counts, n in (("q", q_counts, nq), ("k", k_counts, nk)):
            if bool((counts.sum(-1) != n).any()):
                raise ValueError(f"{name} holds NaN or inf: SVG2 cannot cluster its tokens (k-means needs finite input)")
        pairs = critical_cluster_pairs(q_centroids, k_centroids, k_counts, top_p, min_kc_ratio)
    q_perm, q_order, q_offsets = cluster_permute(q, q_labels, qc)
    k_perm, k_order, k_offsets = cluster_permute(k, k_labels, kc)
    v_perm = permute_rows(v, k_order)
    group = q.shape[1] // max(k.shape[1], 1)
    plan = BlockSparsePlan.from_mask(pairs, (1, 1), q_block_offsets=q_offsets,
                                     k_block_offsets=k_offsets.repeat_interleave(group, dim=1))
    out_perm = block_sparse_attention(q_perm, k_perm, v_perm, plan, backend=backend)
    out = cluster_unpermute(out_perm, q_order)
    state = dict(q_centroids=q_centroids, k_centroids=k_centroids, q_labels=q_labels, k_labels=k_labels, pairs=pairs,
                 density=pair_density(pairs, q_counts, k_counts))
    return out, state


class SVG2Attention(torch.nn.Module):
    """SVG2 self-attention over (B, H, N, D) q and (B, Hkv, N, D) k, v (`svg2_attention`).

    Keeps the centroid cache across calls (denoising steps): the first call (or one whose batch, heads,
    tokens or head dim differ from the cache's) runs `first_iters` k-means iterations from random
    tokens, later ones `warm_iters` from the cached centroids. Runs dense attention (torch SDPA) where
    step_idx < dense_timesteps. Any batch size. `last_density`: the token-pair density of the last
    sparse call (None before one), for logging; `last_state`: that call's state (svg2_attention's:
    centroids, labels, cluster pairs, density).
    """

    def __init__(self, num_q_clusters: int = 200, num_k_clusters: int = 1000, top_p: float = 0.9,
                 min_kc_ratio: float = 0.10, first_iters: int = 50, warm_iters: int = 2, dense_timesteps: int = 0,
                 *, backend: str = "auto"):
        super().__init__()
        self.num_q_clusters = check_int("num_q_clusters", num_q_clusters, 1)
        self.num_k_clusters = check_int("num_k_clusters", num_k_clusters, 1)
        self.top_p = check_fraction("top_p", top_p)
        self.min_kc_ratio = check_fraction("min_kc_ratio", min_kc_ratio)
        self.first_iters = check_int("first_iters", first_iters)
        self.warm_iters = check_int("warm_iters", warm_iters)
        self.dense_timesteps = check_int("dense_timesteps", dense_timesteps)
        self.backend = check_choice("backend", backend, ATTENTION_BACKENDS)
        self.last_density: Optional[float] = None
        self.last_state: Optional[dict] = None
        self._cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def reset_cache(self) -> None:
        """Forget the centroids (e.g. at the start of a new video)."""
        self._cache = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step_idx: Optional[int] = None):
        if step_idx is not None and check_int("step_idx", step_idx) < self.dense_timesteps:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])
        q_init = k_init = None
        if self._cache is not None:
            cq, ck = self._cache
            if (cq.shape[:2], cq.shape[3], ck.shape[:2], cq.device) == (q.shape[:2], q.shape[3], k.shape[:2], q.device) \
                    and cq.shape[2] == min(self.num_q_clusters, q.shape[2]) \
                    and ck.shape[2] == min(self.num_k_clusters, k.shape[2]):
                q_init, k_init = cq, ck
        iters = self.first_iters if q_init is None else self.warm_iters
        out, state = svg2_attention(q, k, v, self.num_q_clusters, self.num_k_clusters, self.top_p, self.min_kc_ratio,
                                    iters, q_init, k_init, backend=self.backend)
        self._cache = (state["q_centroids"], state["k_centroids"])
        self.last_density, self.last_state = state["density"], state
        return out

    def extra_repr(self) -> str:
        return (f"num_q_clusters={self.num_q_clusters}, num_k_clusters={self.num_k_clusters}, top_p={self.top_p}, "
                f"min_kc_ratio={self.min_kc_ratio}, first_iters={self.first_iters}, warm_iters={self.warm_iters}, "
                f"dense_timesteps={self.dense_timesteps}")
