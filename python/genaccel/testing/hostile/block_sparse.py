"""The block-sparse attention ops in the hostile-input battery: the wrapper, the planner, ops
block_sparse_attn_fwd / block_sparse_attn_bwd / attention_delta / block_sparse_key_major_plan, each
checked against a float64 specification written here or in attention/block_sparse/reference.py."""

import math

import torch

import genaccel
from genaccel.attention.block_sparse.reference import (block_sparse_attention_reference, expand_block_mask,
                                                       masked_matmul)

from . import ERROR, EITHER, RESULT, Case, OpSpec, any_arg_regex, register

B, H, HKV, NQ, NK, BLOCK = 1, 2, 1, 200, 160, 64   # GQA, partial last blocks, Nq != Nk
TQ, TK = math.ceil(NQ / BLOCK), math.ceil(NK / BLOCK)


def dtype_and_dim(device):
    """float32 on the CPU; bfloat16 on CUDA, whose kernels take half precision (head dim 32 runs on both)."""
    return (torch.float32 if device == "cpu" else torch.bfloat16), 32


def qkv(gen, device):
    dtype, D = dtype_and_dim(device)
    shapes = ((B, H, NQ, D), (B, HKV, NK, D), (B, HKV, NK, D))
    return [torch.randn(*s, generator=gen).to(dtype).to(device) for s in shapes]


def random_mask(gen, device):
    """A mask with an empty query block (row 0) and the others at about 60 % density."""
    m = torch.rand(1, H, TQ, TK, generator=gen) < 0.6
    m[..., 0, :] = False
    m[..., 1, 0] = True
    return m.to(device)


def mask_of_plan(kv_indices, kv_counts, tk):
    """The block mask a (kv_indices, kv_counts) plan lists (Bi, Hi, Tq, Tk)."""
    slots = torch.arange(kv_indices.shape[-1]) < kv_counts.long().unsqueeze(-1)
    mask = torch.zeros(*kv_indices.shape[:3], tk + 1, dtype=torch.bool)
    return mask.scatter_(-1, torch.where(slots, kv_indices.long(), tk), True)[..., :tk]


# -- genaccel.block_sparse_attention ---------------------------------------------------------------


def wrapper_base(gen, device):
    q, k, v = qkv(gen, device)
    return dict(q=q, k=k, v=v, block_mask=random_mask(gen, device), block_size=BLOCK, scale=None, return_lse=True,
                backend="auto")


def wrapper_reference(a):
    bs = a["block_size"] if a["block_size"] is not None else 64
    bs = (bs, bs) if isinstance(bs, int) else bs
    return block_sparse_attention_reference(a["q"], a["k"], a["v"], a["block_mask"], bs, a["scale"])


