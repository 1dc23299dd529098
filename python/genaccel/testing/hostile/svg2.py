"""The SVG2 ops in the hostile-input battery: ops svg2_kmeans / svg2_permute / svg2_unpermute, the
wrappers kmeans / cluster_permute / critical_cluster_pairs / svg2_attention, each checked against the float64 reference
(attention/svg2/reference.py). The k-means base is well separated clusters with one initial centroid
in each, so float32 and float64 Lloyd runs take the same steps and labels compare exactly."""

import math

import torch

from genaccel.attention.svg2 import cluster_permute, critical_cluster_pairs, kmeans, svg2_attention
from genaccel.attention.svg2.reference import (
    critical_cluster_pairs_reference,
    kmeans_reference,
    permute_reference,
    svg2_attention_reference,
    unpermute_reference,
)

from . import ERROR, RESULT, Case, OpSpec, register

B, H, N, D, C = 1, 2, 60, 8, 4


def blobs(gen, device):
    """x (B, H, N, D) float32 around C centres (every centre with N / C tokens) and init (B, H, C, D),
    one token of each centre."""
    centres = 3 * torch.randn(B, H, C, D, generator=gen)
    which = torch.arange(N).remainder(C)
    x = centres[:, :, which] + 0.25 * torch.randn(B, H, N, D, generator=gen)
    return x.to(device), x[:, :, :C].contiguous().to(device)


# -- op svg2_kmeans ------------------------------------------------------------------------------------


def kmeans_base(gen, device):
    x, init = blobs(gen, device)
    return dict(x=x, init_centroids=init, iters=10, tol=1e-4)


def kmeans_op_reference(a):
    return kmeans_reference(a["x"], a["init_centroids"], a["iters"], a["tol"])


def kmeans_extra(spec):
    def far_centroid(a):  # an empty cluster from the start: keeps its centroid
        init = a["init_centroids"].clone()
        init[:, :, 1] = 100.0
        return {**a, "init_centroids": init}

    def duplicate_centroid(a):  # exact ties: the lowest index takes them all
        init = a["init_centroids"].clone()
        init[:, :, 3] = init[:, :, 0]
        return {**a, "init_centroids": init}

    return [
        Case(spec.name, "empty_cluster", "family", far_centroid, RESULT),
        Case(spec.name, "duplicate_centroids", "family", duplicate_centroid, RESULT),
        Case(spec.name, "one_cluster", "family", lambda a: {**a, "init_centroids": a["init_centroids"][:, :, :1]},
             RESULT),
        Case(spec.name, "every_token_a_cluster", "family",
             lambda a: {**a, "init_centroids": a["x"].float().contiguous()}, RESULT),
        Case(spec.name, "more_clusters_than_tokens", "family",
             lambda a: {**a, "init_centroids": torch.cat([a["x"], a["x"][:, :, :1]], 2).float()}, ERROR,
             r"init_centroids"),
        Case(spec.name, "all_nan", "family", lambda a: {**a, "x": torch.full_like(a["x"], math.nan)}, RESULT),
        Case(spec.name, "bfloat16_x", "family", lambda a: {**a, "x": a["x"].bfloat16()}, RESULT),
        Case(spec.name, "float16_x", "family", lambda a: {**a, "x": a["x"].half()}, RESULT),
        Case(spec.name, "head_dim_above_512", "family",
             lambda a: {**a, "x": torch.zeros(1, 1, 4, 513, device=a["x"].device),
                        "init_centroids": torch.zeros(1, 1, 2, 513, device=a["x"].device)}, ERROR, r"head dim"),
    ]


register(OpSpec(
    name="genaccel::svg2_kmeans",
    call=torch.ops.genaccel.svg2_kmeans,
    base=kmeans_base,
    reference=kmeans_op_reference,
    tensors=dict(x="data", init_centroids="data"),
    scalars=dict(iters="int", tol="float"),
    nonfinite=("x", "init_centroids"),
    extra=kmeans_extra,
))


# -- genaccel.attention.svg2.kmeans -------------------------------------------------------------------


def wrapper_base(gen, device):
    x, init = blobs(gen, device)
    return dict(x=x, num_clusters=C, iters=10, init=init, tol=1e-4)


def wrapper_reference(a):
    return kmeans_reference(a["x"], a["init"], a["iters"], a["tol"])[:3]


