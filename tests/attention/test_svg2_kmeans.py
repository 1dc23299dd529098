"""SVG2's k-means (op svg2_kmeans, genaccel.attention.svg2.kmeans) and cluster permutation (ops
svg2_permute / svg2_unpermute, cluster_permute / cluster_unpermute) on each device: labels are the
nearest returned centroids, the objective never increases with the iterations, equality with the
float64 Lloyd reference from the same init, warm starts, empty clusters, non-finite (batch, head)s,
layouts and dtypes, the op contract (opcheck, torch.compile, meta), exact permutation round trips and
gradients, bad input. CUDA-only at the end: no host sync, CUDA against the CPU."""

import math

import pytest
import torch

from conftest import BAD, CUDA_MARKS, devices, rel_err, run_without_host_sync
from genaccel.attention.svg2 import (
    cluster_offsets,
    cluster_permute,
    cluster_unpermute,
    kmeans,
    permute_rows,
    random_init,
)
from genaccel.attention.svg2.reference import (
    inertia_reference,
    kmeans_reference,
    permute_reference,
    unpermute_reference,
)

kmeans_op = torch.ops.genaccel.svg2_kmeans
KMEANS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def blobs(gen, B, H, N, D, K, spread=0.25, dtype=torch.float32, device="cpu", with_init=False):
    """(B, H, N, D) tokens around K random centres per (batch, head), every centre with at least one
    token (N >= K). with_init: also (B, H, K, D) float32 centroids, one token of each blob, from which
    float32 and float64 Lloyd runs take the same steps (the distance gaps are far above float32
    rounding; with two centroids in one blob they would not be)."""
    centres = 3 * torch.randn(B, H, K, D, generator=gen)
    which = torch.arange(N).remainder(K)[torch.randperm(N, generator=gen)].expand(B, H, N).contiguous()
    x = centres.gather(2, which.unsqueeze(-1).expand(B, H, N, D)) + spread * torch.randn(B, H, N, D, generator=gen)
    x = x.to(dtype)
    if not with_init:
        return x.to(device)
    first = torch.stack([(which[0, 0] == k).nonzero()[0, 0] for k in range(K)])
    init = x[:, :, first].float().contiguous()
    return x.to(device), init.to(device)


def init_of(gen, x, C):
    """C distinct token rows of each (batch, head) of x as float32 centroids (seeded from gen)."""
    B, H, N, D = x.shape
    idx = torch.rand(B, H, N, generator=gen).argsort(-1)[..., :C].to(x.device)
    return x.gather(2, idx.unsqueeze(-1).expand(B, H, C, D)).float().contiguous()


def float64_distances(x, c):
    """Squared distances (B, H, N, C) in float64."""
    return torch.cdist(x.double().cpu(), c.double().cpu(), compute_mode="donot_use_mm_for_euclid_dist") ** 2


def assert_nearest(x, labels, centroids):
    """Every label is the nearest returned centroid in float64, up to float32 near-ties (the kernels
    compare ||c||^2 - 2 x.c in float32)."""
    d = float64_distances(x, centroids)
    chosen = d.gather(-1, labels.long().cpu().unsqueeze(-1)).squeeze(-1)
    best = d.min(-1).values
    scale = x.double().cpu().pow(2).sum(-1) + centroids.double().cpu().pow(2).sum(-1).max(-1, keepdim=True).values
    slack = 1e-5 * scale + 1e-6
    assert (chosen <= best + slack).all(), f"max excess {(chosen - best - slack).max().item():.3g}"
    # Where the nearest centroid is clearly nearest, it is exactly the label.
    second = d.topk(2, dim=-1, largest=False).values[..., 1] if d.shape[-1] > 1 else best + math.inf
    clear = second - best > 2 * slack
    assert torch.equal(labels.long().cpu()[clear], d.argmin(-1)[clear])