def wrapper_extra(spec):
    anyone = any_arg_regex(spec)

    def all_huge(a):  # q, k, v and the mask consistently huge: the ops must refuse, not allocate
        n = 1 << 31
        t = math.ceil(n / BLOCK)
        out = {name: a[name][:, :, :1].expand(B, a[name].shape[1], n, a[name].shape[3]) for name in "qkv"}
        return {**a, **out, "block_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool, device=a["q"].device).expand(1, 1, t, t)}

    def all_batch_2_32(a):  # q, k, v consistently of batch 2^32 with one token: int32 counters would wrap
        out = {name: a[name][:1, :, :1].expand(1 << 32, a[name].shape[1], 1, a[name].shape[3]) for name in "qkv"}
        return {**a, **out, "block_mask": a["block_mask"][:, :, :1, :1]}

    def huge_block(a):  # one block of 2^31 - 1 tokens over N = 40000: scratch bounded by N, or refused clearly
        q = torch.randn(1, 1, 40000, 16).to(a["q"].device, a["q"].dtype)
        return {**a, "q": q, "k": q, "v": q, "block_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device),
                "block_size": (1 << 31) - 1}

    return [
        Case(spec.name, "all_qkv_length_2^31", "family", all_huge, ERROR, r"fewer than 2\^31 tokens|memory|allocate"),
        Case(spec.name, "block_size_2^31-1_n40000", "family", huge_block, EITHER, r"block_q|block_k|memory"),
        Case(spec.name, "all_qkv_batch_2^32", "family", all_batch_2_32, ERROR, r"batch x heads|memory|allocate"),
        Case(spec.name, "q_float16_kv_float32", "family", lambda a: {**a, "q": a["q"].half()}, ERROR, r"one dtype"),
        Case(spec.name, "empty_rows_only", "family", lambda a: {**a, "block_mask": torch.zeros_like(a["block_mask"])},
             RESULT),
        Case(spec.name, "all_empty_n0", "family", lambda a: {**a, **{n: a[n][:, :, :0] for n in "qkv"},
                                                             "block_mask": a["block_mask"][..., :0, :0]}, EITHER, anyone),
    ]


register(OpSpec(
    name="genaccel.block_sparse_attention",
    call=genaccel.block_sparse_attention,
    base=wrapper_base,
    reference=wrapper_reference,
    tensors=dict(q="data", k="data", v="data", block_mask="mask"),
    scalars=dict(block_size="block", scale="optional_float", backend="choice"),
    nonfinite=("q", "k", "v"),
    aliases=dict(block_mask="plan", q="q, k, v", k="q, k, v", v="q, k, v"),
    extra=wrapper_extra,
))


# -- genaccel.block_mask_to_indices -----------------------------------------------------------------


def planner_reference(a):
    """Per row the selected key blocks in ascending order, padded with -1 to max_kv_blocks."""
    mask = a["block_mask"]
    counts = mask.sum(-1, dtype=torch.int32)
    width = a["max_kv_blocks"] if a["max_kv_blocks"] is not None else int(counts.max()) if counts.numel() else mask.shape[-1]
    idx = torch.full((*mask.shape[:3], width), -1, dtype=torch.int32)
    for pos in torch.nonzero(counts >= 0).tolist() if counts.numel() else []:
        sel = torch.nonzero(mask[tuple(pos)]).flatten()
        idx[tuple(pos)][: sel.numel()] = sel.to(torch.int32)
    return idx, counts


register(OpSpec(
    name="genaccel.block_mask_to_indices",
    call=genaccel.block_mask_to_indices,
    base=lambda gen, device: dict(block_mask=random_mask(gen, device), max_kv_blocks=None),
    reference=planner_reference,
    # On the meta device the counts have no values: the lists are Tk wide, as under torch.compile.
    meta_outputs=lambda a: [((*a["block_mask"].shape[:3], a["block_mask"].shape[3]), torch.int32),
                            (tuple(a["block_mask"].shape[:3]), torch.int32)],
    tensors=dict(block_mask="mask"),
    scalars=dict(max_kv_blocks="optional_int"),
    extra=lambda spec: [
        Case(spec.name, "max_kv_below_a_row", "family", lambda a: {**a, "max_kv_blocks": 1}, ERROR, r"max_kv_blocks"),
        Case(spec.name, "max_kv_tk", "family", lambda a: {**a, "max_kv_blocks": TK}, RESULT),
    ],
))


# -- op block_sparse_attn_fwd -------------------------------------------------------------------------


def fwd_base(gen, device):
    q, k, v = qkv(gen, device)
    kv_indices, kv_counts = genaccel.block_mask_to_indices(random_mask(gen, device))
    return dict(q=q, k=k, v=v, kv_indices=kv_indices, kv_counts=kv_counts, block_q=BLOCK, block_k=BLOCK,
                scale=0.2, check_plan=True, backend="auto")


def num_k_blocks(a):
    """Key blocks of a call: the k_block_offsets' (variable-size blocks), else ceil(Nk / block_k)."""
    k_off = a.get("k_block_offsets")
    return k_off.shape[-1] - 1 if k_off is not None else math.ceil(a["k"].shape[2] / a["block_k"])


def fwd_reference(a):
    mask = mask_of_plan(a["kv_indices"], a["kv_counts"], num_k_blocks(a))
    return block_sparse_attention_reference(a["q"], a["k"], a["v"], mask, (a["block_q"], a["block_k"]), a["scale"],
                                            a.get("q_block_offsets"), a.get("k_block_offsets"))


# Variable-size blocks (SVG2's clusters) over the base plan's TQ x TK blocks: an empty block on each
# side, blocks longer than 64 tokens, per-head query offsets (GQA: the two query heads cut
# differently), and the largest blocks as block_q / block_k.
Q_OFFSETS = [[0, 30, 30, 150, 200], [0, 1, 90, 91, 200]]
K_OFFSETS = [0, 70, 70, 160]


def variable_blocks(a):
    device = a["q"].device
    q_off = torch.tensor(Q_OFFSETS, dtype=torch.int32, device=device).view(1, H, TQ + 1)
    k_off = torch.tensor(K_OFFSETS, dtype=torch.int32, device=device).view(1, 1, TK + 1)
    return {**a, "q_block_offsets": q_off, "k_block_offsets": k_off, "block_q": 120, "block_k": 90}


def plan_extra(spec):
    def padding_out_of_range(a):  # entries past the count are never read: any value is fine
        idx = a["kv_indices"].clone()
        idx[idx < 0] = 1 << 30
        return {**a, "kv_indices": idx}

    def variable_blocks_call(a):
        b = variable_blocks(a)
        if "dout" not in b:
            return b
        # The backward of the variable-block forward: its lse and delta.
        fwd = {n: b[n] for n in ("q", "k", "v", "kv_indices", "kv_counts", "block_q", "block_k", "scale",
                                 "q_block_offsets", "k_block_offsets")}
        out, lse = torch.ops.genaccel.block_sparse_attn_fwd(**fwd)
        return {**b, "lse": lse, "delta": torch.ops.genaccel.attention_delta(b["dout"], out)}

    return [
        Case(spec.name, "variable_size_blocks", "family", variable_blocks_call, RESULT),
        Case(spec.name, "variable_size_blocks_wgmma", "family",
             lambda a: {**variable_blocks_call(a), "backend": "sm90"}, EITHER, r"q_block_offsets|sm90|wgmma"),
        Case(spec.name, "kv_indices_padding_out_of_range", "family", padding_out_of_range, RESULT),
        Case(spec.name, "kv_counts_above_max_kv", "family",
             lambda a: {**a, "kv_counts": a["kv_counts"] + a["kv_indices"].shape[-1]}, ERROR, r"kv_counts"),
        Case(spec.name, "kv_indices_wrong_tq", "family", lambda a: {**a, "kv_indices": a["kv_indices"][..., :-1, :],
                                                                   "kv_counts": a["kv_counts"][..., :-1]},
             ERROR, r"kv_indices"),
    ]


register(OpSpec(
    name="genaccel::block_sparse_attn_fwd",
    call=torch.ops.genaccel.block_sparse_attn_fwd,
    base=fwd_base,
    reference=fwd_reference,
    tensors=dict(q="data", k="data", v="data", kv_indices="index", kv_counts="count"),
    scalars=dict(block_q="int", block_k="int", scale="float", check_plan="bool", backend="choice"),
    nonfinite=("q", "k", "v"),
    aliases=dict(q="q, k, v", k="q, k, v", v="q, k, v", block_q="block_q and block_k", block_k="block_q and block_k"),
    extra=plan_extra,
))


# -- op block_sparse_attn_bwd -------------------------------------------------------------------------


def bwd_base(gen, device):
    a = fwd_base(gen, device)
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(**a)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype).to(device)
    delta = torch.ops.genaccel.attention_delta(dout, out)
    return dict(dout=dout, q=a["q"], k=a["k"], v=a["v"], delta=delta, lse=lse, kv_indices=a["kv_indices"],
                kv_counts=a["kv_counts"], block_q=BLOCK, block_k=BLOCK, scale=0.2, check_plan=True, backend="auto")


