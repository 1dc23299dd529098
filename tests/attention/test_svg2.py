"""SVG2 attention: the cluster-pair selection against its float64 reference and its properties, the
whole pipeline (k-means, permutation, variable-block attention, inverse permutation) against masked
dense attention in the original order, forward and gradients, and SVG2Attention's centroid cache and
gating. The k-means and permutation ops have their own file (test_svg2_kmeans.py)."""

import pytest
import torch

from conftest import BAD, CUDA, RTOL, rel_err
from genaccel.attention.svg2.module import SVG2Attention, svg2_attention
from genaccel.attention.svg2.reference import critical_cluster_pairs_reference, svg2_attention_reference
from genaccel.attention.svg2.select import critical_cluster_pairs, pair_density


def centroids(gen, B=2, H=4, Hkv=2, QC=12, KC=40, D=16):
    qc = torch.randn(B, H, QC, D, generator=gen) * 2
    kc = torch.randn(B, Hkv, KC, D, generator=gen) * 2
    counts = torch.randint(0, 30, (B, Hkv, KC), generator=gen, dtype=torch.int32)
    counts[..., 0] = 5  # at least one non-empty cluster per head
    return qc, kc, counts


@pytest.mark.parametrize("top_p,ratio", [(0.9, 0.1), (0.5, 0.0), (0.99, 0.3), (0.0, 0.0), (1.0, 0.05)])
def test_pairs_equal_reference(top_p, ratio):
    gen = torch.Generator().manual_seed(0)
    qc, kc, counts = centroids(gen)
    pairs = critical_cluster_pairs(qc, kc, counts, top_p, ratio)
    ref, mass = critical_cluster_pairs_reference(qc, kc, counts, top_p, ratio)
    # A cluster whose mass ranked before it is within float32 rounding of top_p may go either way.
    ranked, order = mass.sort(-1, descending=True)
    above = torch.nn.functional.pad(ranked.cumsum(-1)[..., :-1], (1, 0))
    near = torch.zeros_like(pairs).scatter_(-1, order, (above - top_p).abs() < 1e-5)
    assert pairs.dtype == torch.bool and pairs.shape == ref.shape
    assert torch.equal(pairs & ~near, ref & ~near)
    assert (pairs != ref).float().mean() < 0.01


def test_pairs_properties():
    gen = torch.Generator().manual_seed(1)
    qc, kc, counts = centroids(gen)
    KC = kc.shape[2]
    _, mass = critical_cluster_pairs_reference(qc, kc, counts, 0.5, 0.0)
    previous = None
    for top_p in (0.0, 0.2, 0.5, 0.8, 0.95):
        pairs = critical_cluster_pairs(qc, kc, counts, top_p, 0.0)
        assert ((mass * pairs).sum(-1) >= top_p - 1e-5).all()  # the kept mass reaches p
        assert pairs.gather(-1, mass.argmax(-1, keepdim=True)).all()  # the top-1 is always kept
        if previous is not None:
            assert (pairs | ~previous).all()  # monotone in p
        previous = pairs
    for ratio in (0.1, 0.25, 0.5):
        pairs = critical_cluster_pairs(qc, kc, counts, 0.0, ratio)
        assert (pairs.sum(-1) >= int(ratio * KC)).all()
    assert critical_cluster_pairs(qc, kc, counts, 0.0, 1.0).all()


def test_pair_density():
    pairs = torch.tensor([[[[True, False], [False, True]]]])
    q_counts = torch.tensor([[[3, 1]]], dtype=torch.int32)
    k_counts = torch.tensor([[[2, 2]]], dtype=torch.int32)
    assert pair_density(pairs, q_counts, k_counts) == pytest.approx((3 * 2 + 1 * 2) / (4 * 4))


def test_pairs_bad_input():
    gen = torch.Generator().manual_seed(2)
    qc, kc, counts = centroids(gen)
    with pytest.raises(BAD, match="top_p"):
        critical_cluster_pairs(qc, kc, counts, 1.5)
    with pytest.raises(BAD, match="min_kc_ratio"):
        critical_cluster_pairs(qc, kc, counts, 0.9, -0.1)
    with pytest.raises(BAD, match="k_counts"):
        critical_cluster_pairs(qc, kc, counts[..., :-1])
    with pytest.raises(BAD, match="k_centroids"):
        critical_cluster_pairs(qc, kc[:, :1].expand(2, 3, -1, -1), counts)


def qkv(gen, B=2, H=4, Hkv=2, N=300, D=32, dtype=torch.float32):
    # Tokens around a few centres, as in video latents, so that clusters mean something.
    centres = torch.randn(6, D, generator=gen) * 2
    def make(h):
        ids = torch.randint(0, 6, (B, h, N), generator=gen)
        return (centres[ids] + 0.7 * torch.randn(B, h, N, D, generator=gen)).to(dtype)
    return make(H), make(Hkv), torch.randn(B, Hkv, N, D, generator=gen).to(dtype)