def check_outputs(x, C, labels, centroids, counts, iters_run=None):
    B, H, N, D = x.shape
    assert labels.shape == (B, H, N) and labels.dtype == torch.int32 and labels.device == x.device
    assert centroids.shape == (B, H, C, D) and centroids.dtype == torch.float32 and centroids.device == x.device
    assert counts.shape == (B, H, C) and counts.dtype == torch.int32
    assert torch.isfinite(centroids).all()
    hist = torch.zeros(B, H, C, dtype=torch.int64).scatter_add_(-1, labels.long().cpu(), torch.ones(B, H, N).long())
    assert torch.equal(counts.cpu().long(), hist)
    if iters_run is not None:
        assert iters_run.shape == (B, H) and iters_run.dtype == torch.int32


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", KMEANS_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("B, H, N, D, C", [(2, 3, 500, 32, 12), (1, 2, 131, 64, 7), (1, 1, 40, 5, 40)])
def test_matches_float64_reference(device, dtype, B, H, N, D, C, gen):
    """Same init, same steps: labels and iterations equal, centroids within float32 rounding."""
    x, init = blobs(gen, B, H, N, D, K=C, dtype=dtype, device=device, with_init=True)
    labels, centroids, counts, iters_run = kmeans_op(x, init, 30, 1e-4)
    check_outputs(x, C, labels, centroids, counts, iters_run)
    ref_labels, ref_centroids, ref_counts, ref_iters = kmeans_reference(x.cpu(), init.cpu(), 30, 1e-4)
    assert torch.equal(labels.cpu(), ref_labels)
    assert torch.equal(counts.cpu(), ref_counts)
    assert torch.equal(iters_run.cpu(), ref_iters)
    assert rel_err(centroids.cpu(), ref_centroids) <= 1e-5
    assert_nearest(x, labels, centroids)


@pytest.mark.parametrize("device", devices())
def test_long_trajectories_match_float64_reference(device, gen):
    """Gaussian tokens in 3 dims, 6 clusters: tens of Lloyd steps (until the moves fall below 1e-5),
    taken exactly as the float64 reference takes them."""
    x = torch.randn(2, 2, 400, 3, generator=gen).to(device)
    init = init_of(gen, x, 6)
    labels, centroids, counts, iters_run = kmeans_op(x, init, 40, 1e-5)
    ref_labels, ref_centroids, ref_counts, ref_iters = kmeans_reference(x.cpu(), init.cpu(), 40, 1e-5)
    assert (ref_iters > 5).all()
    assert torch.equal(labels.cpu(), ref_labels) and torch.equal(iters_run.cpu(), ref_iters)
    assert torch.equal(counts.cpu(), ref_counts)
    assert rel_err(centroids.cpu(), ref_centroids) <= 1e-5


@pytest.mark.parametrize("device", devices())
def test_labels_nearest_on_unclustered_data(device, gen):
    """Gaussian tokens (no cluster structure, many near-ties): still every label is the nearest
    returned centroid, and counts is their histogram."""
    x = torch.randn(2, 2, 700, 48, generator=gen).to(device)
    labels, centroids, counts = kmeans(x, 33, iters=7, init=init_of(gen, x, 33))
    check_outputs(x, 33, labels, centroids, counts)
    assert_nearest(x, labels, centroids)


@pytest.mark.parametrize("device", devices())
def test_inertia_never_increases(device, gen):
    x = torch.randn(1, 3, 400, 16, generator=gen).to(device)
    init = init_of(gen, x, 20)
    previous = None
    for k in range(0, 9):
        labels, centroids, _, iters_run = kmeans_op(x, init, k, 0.0)
        assert (iters_run == k).all()
        inertia = inertia_reference(x, labels, centroids)
        if previous is not None:
            assert (inertia <= previous * (1 + 1e-6)).all(), (k, inertia, previous)
        previous = inertia


@pytest.mark.parametrize("device", devices())
def test_warm_start_from_converged_centroids(device, gen):
    # One initial centroid per blob: no near-ties, so that CUDA's float32 atomics (sums in another
    # order each run) cannot flip a label either.
    x, init = blobs(gen, 2, 2, 300, 24, K=10, spread=0.8, device=device, with_init=True)
    labels, centroids, counts, iters_run = kmeans_op(x, init, 100, 1e-6)
    assert (iters_run < 100).all(), "did not converge"
    labels2, centroids2, counts2, iters2 = kmeans_op(x, centroids, 2, 1e-4)
    assert torch.equal(labels2, labels) and torch.equal(counts2, counts)
    assert (iters2 == 1).all()
    assert rel_err(centroids2.cpu(), centroids.cpu()) <= 1e-6
    # The wrapper's warm start: the same.
    labels3, _, _ = kmeans(x, 10, iters=2, init=centroids)
    assert torch.equal(labels3, labels)