register(OpSpec(
    name="genaccel.attention.svg2.kmeans",
    call=kmeans,
    base=wrapper_base,
    reference=wrapper_reference,
    tensors=dict(x="data", init="data"),
    scalars=dict(num_clusters="int", iters="int", tol="float"),
    nonfinite=("x", "init"),
    # The wrapper's errors about init and num_clusters name both where they must agree.
    aliases=dict(init="init|num_clusters", num_clusters="num_clusters|init"),
    extra=lambda spec: [
        Case(spec.name, "num_clusters_above_n", "family", lambda a: {**a, "num_clusters": N + 1, "init": None}, ERROR,
             r"num_clusters"),
        Case(spec.name, "seed_and_init", "family", lambda a: {**a, "seed": 3}, ERROR, r"\bseed\b"),
        Case(spec.name, "init_of_other_clusters", "family", lambda a: {**a, "num_clusters": C - 1}, ERROR,
             r"\binit\b"),
    ],
))


# -- ops svg2_permute / svg2_unpermute ------------------------------------------------------------------


def permute_base(name):
    def base(gen, device):
        x = torch.randn(B, H, N, D, generator=gen).to(device)
        perm = torch.rand(B, H, N, generator=gen).argsort(-1).to(torch.int32).to(device)
        return {name: x, "perm": perm, "check_perm": True}
    return base


def perm_extra(spec):
    def repeated(a):
        perm = a["perm"].clone()
        perm[..., 1] = perm[..., 0]
        return {**a, "perm": perm}

    def identity(a):
        return {**a, "perm": torch.arange(N, dtype=torch.int32, device=a["perm"].device).expand(B, H, N).contiguous()}

    return [
        Case(spec.name, "perm_repeats_an_entry", "family", repeated, ERROR, r"\bperm\b"),
        Case(spec.name, "identity_perm", "family", identity, RESULT),
    ]


for op_name, arg, ref in (("svg2_permute", "x", permute_reference), ("svg2_unpermute", "y", unpermute_reference)):
    register(OpSpec(
        name=f"genaccel::{op_name}",
        call=getattr(torch.ops.genaccel, op_name),
        base=permute_base(arg),
        reference=lambda a, arg=arg, ref=ref: (ref(a[arg], a["perm"]),),
        tensors={arg: "data", "perm": "index"},
        scalars=dict(check_perm="bool"),
        nonfinite=(arg,),
        ok_dtypes={arg: (torch.float64,)},
        extra=perm_extra,
    ))


# -- genaccel.attention.svg2.cluster_permute --------------------------------------------------------------


def cluster_base(gen, device):
    x = torch.randn(B, H, N, D, generator=gen).to(device)
    return dict(x=x, labels=torch.randint(0, C, (B, H, N), generator=gen).to(torch.int32).to(device), num_clusters=C)


def cluster_reference(a):
    labels = a["labels"].long()
    keys = torch.where((labels >= 0) & (labels < a["num_clusters"]), labels, a["num_clusters"])
    perm = torch.argsort(keys, dim=-1, stable=True)
    counts = torch.stack([(labels == c).sum(-1) for c in range(a["num_clusters"])], -1)
    offsets = torch.nn.functional.pad(counts.cumsum(-1), (1, 0))
    return permute_reference(a["x"], perm), perm.to(torch.int32), offsets.to(torch.int32)


OUTSIDE = "labels outside [0, num_clusters) are documented input (they sort after every cluster)"

register(OpSpec(
    name="genaccel.attention.svg2.cluster_permute",
    call=cluster_permute,
    base=cluster_base,
    reference=cluster_reference,
    tensors=dict(x="data", labels="index"),
    scalars=dict(num_clusters="int"),
    nonfinite=("x",),
    ok_dtypes=dict(x=(torch.float64,), labels=(torch.int64,)),
    skip={"labels.fill_-5": OUTSIDE, "labels.fill_1048576": OUTSIDE, "labels.fill_2147483647": OUTSIDE},
    extra=lambda spec: [
        Case(spec.name, "labels_outside", "family",
             lambda a: {**a, "labels": torch.where(a["labels"] == 1, -1, a["labels"] + (a["labels"] == 2) * 7)},
             RESULT),
    ],
))


# -- genaccel.attention.svg2.critical_cluster_pairs -----------------------------------------------------


def pairs_base(gen, device):
    qc = 2 * torch.randn(B, H, 6, D, generator=gen)
    kc = 2 * torch.randn(B, 1, 10, D, generator=gen)
    counts = torch.randint(1, 20, (B, 1, 10), generator=gen, dtype=torch.int32)
    return dict(q_centroids=qc.to(device), k_centroids=kc.to(device), k_counts=counts.to(device), top_p=0.7,
                min_kc_ratio=0.1, scale=None)