def bwd_reference(a):
    """The block-sparse backward from the given lse and delta (FlashAttention's formulas), in float64,
    summing over the selected keys only: P = exp(S - lse), dV = P^T dO, dS = P (dO V^T - delta),
    dQ = scale dS K, dK = scale dS^T Q (GQA: summed over the query heads of each kv head)."""
    q, k, v, dout = (a[n].double() for n in ("q", "k", "v", "dout"))
    lse, delta = a["lse"].double().unsqueeze(-1), a["delta"].double().unsqueeze(-1)
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    nq, nk = q.shape[2], k.shape[2]
    blocks = mask_of_plan(a["kv_indices"], a["kv_counts"], num_k_blocks(a))
    mask = expand_block_mask(blocks, nq, nk, (a["block_q"], a["block_k"]), a.get("q_block_offsets"),
                             a.get("k_block_offsets")).expand(q.shape[0], q.shape[1], nq, nk)
    s = (q @ kk.transpose(-1, -2) * a["scale"]).masked_fill(~mask, 0.0)
    p = torch.where(mask, torch.exp(s - lse.clamp_min(torch.finfo(torch.float64).min)), 0.0)
    dp = torch.where(mask, dout @ vv.transpose(-1, -2), 0.0)
    ds = p * (dp - delta)
    mask_t = mask.transpose(-1, -2)
    dq = masked_matmul(ds, mask, kk) * a["scale"]
    dk = masked_matmul(ds.transpose(-1, -2), mask_t, q) * a["scale"]
    dv = masked_matmul(p.transpose(-1, -2), mask_t, dout)
    fold = lambda g: g.unflatten(1, (k.shape[1], group)).sum(2)  # noqa: E731
    return dq, fold(dk), fold(dv)


