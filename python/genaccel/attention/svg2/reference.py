"""float64 specification of SVG2's k-means, cluster permutation, cluster-pair selection and attention
(never called by the fast path).

The rules are those of ops.py's docstring: nearest centroid with ties to the lowest index, means with
empty clusters kept, early stop after the first update whose largest centroid move is below tol, labels
and counts from a final assignment against the returned centroids, and a (batch, head) with a NaN or an
infinity in x or init gets labels -1, centroids NaN, counts 0, iters_run 0."""

import torch


def assign_reference(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """int64 labels (N,) of the rows of x (N, D) by the nearest row of centroids (C, D), in float64 by
    differences (not the expanded norm), ties to the lowest index (torch.argmin's first minimum)."""
    x, c = x.double(), centroids.double()
    dist = torch.cdist(x.unsqueeze(0), c.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    if dist.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.int64)
    return dist.argmin(dim=1)


def kmeans_head_reference(x: torch.Tensor, init: torch.Tensor, iters: int, tol: float):
    """One (batch, head): (labels int64 (N,), centroids float64 (C, D), counts int64 (C,), iters_run)."""
    x, c = x.double(), init.double().clone()
    C, D = c.shape
    if not (torch.isfinite(x).all() and torch.isfinite(c).all()):
        return (torch.full((x.shape[0],), -1, dtype=torch.int64), torch.full_like(c, float("nan")),
                torch.zeros(C, dtype=torch.int64), 0)
    run = 0
    for it in range(iters):
        labels = assign_reference(x, c)
        counts = torch.bincount(labels, minlength=C)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        new = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), c)
        shift = (new - c).norm(dim=1).max().item() if C > 0 else 0.0
        c = new
        run = it + 1
        if shift < tol:
            break
    labels = assign_reference(x, c)
    return labels, c, torch.bincount(labels, minlength=C), run


def kmeans_reference(x: torch.Tensor, init: torch.Tensor, iters: int, tol: float):
    """Op svg2_kmeans' specification for x (B, H, N, D) and init (B, H, C, D): labels int32 (B, H, N),
    centroids float64 (B, H, C, D), counts int32 (B, H, C), iters_run int32 (B, H)."""
    B, H, N, D = x.shape
    C = init.shape[2]
    labels = torch.empty(B, H, N, dtype=torch.int32)
    cents = torch.empty(B, H, C, D, dtype=torch.float64)
    counts = torch.empty(B, H, C, dtype=torch.int32)
    runs = torch.empty(B, H, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            lab, cen, cnt, run = kmeans_head_reference(x[b, h].cpu(), init[b, h].cpu(), iters, tol)
            labels[b, h], cents[b, h], counts[b, h], runs[b, h] = lab, cen, cnt, run
    return labels, cents, counts, runs


def inertia_reference(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """float64 (B, H) sum of squared distances of every token to its labelled centroid."""
    x, c = x.double().cpu(), centroids.double().cpu()
    idx = labels.long().cpu().unsqueeze(-1).expand(*labels.shape, x.shape[-1])
    return ((x - c.gather(2, idx)) ** 2).sum((-1, -2))


def permute_reference(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x[b, h, perm[b, h, i]] in float64."""
    idx = perm.long().cpu().unsqueeze(-1).expand(*perm.shape, x.shape[-1])
    return x.double().cpu().gather(2, idx)


def unpermute_reference(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """out[b, h, perm[b, h, i]] = y[b, h, i] in float64."""
    idx = perm.long().cpu().unsqueeze(-1).expand(*perm.shape, y.shape[-1])
    return torch.zeros(y.shape, dtype=torch.float64).scatter_(2, idx, y.double().cpu())


def critical_cluster_pairs_reference(q_centroids, k_centroids, k_counts, top_p, min_kc_ratio, scale=None):
    """bool (B, H, QC, KC) and the float64 mass (B, H, QC, KC), one query cluster at a time: the key
    clusters in descending size-weighted softmax mass, kept while the mass kept before each is below
    top_p, plus the top max(1, floor(min_kc_ratio * KC)); top_p = 1 keeps all."""
    B, H, QC, D = q_centroids.shape
    group = H // k_centroids.shape[1]
    KC = k_centroids.shape[2]
    scale = D ** -0.5 if scale is None else scale
    pairs = torch.zeros(B, H, QC, KC, dtype=torch.bool)
    mass = torch.zeros(B, H, QC, KC, dtype=torch.float64)
    least = max(1, int(min_kc_ratio * KC))
    for b in range(B):
        for h in range(H):
            ck, sizes = k_centroids[b, h // group].double(), k_counts[b, h // group].double()
            for a in range(QC):
                logits = ck @ q_centroids[b, h, a].double() * scale
                w = sizes * torch.exp(logits - logits.max())
                p = w / w.sum()
                mass[b, h, a] = p
                kept = 0.0
                for rank, c in enumerate(sorted(range(KC), key=lambda c: -float(p[c]))):
                    if kept < top_p or rank < least or top_p >= 1.0:
                        pairs[b, h, a, c] = True
                    kept += float(p[c])
    return pairs, mass


def svg2_attention_reference(q, k, v, q_labels, k_labels, pairs):
    """float64 (B, H, N, D): attention in the original token order in which query i attends to key j
    exactly when pairs[label_q(i), label_k(j)]; a query with no key gets 0."""
    from ..block_sparse.reference import masked_matmul

    q, k, v = q.double(), k.double(), v.double()
    B, H, N, D = q.shape
    group = H // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    kl = k_labels.long().repeat_interleave(group, dim=1)
    rows = torch.gather(pairs, 2, q_labels.long()[..., None].expand(B, H, N, pairs.shape[-1]))
    mask = torch.gather(rows, 3, kl[:, :, None, :].expand(B, H, N, k.shape[2]))
    logits = (q @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - lse.clamp_min(torch.finfo(torch.float64).min))
    return masked_matmul(probs, mask, v)
