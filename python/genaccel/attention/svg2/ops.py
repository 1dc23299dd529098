"""SVG2's k-means and cluster permutation (Sparse VideoGen2, arXiv 2505.18875).

`kmeans` clusters the N tokens of every (batch, head) of x (B, H, N, D) independently (Euclidean Lloyd
iterations, op svg2_kmeans); `cluster_permute` reorders the tokens so that every cluster is one
contiguous segment (op svg2_permute, a gather of whole D-rows) and `cluster_unpermute` puts them back
(op svg2_unpermute, the scatter). The permutation ops are each other's gradient, so attention computed
on the permuted q, k, v is differentiable in q, k, v.

Rules (the same in reference.py):
- assignment: the nearest centroid in Euclidean distance, the lowest index among equal distances;
- update: each centroid becomes the mean of its tokens; an empty cluster keeps its centroid;
- early stop: a (batch, head) stops after the first update whose largest centroid move (L2 norm of the
  change) is below tol (tol <= 0: never early);
- the returned labels come from a final assignment against the returned centroids, and counts is their
  histogram, so every label is the nearest returned centroid and counts.sum(-1) == N;
- non-finite input: a (batch, head) whose x or init holds a NaN or an infinity gets labels -1, centroids
  NaN and counts 0 (the other (batch, head)s are computed as usual); no error, no host sync.
- random init (init=None): num_clusters distinct token rows of each (batch, head), drawn uniformly
  WITHOUT replacement (the original draws with replacement, which gives duplicate centroids, hence
  clusters that stay empty, once C^2 / 2N is not small); seed=None draws from torch's global generator,
  an int seed from a fresh torch.Generator on x's device.
"""

from typing import Optional, Tuple

import torch

from ..._utils import check_int

_KMEANS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_x(x, name="x"):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (B, H, N, D) tensor, got {getattr(x, 'shape', type(x).__name__)}")