@pytest.mark.parametrize("device", devices())
def test_empty_cluster_keeps_its_centroid(device, gen):
    x = torch.randn(1, 2, 200, 8, generator=gen).to(device)
    init = init_of(gen, x, 6)
    init[:, :, 3] = 1e3  # nobody's nearest
    labels, centroids, counts, _ = kmeans_op(x, init, 10, 1e-4)
    assert (counts[:, :, 3] == 0).all() and not (labels == 3).any()
    assert torch.equal(centroids[:, :, 3], init[:, :, 3])
    assert torch.isfinite(centroids).all()
    check_outputs(x, 6, labels, centroids, counts)


@pytest.mark.parametrize("device", devices())
def test_duplicate_centroids_tie_to_the_lowest_index(device, gen):
    x = torch.randn(1, 1, 64, 4, generator=gen).to(device)
    init = init_of(gen, x, 5)
    init[:, :, 4] = init[:, :, 1]
    labels, centroids, counts, _ = kmeans_op(x, init, 0, 1e-4)
    assert (counts[..., 4] == 0).all() and (counts[..., 1] > 0).all()
    ref = kmeans_reference(x.cpu(), init.cpu(), 0, 1e-4)
    assert torch.equal(labels.cpu(), ref[0])


@pytest.mark.parametrize("device", devices())
def test_non_finite_head_is_poisoned_alone(device, gen):
    x = blobs(gen, 2, 2, 100, 8, K=4, device=device)
    init = init_of(gen, x, 5)
    clean = kmeans_op(x, init, 10, 1e-4)
    bad_x = x.clone()
    bad_x[0, 1, 17, 3] = math.nan
    bad_init = init.clone()
    bad_init[1, 0, 2, 0] = math.inf
    for xs, ins, (b, h) in ((bad_x, init, (0, 1)), (x, bad_init, (1, 0))):
        labels, centroids, counts, iters_run = kmeans_op(xs, ins, 10, 1e-4)
        assert (labels[b, h] == -1).all() and torch.isnan(centroids[b, h]).all()
        assert (counts[b, h] == 0).all() and iters_run[b, h] == 0
        keep = torch.ones(2, 2, dtype=torch.bool)
        keep[b, h] = False
        keep = keep.to(device)
        for got, want in zip((labels, counts, iters_run), clean[::2] + clean[3:]):
            assert torch.equal(got[keep], want[keep])
        # CUDA's float32 atomics sum in another order on each run: the centroids agree to rounding.
        assert rel_err(centroids[keep].cpu(), clean[1][keep].cpu()) <= (0 if device == "cpu" else 1e-6)
        ref = kmeans_reference(xs.cpu(), ins.cpu(), 10, 1e-4)
        assert torch.equal(labels.cpu(), ref[0]) and torch.equal(counts.cpu(), ref[2])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_non_contiguous_x_and_init(device, layout, gen):
    B, H, N, D, C = 2, 3, 150, 16, 9
    base, init = blobs(gen, B, H, N, D, K=C, with_init=True)
    if layout == "transposed":
        x = base.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "sliced":
        x = torch.stack([base, torch.zeros_like(base)], -1)[..., 0]
    else:
        base = base[:1].expand(B, H, N, D).contiguous()
        x = base[:1].expand(B, H, N, D)
        init = init[:1].expand(B, H, C, D).contiguous()
    x, base, init = x.to(device), base.to(device), init.to(device)
    want = kmeans_op(base, init, 10, 1e-4)
    got = kmeans_op(x, init.transpose(-1, -2).contiguous().transpose(-1, -2), 10, 1e-4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert rel_err(got[1].cpu(), want[1].cpu()) <= 1e-6


def test_wrapper_random_init(gen):
    x = torch.randn(2, 2, 50, 6, generator=gen)
    init1, init2 = random_init(x, 50, seed=5), random_init(x, 50, seed=5)
    assert torch.equal(init1, init2)
    # without replacement: all N distinct tokens when num_clusters == N
    assert torch.equal(init1.sort(2).values, x.sort(2).values)
    a = kmeans(x, 7, iters=5, seed=11)
    b = kmeans(x, 7, iters=5, seed=11)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    labels, centroids, counts = kmeans(x.bfloat16(), 7, iters=5)
    check_outputs(x, 7, labels, centroids, counts)


def test_num_clusters_refused():
    x = torch.randn(1, 2, 10, 4)
    for bad in (0, -1, 11, 2.0, True):
        with pytest.raises(ValueError, match="num_clusters"):
            kmeans(x, bad)
    with pytest.raises(RuntimeError, match="init_centroids.*1 to N"):
        kmeans_op(x, torch.randn(1, 2, 11, 4), 5, 1e-4)
    with pytest.raises(RuntimeError, match="init_centroids.*1 to N"):
        kmeans_op(x, torch.randn(1, 2, 0, 4), 5, 1e-4)


def test_bad_input_names_the_argument():
    x = torch.randn(1, 2, 10, 4)
    init = torch.randn(1, 2, 3, 4)
    cases = [
        (lambda: kmeans(x[0], 3), ValueError, r"\bx\b"),
        (lambda: kmeans(x.double(), 3), ValueError, r"\bx\b"),
        (lambda: kmeans(x, 3, init=init.double()), ValueError, r"\binit\b"),
        (lambda: kmeans(x, 3, init=init[:, :1]), ValueError, r"\binit\b"),
        (lambda: kmeans(x, 2, init=init), ValueError, r"\binit\b"),
        (lambda: kmeans(x, 3, iters=-1), ValueError, r"\biters\b"),
        (lambda: kmeans(x, 3, tol="0.1"), ValueError, r"\btol\b"),
        (lambda: kmeans(x, 3, seed=1.5), ValueError, r"\bseed\b"),
        (lambda: kmeans(x, 3, init=init, seed=1), ValueError, r"\bseed\b"),
        (lambda: kmeans_op(x.int(), init, 5, 1e-4), RuntimeError, r"\bx\b"),
        (lambda: kmeans_op(x, init.half(), 5, 1e-4), RuntimeError, r"init_centroids"),
        (lambda: kmeans_op(x, init[..., :3], 5, 1e-4), RuntimeError, r"init_centroids"),
        (lambda: kmeans_op(x, init.to("meta"), 5, 1e-4), RuntimeError, r"init_centroids.*device"),
        (lambda: kmeans_op(x, init, -2, 1e-4), RuntimeError, r"\biters\b"),
        (lambda: kmeans_op(x, init, 5, math.nan), RuntimeError, r"\btol\b"),
        (lambda: kmeans_op(x, init, 5, 1e39), RuntimeError, r"\btol\b"),
        (lambda: kmeans_op(torch.randn(1, 1, 4, 513), torch.randn(1, 1, 2, 513), 5, 1e-4), RuntimeError, r"head dim"),
        (lambda: cluster_permute(x, torch.zeros(1, 2, 9, dtype=torch.int32), 3), ValueError, r"\blabels\b"),
        (lambda: cluster_permute(x, torch.zeros(1, 2, 10), 3), ValueError, r"\blabels\b"),
        (lambda: cluster_permute(x, torch.zeros(1, 2, 10, dtype=torch.int32), 0), ValueError, r"num_clusters"),
        (lambda: cluster_permute(x, torch.zeros(1, 2, 10, dtype=torch.int32), 11), ValueError, r"num_clusters"),
    ]
    for fn, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            fn()


def test_tol_semantics(gen):
    """tol <= 0: no early stop; a huge tol: one update."""
    x = blobs(gen, 1, 2, 100, 4, K=3)
    init = init_of(gen, x, 3)
    assert (kmeans_op(x, init, 12, 0.0)[3] == 12).all()
    assert (kmeans_op(x, init, 12, -1.0)[3] == 12).all()
    assert (kmeans_op(x, init, 12, 1e30)[3] == 1).all()
    labels, centroids, counts, iters = kmeans_op(x, init, 0, 1e-4)
    assert (iters == 0).all() and torch.equal(centroids, init)
    assert_nearest(x, labels, centroids)


def test_opcheck_kmeans(gen):
    x = blobs(gen, 1, 2, 60, 8, K=3)
    init = init_of(gen, x, 4)
    torch.library.opcheck(kmeans_op.default, (x, init, 5, 1e-4))
    torch.library.opcheck(kmeans_op.default, (x.bfloat16(), init, 3, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_permute(dtype, gen):
    x = torch.randn(2, 2, 33, 8, generator=gen).to(dtype)
    perm = torch.rand(2, 2, 33, generator=gen).argsort(-1).int()
    for op in (torch.ops.genaccel.svg2_permute.default, torch.ops.genaccel.svg2_unpermute.default):
        torch.library.opcheck(op, (x, perm))
        torch.library.opcheck(op, (x.requires_grad_(dtype != torch.bfloat16), perm, False))
        x = x.detach()


def test_meta_shapes():
    x = torch.empty(2, 3, 100, 16, device="meta")
    init = torch.empty(2, 3, 7, 16, device="meta")
    labels, centroids, counts, iters_run = kmeans_op(x, init, 5, 1e-4)
    assert labels.shape == (2, 3, 100) and labels.dtype == torch.int32
    assert centroids.shape == (2, 3, 7, 16) and centroids.dtype == torch.float32
    assert counts.shape == (2, 3, 7) and iters_run.shape == (2, 3)
    perm = torch.empty(2, 3, 100, dtype=torch.int32, device="meta")
    assert torch.ops.genaccel.svg2_permute(x, perm).shape == x.shape
    with pytest.raises(RuntimeError, match="init_centroids"):
        kmeans_op(x, torch.empty(2, 3, 101, 16, device="meta"), 5, 1e-4)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_permute_round_trip_exact(device, dtype, gen):
    B, H, N, D = 2, 3, 77, 20
    x = torch.randn(B, H, N, D, generator=gen).to(dtype).to(device)
    perm = torch.rand(B, H, N, generator=gen).argsort(-1).int().to(device)
    y = permute_rows(x, perm)
    assert y.dtype == dtype and torch.equal(y.cpu().double(), permute_reference(x.cpu(), perm.cpu()))
    back = cluster_unpermute(y, perm, check_perm=True)
    assert torch.equal(back, x)
    assert torch.equal(cluster_unpermute(x, perm).cpu().double(), unpermute_reference(x.cpu(), perm.cpu()))
    # non-contiguous input: the same rows
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(permute_rows(xt, perm), y)


@pytest.mark.parametrize("device", devices())
def test_cluster_permute_segments(device, gen):
    B, H, N, D, C = 2, 2, 300, 8, 11
    x = blobs(gen, B, H, N, D, K=6, device=device)
    labels, centroids, counts = kmeans(x, C, iters=10, init=init_of(gen, x, C))
    xp, perm, offsets = cluster_permute(x, labels, C)
    assert perm.dtype == torch.int32 and offsets.shape == (B, H, C + 1) and offsets.dtype == torch.int32
    assert torch.equal(offsets[..., 1:] - offsets[..., :-1], counts)
    assert (offsets[..., 0] == 0).all() and (offsets[..., -1] == N).all()
    sorted_labels = labels.gather(-1, perm.long())
    for b in range(B):
        for h in range(H):
            for c in range(C):
                s, e = offsets[b, h, c].item(), offsets[b, h, c + 1].item()
                assert (sorted_labels[b, h, s:e] == c).all()
                seg = perm[b, h, s:e]
                assert (seg[1:] > seg[:-1]).all()  # stable: tokens keep their order in a cluster
    assert torch.equal(xp, x.gather(2, perm.long().unsqueeze(-1).expand_as(x)))
    assert torch.equal(cluster_unpermute(xp, perm), x)


def test_cluster_offsets_ignore_poisoned_labels():
    labels = torch.tensor([[[2, -1, 0, 2, -1]]], dtype=torch.int32)
    x = torch.arange(5.0).reshape(1, 1, 5, 1)
    xp, perm, offsets = cluster_permute(x, labels, 3)
    assert offsets.tolist() == [[[0, 1, 1, 3]]]
    assert perm.tolist() == [[[2, 0, 3, 1, 4]]]
    assert torch.equal(cluster_offsets(labels, 3), offsets)


def test_permute_gradcheck(gen):
    x = torch.randn(1, 2, 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    perm = torch.rand(1, 2, 9, generator=gen).argsort(-1).int()
    assert torch.autograd.gradcheck(lambda t: permute_rows(t, perm), (x,))
    assert torch.autograd.gradcheck(lambda t: cluster_unpermute(t, perm), (x,))
    assert torch.autograd.gradgradcheck(lambda t: permute_rows(t, perm), (x,))
    labels = torch.randint(0, 3, (1, 2, 9), generator=gen)
    assert torch.autograd.gradcheck(lambda t: cluster_permute(t, labels, 3)[0], (x,))


@pytest.mark.parametrize("device", devices())
def test_attention_through_the_permutation_is_dense_attention(device, gen):
    """SVG2's identity: attention on (Q[pi_q], K[pi_k], V[pi_k]) unpermuted by pi_q is dense attention
    (full selection), in value and in the gradients of q, k, v."""
    B, H, N, D = 1, 2, 96, 16
    q, k, v = (torch.randn(B, H, N, D, generator=gen, dtype=torch.float64).to(device).requires_grad_()
               for _ in range(3))
    lq = kmeans(q.detach().float(), 5, iters=5, init=init_of(gen, q.detach(), 5))[0]
    lk = kmeans(k.detach().float(), 7, iters=5, init=init_of(gen, k.detach(), 7))[0]
    qp, pq, _ = cluster_permute(q, lq, 5)
    kp, pk, _ = cluster_permute(k, lk, 7)
    vp = permute_rows(v, pk)
    out = cluster_unpermute(torch.nn.functional.scaled_dot_product_attention(qp, kp, vp), pq)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_perm_values_refused():
    x = torch.randn(1, 2, 6, 3)
    good = torch.arange(6, dtype=torch.int32).expand(1, 2, 6).contiguous()
    bad_range = good.clone()
    bad_range[0, 1, 2] = 6
    duplicate = good.clone()
    duplicate[0, 0, 4] = 1
    for op in (torch.ops.genaccel.svg2_permute, torch.ops.genaccel.svg2_unpermute):
        with pytest.raises(RuntimeError, match=r"perm\[0, 1\].*outside"):
            op(x, bad_range)
        with pytest.raises(RuntimeError, match=r"perm\[0, 0\] repeats the entry 1"):
            op(x, duplicate)
        with pytest.raises(RuntimeError, match=r"\bperm\b"):
            op(x, good.long())
        with pytest.raises(RuntimeError, match=r"\bperm\b"):
            op(x, good[..., :5])
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        torch.ops.genaccel.svg2_permute(x.int(), good)
    with pytest.raises(RuntimeError, match=r"\by\b"):
        torch.ops.genaccel.svg2_unpermute(x.bool(), good)


def test_empty_inputs():
    x = torch.randn(0, 2, 10, 4)
    out = kmeans_op(x, torch.randn(0, 2, 3, 4), 5, 1e-4)
    assert out[0].shape == (0, 2, 10) and out[1].shape == (0, 2, 3, 4)
    labels, centroids, counts, _ = kmeans_op(torch.randn(1, 1, 10, 0), torch.randn(1, 1, 3, 0), 5, 1e-4)
    assert (labels == 0).all() and counts.tolist() == [[[10, 0, 0]]]
    perm = torch.empty(1, 2, 0, dtype=torch.int32)
    assert torch.ops.genaccel.svg2_permute(torch.randn(1, 2, 0, 4), perm).shape == (1, 2, 0, 4)


def test_compile_fullgraph(gen):
    x = blobs(gen, 1, 2, 64, 8, K=3)
    init = init_of(gen, x, 4)

    def step(x, init):
        labels, centroids, counts = kmeans(x, 4, iters=3, init=init)
        xp, perm, offsets = cluster_permute(x, labels, 4)
        return cluster_unpermute(xp * 2, perm), centroids, offsets

    got = torch.compile(step, fullgraph=True)(x, init)
    want = step(x, init)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# -- CUDA only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", KMEANS_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.cuda
@CUDA_MARKS[1]
def test_cuda_matches_cpu(dtype, gen):
    x, init = blobs(gen, 2, 4, 1000, 64, K=32, dtype=dtype, with_init=True)
    cpu = kmeans_op(x, init, 20, 1e-4)
    cuda = kmeans_op(x.cuda(), init.cuda(), 20, 1e-4)
    assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[2].cpu(), cpu[2])
    assert torch.equal(cuda[3].cpu(), cpu[3])
    assert rel_err(cuda[1].cpu(), cpu[1]) <= 1e-5


@pytest.mark.cuda
@CUDA_MARKS[1]
def test_cuda_kmeans_and_permute_do_not_sync(gen):
    x = blobs(gen, 1, 4, 2000, 64, K=10, device="cuda", dtype=torch.bfloat16)
    init = init_of(gen, x, 16)

    def step():
        labels, centroids, counts = kmeans(x, 16, iters=10, init=init)
        xp, perm, offsets = cluster_permute(x, labels, 16)
        return cluster_unpermute(xp, perm)

    assert torch.equal(run_without_host_sync(step), x)