@pytest.mark.parametrize("top_p,ratio", [(0.9, 0.1), (0.6, 0.0)])
def test_attention_equals_masked_dense_reference(top_p, ratio):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (t.requires_grad_() for t in qkv(gen))
    out, state = svg2_attention(q, k, v, 10, 25, top_p, ratio, iters=20, seed=0)
    assert 0.05 < state["density"] < 0.95  # really sparse, not empty
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = svg2_attention_reference(q64, k64, v64, state["q_labels"], state["k_labels"], state["pairs"])
    assert rel_err(out, ref) <= RTOL[torch.float32]
    dout = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for name, g, r in zip("qkv", grads, torch.autograd.grad(ref, (q64, k64, v64), dout.double())):
        assert rel_err(g, r) <= RTOL[torch.float32], name


def test_all_clusters_is_dense_attention():
    gen = torch.Generator().manual_seed(4)
    q, k, v = qkv(gen, N=257)
    out, state = svg2_attention(q, k, v, 16, 40, 0.5, 1.0, iters=5, seed=1)
    assert state["density"] == 1.0
    dense = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), enable_gqa=True)
    assert rel_err(out, dense) <= RTOL[torch.float32]


def test_bfloat16_and_more_clusters_than_tokens():
    gen = torch.Generator().manual_seed(5)
    q, k, v = qkv(gen, B=1, N=48, dtype=torch.bfloat16)
    out, state = svg2_attention(q, k, v, 100, 1000, 0.9, 0.1, iters=5, seed=2)  # clamped to N clusters
    assert out.dtype == torch.bfloat16 and state["pairs"].shape[-2:] == (48, 48)
    ref = svg2_attention_reference(q, k, v, state["q_labels"], state["k_labels"], state["pairs"])
    assert rel_err(out, ref) <= RTOL[torch.bfloat16]


def test_module_cache_gating_and_batch_change(monkeypatch):
    import genaccel.attention.svg2.module as svg2_module

    calls = []
    real = svg2_module.kmeans

    def counting(x, num_clusters, iters, init, tol, seed):
        calls.append((iters, init is not None))
        return real(x, num_clusters, iters, init, tol, seed)

    monkeypatch.setattr(svg2_module, "kmeans", counting)
    gen = torch.Generator().manual_seed(6)
    q, k, v = qkv(gen)
    layer = SVG2Attention(num_q_clusters=10, num_k_clusters=25, first_iters=7, warm_iters=2, dense_timesteps=2)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert rel_err(layer(q, k, v, step_idx=1), dense.double()) <= RTOL[torch.float32]
    assert calls == [] and layer.last_density is None
    layer(q, k, v, step_idx=2)
    layer(q, k, v, step_idx=3)
    assert calls == [(7, False)] * 2 + [(2, True)] * 2
    assert 0 < layer.last_density <= 1
    layer(q[:1], k[:1], v[:1])  # another batch size: a fresh start, any batch works
    assert calls[-2:] == [(7, False)] * 2
    layer.reset_cache()
    layer(q[:1], k[:1], v[:1])
    assert calls[-2:] == [(7, False)] * 2


def test_bad_input():
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(gen)
    bad_q = q.clone()
    bad_q[1, 2, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="q holds NaN or inf"):
        svg2_attention(bad_q, k, v, 10, 25, iters=2, seed=0)
    with pytest.raises(BAD, match="num_k_clusters"):
        svg2_attention(q, k, v, 10, 0)
    with pytest.raises(BAD, match="k must be a 4-D"):
        svg2_attention(q, k[0], v)
    for name, kwargs in [("top_p", dict(top_p=2.0)), ("warm_iters", dict(warm_iters=-1)),
                         ("num_q_clusters", dict(num_q_clusters=0)), ("backend", dict(backend="x"))]:
        with pytest.raises(BAD, match=name):
            SVG2Attention(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_attention_on_cuda_equals_reference(dtype):
    gen = torch.Generator().manual_seed(8)
    q, k, v = (t.to(dtype).cuda().requires_grad_() for t in qkv(gen, D=64))
    out, state = svg2_attention(q, k, v, 10, 25, 0.9, 0.1, iters=20, seed=0)
    cpu = {n: state[n].cpu() for n in ("q_labels", "k_labels", "pairs")}
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    ref = svg2_attention_reference(q64, k64, v64, cpu["q_labels"], cpu["k_labels"], cpu["pairs"])
    assert out.dtype == dtype and rel_err(out, ref) <= RTOL[dtype]
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout.cuda())
    for name, g, r in zip("qkv", grads, torch.autograd.grad(ref, (q64, k64, v64), dout.double())):
        assert rel_err(g, r) <= 2 * RTOL[dtype], name