def pairs_reference(a):
    pairs, _ = critical_cluster_pairs_reference(a["q_centroids"].cpu(), a["k_centroids"].cpu(), a["k_counts"].cpu(),
                                                a["top_p"], a["min_kc_ratio"], a["scale"])
    return (pairs,)


register(OpSpec(
    name="genaccel.attention.svg2.critical_cluster_pairs",
    call=critical_cluster_pairs,
    base=pairs_base,
    reference=pairs_reference,
    tensors=dict(q_centroids="weight", k_centroids="weight", k_counts="count"),
    scalars=dict(top_p="fraction", min_kc_ratio="fraction"),
    skip={f"k_counts.fill_{n}": "k_counts are cluster sizes (softmax weights): any non-negative size is meaningful"
          for n in (1 << 20,)},
    ok_dtypes=dict(q_centroids=(torch.float64, torch.float16, torch.bfloat16),
                   k_centroids=(torch.float64, torch.float16, torch.bfloat16), k_counts=(torch.int64,)),
    extra=lambda spec: [
        Case(spec.name, "nan_centroid", "family",
             lambda a: {**a, "q_centroids": a["q_centroids"].index_fill(2, torch.tensor([1], device=a["q_centroids"].device),
                                                                        math.nan)}, ERROR, r"q_centroids"),
        Case(spec.name, "empty_key_cluster", "family",
             lambda a: {**a, "k_counts": a["k_counts"].index_fill(2, torch.tensor([0, 3], device=a["k_counts"].device), 0)},
             RESULT),
        Case(spec.name, "all_kept", "family", lambda a: {**a, "min_kc_ratio": 1.0}, RESULT),
    ],
))


# -- genaccel.svg2_attention ------------------------------------------------------------------------------


def attention_base(gen, device):
    q, q_init = blobs(gen, device)
    k, k_init = blobs(gen, device)
    k, k_init = k[:, :1].contiguous(), k_init[:, :1].contiguous()
    v = torch.randn(k.shape, generator=gen).to(device)
    # The CUDA attention kernels take half precision; the blobs stay well separated in bfloat16.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = (t.to(dtype) for t in (q, k, v))
    return dict(q=q, k=k, v=v, num_q_clusters=C, num_k_clusters=C, top_p=0.5, min_kc_ratio=0.0, iters=5,
                q_init=q_init, k_init=k_init, tol=1e-4, seed=None)


def attention_reference(a):
    q_labels, q_centroids, _, _ = kmeans_reference(a["q"], a["q_init"], a["iters"], a["tol"])
    k_labels, k_centroids, k_counts, _ = kmeans_reference(a["k"], a["k_init"], a["iters"], a["tol"])
    pairs, _ = critical_cluster_pairs_reference(q_centroids, k_centroids, k_counts, a["top_p"], a["min_kc_ratio"])
    return (svg2_attention_reference(a["q"], a["k"], a["v"], q_labels, k_labels, pairs),)


register(OpSpec(
    name="genaccel.svg2_attention",
    call=svg2_attention,
    base=attention_base,
    reference=attention_reference,
    outputs=lambda r: (r[0],),
    tensors=dict(q="data", k="data", v="data", q_init="weight", k_init="weight"),
    scalars=dict(num_q_clusters="int", num_k_clusters="int", top_p="fraction", min_kc_ratio="fraction",
                 iters="int"),
    nonfinite=("v",),
    aliases=dict(q="q, k, v|q_init|x", k="q, k, v|k_init|x", v="q, k, v", q_init="init", k_init="init",
                 num_q_clusters="q_init", num_k_clusters="k_init"),
    extra=lambda spec: [
        Case(spec.name, "q_nan", "family", lambda a: {**a, "q": a["q"].index_fill(2, torch.tensor([3], device=a["q"].device),
                                                                                   math.nan)}, ERROR, r"\bq holds NaN"),
        Case(spec.name, "k_inf", "family", lambda a: {**a, "k": a["k"].index_fill(2, torch.tensor([0], device=a["k"].device),
                                                                                   math.inf)}, ERROR, r"\bk holds NaN"),
        Case(spec.name, "dense", "family", lambda a: {**a, "min_kc_ratio": 1.0}, RESULT),
        Case(spec.name, "q_meta_only", "family", lambda a: {**a, **{n: a[n].to("meta") for n in ("q", "k", "v")}}, ERROR,
             r"real device"),
    ],
    skip={"all_meta": "SVG2 plans from its inputs' values (the clusters): it has no shape-only (meta) form"},
))