def random_init(x: torch.Tensor, num_clusters: int, seed: Optional[int] = None) -> torch.Tensor:
    """num_clusters distinct token rows of every (batch, head) of x (B, H, N, D), uniformly without
    replacement, as float32 (B, H, num_clusters, D) centroids."""
    B, H, N, D = x.shape
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(seed)
    keys = torch.rand(B, H, N, generator=gen, device=x.device)
    idx = keys.argsort(dim=-1)[..., :num_clusters]
    return x.gather(2, idx.unsqueeze(-1).expand(B, H, num_clusters, D)).float()


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iters: int = 50,
    init: Optional[torch.Tensor] = None,
    tol: float = 1e-4,
    seed: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means of the N tokens of each (batch, head) of x (B, H, N, D), float32/bfloat16/float16 (computed
    in float32), into num_clusters clusters (1 <= num_clusters <= N).

    At most `iters` Lloyd updates, from `init` (float32 (B, H, num_clusters, D), e.g. the centroids of an
    earlier call: SVG2's warm start) or from random distinct tokens (init=None; `seed` makes them
    reproducible); early stop per (batch, head) once the largest centroid move is below `tol`. Returns
    labels (B, H, N) int32, centroids (B, H, num_clusters, D) float32 and counts (B, H, num_clusters)
    int32; see the module docstring for the exact rules (ties, empty clusters, non-finite input).
    """
    _check_x(x)
    if x.dtype not in _KMEANS_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    B, H, N, D = x.shape
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or not 1 <= num_clusters <= N:
        raise ValueError(f"num_clusters must be an int in [1, N = {N}] (N: the tokens per (batch, head)), "
                         f"got {num_clusters!r}")
    check_int("iters", iters)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise ValueError(f"tol must be a real number, got {tol!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be None or an int, got {seed!r}")
    if init is None:
        init = random_init(x, num_clusters, seed)
    else:
        if seed is not None:
            raise ValueError("seed is for the random init: pass either init or seed, not both")
        want = (B, H, num_clusters, D)
        if (not isinstance(init, torch.Tensor) or init.dtype != torch.float32 or tuple(init.shape) != want
                or init.device != x.device):
            raise ValueError(f"init must be a float32 tensor of shape (B, H, num_clusters, D) = {want} on the "
                             f"device of x ({x.device}), got {getattr(init, 'dtype', type(init).__name__)} "
                             f"{tuple(getattr(init, 'shape', ()))} on {getattr(init, 'device', None)}")
    labels, centroids, counts, _ = torch.ops.genaccel.svg2_kmeans(x, init, iters, float(tol))
    return labels, centroids, counts


def cluster_offsets(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """int32 (B, H, num_clusters + 1) segment offsets of the clusters in cluster_permute's order:
    cluster c holds positions offsets[..., c] to offsets[..., c + 1]; labels outside [0, num_clusters)
    (the -1 of a non-finite (batch, head)) count in no cluster."""
    B, H, _ = labels.shape
    valid = (labels >= 0) & (labels < num_clusters)
    counts = torch.zeros(B, H, num_clusters, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(-1, torch.where(valid, labels, 0).long(), valid.to(torch.int32))
    return torch.nn.functional.pad(counts.cumsum(-1, dtype=torch.int32), (1, 0))


def cluster_permute(
    x: torch.Tensor, labels: torch.Tensor, num_clusters: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, H, N, D) with the tokens of each (batch, head) sorted by cluster: (x_perm, perm,
    cluster_offsets). perm (B, H, N) int32 is the stable argsort of labels (tokens keep their order
    within a cluster), x_perm[b, h, i] = x[b, h, perm[b, h, i]], and cluster c is the segment
    cluster_offsets[b, h, c] : cluster_offsets[b, h, c + 1] (int32 (B, H, num_clusters + 1)). Labels
    outside [0, num_clusters) sort after every cluster, past cluster_offsets[..., -1]. num_clusters in
    [1, max(N, 1)] (clusters beyond those of the labels are empty segments). V reuses K's perm:
    cluster_permute(k, ...) then permute_rows(v, perm). Differentiable in x."""
    _check_x(x)
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 3 or tuple(labels.shape) != tuple(x.shape[:3])
            or labels.dtype not in (torch.int32, torch.int64) or labels.device != x.device):
        raise ValueError(f"labels must be an int32 or int64 tensor of shape (B, H, N) = {tuple(x.shape[:3])} on the "
                         f"device of x ({x.device}), got {getattr(labels, 'dtype', type(labels).__name__)} "
                         f"{tuple(getattr(labels, 'shape', ()))} on {getattr(labels, 'device', None)}")
    N = x.shape[2]
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or not 1 <= num_clusters <= max(N, 1):
        raise ValueError(f"num_clusters must be an int in [1, max(N, 1) = {max(N, 1)}] (N: the tokens per "
                         f"(batch, head)), got {num_clusters!r}")
    keys = torch.where((labels >= 0) & (labels < num_clusters), labels, num_clusters)
    perm = torch.argsort(keys, dim=-1, stable=True).to(torch.int32)
    offsets = cluster_offsets(labels, num_clusters)
    # perm is a permutation by construction: no check (and on CUDA no host sync).
    return torch.ops.genaccel.svg2_permute(x, perm, check_perm=False), perm, offsets


def permute_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x[b, h, perm[b, h, i]] for every i: op svg2_permute (perm checked; one host sync on CUDA)."""
    return torch.ops.genaccel.svg2_permute(x, perm)


def cluster_unpermute(y_perm: torch.Tensor, perm: torch.Tensor, check_perm: bool = False) -> torch.Tensor:
    """The inverse of cluster_permute: out[b, h, perm[b, h, i]] = y_perm[b, h, i] (op svg2_unpermute).
    perm as cluster_permute returns it is trusted (check_perm=True checks it; one host sync on CUDA;
    the CPU always checks). Differentiable in y_perm."""
    return torch.ops.genaccel.svg2_unpermute(y_perm, perm, check_perm=check_perm)


def _setup_perm(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _permute_backward(ctx, grad):
    (perm,) = ctx.saved_tensors
    return torch.ops.genaccel.svg2_unpermute(grad.contiguous(), perm, check_perm=False), None, None


def _unpermute_backward(ctx, grad):
    (perm,) = ctx.saved_tensors
    return torch.ops.genaccel.svg2_permute(grad.contiguous(), perm, check_perm=False), None, None


torch.library.register_autograd("genaccel::svg2_permute", _permute_backward, setup_context=_setup_perm)
torch.library.register_autograd("genaccel::svg2_unpermute", _unpermute_backward, setup_context=_setup_perm)