register(OpSpec(
    name="genaccel::block_sparse_attn_bwd",
    call=torch.ops.genaccel.block_sparse_attn_bwd,
    base=bwd_base,
    reference=bwd_reference,
    tensors=dict(dout="data", q="data", k="data", v="data", delta="stat", lse="stat", kv_indices="index",
                 kv_counts="count"),
    scalars=dict(block_q="int", block_k="int", scale="float", check_plan="bool", backend="choice"),
    nonfinite=("dout",),
    aliases=dict(q="q, k, v", k="q, k, v", v="q, k, v", block_q="block_q and block_k", block_k="block_q and block_k",
                 delta="delta and lse", lse="delta and lse"),
    extra=plan_extra,
))


# -- op attention_delta ---------------------------------------------------------------------------------


def delta_base(gen, device):
    dtype, D = dtype_and_dim(device)
    return dict(dout=torch.randn(B, H, NQ, D, generator=gen).to(dtype).to(device),
                out=torch.randn(B, H, NQ, D, generator=gen).to(dtype).to(device))


register(OpSpec(
    name="genaccel::attention_delta",
    call=torch.ops.genaccel.attention_delta,
    base=delta_base,
    reference=lambda a: ((a["dout"].double() * a["out"].double()).sum(-1),),
    tensors=dict(dout="data", out="data"),
    nonfinite=("dout", "out"),
    aliases=dict(dout="dout and out", out="dout and out"),
))


# -- op block_sparse_key_major_plan -----------------------------------------------------------------------


def key_major_reference(a):
    """offsets (Bi, Hi, Tk + 1): where each key block's query blocks start; queries: the query blocks
    of each key block in ascending order, key block after key block (zeros past the last)."""
    idx, cnt, tk = a["kv_indices"], a["kv_counts"], a["num_k_blocks"]
    bi, hi, tq, m = idx.shape
    offsets = torch.zeros(bi, hi, tk + 1, dtype=torch.int32)
    queries = torch.zeros(bi, hi, tq * m, dtype=torch.int32)
    for b in range(bi):
        for h in range(hi):
            pairs = sorted((kb, qb) for qb in range(tq) for kb in idx[b, h, qb, : cnt[b, h, qb]].tolist())
            for kb in range(tk):
                offsets[b, h, kb + 1] = offsets[b, h, kb] + sum(1 for p in pairs if p[0] == kb)
            queries[b, h, : len(pairs)] = torch.tensor([qb for _, qb in pairs], dtype=torch.int32)
    return offsets, queries


def key_major_outputs(result):
    """The queries past offsets[..., -1] are padding: compared as zeros."""
    offsets, queries = result
    used = torch.arange(queries.shape[-1], device=queries.device) < offsets[..., -1:].long()
    return offsets, torch.where(used, queries, torch.zeros_like(queries))


def key_major_base(gen, device):
    kv_indices, kv_counts = genaccel.block_mask_to_indices(random_mask(gen, device))
    return dict(kv_indices=kv_indices, kv_counts=kv_counts, num_k_blocks=TK)


register(OpSpec(
    name="genaccel::block_sparse_key_major_plan",
    call=torch.ops.genaccel.block_sparse_key_major_plan,
    base=key_major_base,
    reference=key_major_reference,
    outputs=key_major_outputs,
    tensors=dict(kv_indices="index", kv_counts="count"),
    scalars=dict(num_k_blocks="int"),
    aliases=dict(kv_indices="kv_indices .* and kv_counts", kv_counts="kv_indices .* and kv_counts",
                 num_k_blocks="num_k_blocks|the plan"),
))
