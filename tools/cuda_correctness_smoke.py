"""Small CUDA block-sparse attention and SLA runs, forward and backward, checked against the float64
reference, and SLA's block selection checked against its CPU kernel.

Meant to run under `compute-sanitizer --tool memcheck` (bench/gpu_check.sh), so the shapes are small
and chosen for the edges where kernels read or write out of bounds: partial last blocks, N smaller
than one block, Nq != Nk, GQA, empty mask rows, broadcast masks, non-contiguous inputs, block_k of
several 64-key tiles (128/192/256, tiles past Nk skipped), every (dtype, D, block_q) kernel instance,
a plan in descending order (a partly masked first tile), and corrupted plans taken on trust
(check_plan=False: the kernels must stay in bounds); variable-size blocks (SVG2's clusters: the
mma.sync kernels' variable-block instances) with empty, single-token and multi-tile blocks, GQA with
per-head partitions, and offsets taken on trust out of range; SVG2 (k-means against the CPU op, the
permutation round trip, svg2_attention forward and backward); on Hopper the block-sparse cases run again
with the wgmma kernels (backend="sm90"; GENACCEL_SKIP_WGMMA=1 skips them). The float64 reference
runs on the CPU, which keeps the sanitizer's work (and run time) on our kernels. Tolerances, rel_err
and the input makers are those of genaccel.testing.

An SLA case with its own GENACCEL_SLA_CHUNK_BYTES runs in a child process of this script started
with that variable set: genaccel reads the knob once, when it loads (docs/env.md). compute-sanitizer
follows child processes (--target-processes all, bench/gpu_check.sh passes it explicitly).

    python tools/cuda_correctness_smoke.py

Exit code: 0 all required cases match; 1 a required case raised or mismatched; 2 no GPU / no CUDA
kernels. Cases marked optional (configurations the CUDA kernel may not cover yet) may be refused
with a clear error; a wrong answer fails them like any other.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import traceback

import torch

from genaccel.testing import RTOL, make_input, make_mask, quantizer_input, random_block_offsets, rel_err

PROG = "cuda_correctness_smoke"

# name, B, H, Hkv, Nq, Nk, D, dtype, (bq, bk), mask density, mask batch/head broadcast, layout, required
CASES = [
    ("full mask, one block", 1, 2, 2, 64, 64, 64, torch.bfloat16, (64, 64), 1.0, False, "bhnd", True),
    ("partial blocks, Nq!=Nk", 2, 4, 4, 200, 333, 128, torch.bfloat16, (64, 64), 0.5, False, "bhnd", True),
    ("GQA 4:1, empty rows", 1, 8, 2, 257, 257, 128, torch.bfloat16, (64, 64), 0.3, False, "bhnd", True),
    ("N below one block", 1, 3, 3, 50, 50, 64, torch.float16, (64, 64), 1.0, False, "bhnd", True),
    ("fp16 GQA 2:1, broadcast mask", 2, 4, 2, 320, 192, 64, torch.float16, (64, 64), 0.6, True, "bhnd", True),
    ("non-contiguous (B, N, H, D) view", 1, 4, 4, 190, 190, 128, torch.bfloat16, (64, 64), 0.5, False, "bnhd", True),
    ("longer sequence", 1, 2, 2, 1000, 1000, 128, torch.bfloat16, (64, 64), 0.2, False, "bhnd", True),
    # Every kernel instance (dtype x D 64/128 x block_q 64/128) and block_k > 64 (several 64-key
    # tiles per block, the last block's tiles past Nk skipped), each with ragged tails.
    ("128x64 blocks", 1, 2, 2, 300, 300, 128, torch.bfloat16, (128, 64), 0.5, False, "bhnd", True),
    ("D=64 fp16 128x64 blocks, Nq<Nk", 1, 2, 2, 150, 300, 64, torch.float16, (128, 64), 0.5, False, "bhnd", True),
    ("D=64 bf16 128x128 blocks, Nq>Nk", 1, 2, 2, 300, 150, 64, torch.bfloat16, (128, 128), 0.6, False, "bhnd", True),
    ("D=128 bf16 64x128 blocks, GQA 2:1", 2, 4, 2, 190, 300, 128, torch.bfloat16, (64, 128), 0.5, False, "bhnd", True),
    ("D=64 bf16 64x256 blocks, tail", 1, 2, 1, 130, 300, 64, torch.bfloat16, (64, 256), 0.7, False, "bhnd", True),
    ("D=128 fp16 128x192 blocks, tail", 1, 2, 2, 260, 450, 128, torch.float16, (128, 192), 0.6, False, "bhnd", True),
    # Key blocks in descending order (the raw op takes any order): the partial last key block is
    # the first tile a row sees, so the online softmax starts from a partly masked tile.
    ("descending plan, partial tile first", 1, 2, 2, 200, 333, 128, torch.bfloat16, (64, 64), 0.6, False, "bhnd", True),
    # Head dims without a kernel of their own: zero-padded to 64 / 128.
    ("D=32 (padded to 64)", 1, 2, 2, 130, 130, 32, torch.bfloat16, (64, 64), 0.5, False, "bhnd", True),
    ("D=96 (padded to 128), GQA 2:1", 1, 4, 2, 190, 170, 96, torch.float16, (64, 64), 0.5, False, "bhnd", True),
    ("float32", 1, 2, 2, 130, 130, 64, torch.float32, (64, 64), 0.5, False, "bhnd", False),
]
DESCENDING_PLAN = {"descending plan, partial tile first"}

# SLA (sparse_linear_attention with a projection), forward and backward: the linear branch's row
# kernels and GEMM operands at the same edges. name, B, H, Hkv, Nq, Nk, D, dtype, block, feature
# map, linear_over_all_keys, layout, GENACCEL_SLA_CHUNK_BYTES (None: this process's; else a child
# process with that value)
SLA_CASES = [
    ("SLA GQA 2:1, partial blocks", 1, 4, 2, 300, 260, 64, torch.bfloat16, (64, 64), "softmax", False, "bhnd", None),
    ("SLA D=128 128x64, MQA, chunk/pair", 2, 2, 1, 200, 330, 128, torch.bfloat16, (128, 64), "elu", False, "bhnd", "1"),
    ("SLA N below one block, fp16", 1, 3, 3, 40, 50, 128, torch.float16, (64, 128), "relu", True, "bhnd", None),
    ("SLA non-contiguous (B, N, H, D)", 1, 4, 4, 190, 190, 64, torch.bfloat16, (64, 64), "softmax", False, "bnhd", None),
    ("SLA D=96 (sparse branch padded)", 1, 4, 2, 200, 170, 96, torch.bfloat16, (64, 64), "elu", False, "bhnd", None),
    ("SLA D=32 (sparse branch padded)", 1, 2, 2, 130, 100, 32, torch.float16, (64, 64), "softmax", False, "bhnd", None),
]

# SLA's block selection (op sla_select_blocks) against its CPU kernel, exactly: name, score shape,
# n_critical, n_negligible. 4096 blocks fill the kernel's shared-memory sort; 5000 take its global
# scratch path.
SELECT_CASES = [
    ("select 37 blocks, ties", (2, 3, 5, 37), 5, 9),
    ("select 4096 blocks (shared memory)", (1, 2, 3, 4096), 200, 400),
    ("select 5000 blocks (global scratch)", (1, 2, 3, 5000), 250, 500),
]

# The backward's row term (op attention_delta) against float64: name, shape, dtype, and whether the
# rows are sliced off 16-byte alignment (the kernel's scalar path).
DELTA_CASES = [
    ("delta bf16 D128 (16-byte loads)", (2, 3, 257, 128), torch.bfloat16, False),
    ("delta fp16 D13 misaligned (scalar)", (1, 2, 99, 14), torch.float16, True),
]


# Corrupted plans passed with check_plan=False (taken on trust): the kernels must skip entries
# outside [0, key blocks) and clamp counts to [0, max_kv], never read out of bounds (memcheck).
TRUSTED_PLAN_CASES = [
    ("trusted plan, indices past the end", lambda idx, cnt: (idx + 100000, cnt)),
    ("trusted plan, negative indices", lambda idx, cnt: (idx - 100000, cnt)),
    ("trusted plan, counts past max_kv", lambda idx, cnt: (idx, cnt + 7)),
    ("trusted plan, negative counts", lambda idx, cnt: (idx, cnt - 100)),
]


# Variable-size blocks (q_block_offsets / k_block_offsets), forward and backward against the float64
# reference: name, B, H, Hkv, Nq, Nk, D, dtype, query blocks, key blocks, per-head offsets, empty blocks.
VARBLOCK_CASES = [
    ("varblocks GQA 2:1, empty blocks", 1, 4, 2, 300, 260, 64, torch.bfloat16, 7, 9, True, True),
    ("varblocks D=128 fp16, long blocks", 2, 2, 1, 500, 420, 128, torch.float16, 3, 2, False, False),
    ("varblocks single-token blocks", 1, 2, 2, 40, 45, 64, torch.bfloat16, 40, 45, True, False),
    ("varblocks D=96 (padded), small blocks", 1, 2, 1, 150, 170, 96, torch.bfloat16, 23, 31, True, True),
]


def run_varblock_case(case, gen) -> str:
    import genaccel
    from genaccel.attention import BlockSparsePlan
    from genaccel.attention.block_sparse.reference import block_sparse_attention_reference

    name, B, H, Hkv, nq, nk, D, dtype, tq, tk, per_head, allow_empty = case
    ob, oh = (B, H) if per_head else (1, 1)
    q_off = random_block_offsets(gen, ob * oh, nq, tq, allow_empty).view(ob, oh, tq + 1)
    k_off = random_block_offsets(gen, ob * oh, nk, tk, allow_empty).view(ob, oh, tk + 1)
    mask = torch.rand(B, H, tq, tk, generator=gen) < 0.4
    mask[:, :, 0] = False  # a query block without keys
    plan = BlockSparsePlan.from_mask(mask.cuda(), q_block_offsets=q_off.cuda(), k_block_offsets=k_off.cuda())
    q = make_input(gen, (B, H, nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, nk, D), dtype, "cpu") for _ in range(2))
    leaves = [t.cuda().requires_grad_() for t in (q, k, v)]
    out, lse = genaccel.block_sparse_attention(*leaves, plan, return_lse=True)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad((out * go.cuda()).float().sum(), leaves)
    torch.cuda.synchronize()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = block_sparse_attention_reference(*ref_leaves, mask, (plan.block_q, plan.block_k), None, q_off, k_off)
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_leaves)
    out, lse = out.detach().cpu(), lse.cpu()
    err = rel_err(out, ref.detach())
    finite = torch.isfinite(ref_lse)
    lse_ok = torch.equal(torch.isfinite(lse), finite)
    lse_err = rel_err(lse[finite], ref_lse[finite]) if finite.any() else 0.0
    tol = RTOL[dtype]
    if not torch.isfinite(out).all() or err > tol or lse_err > tol or not lse_ok:
        return f"FAIL rel err out {err:.2e} lse {lse_err:.2e} (tol {tol:.0e}), lse -inf rows match: {lse_ok}"
    grad_errs = [rel_err(g.cpu(), e) for g, e in zip(grads, expected)]
    if not all(torch.isfinite(g).all() for g in grads) or max(grad_errs) > 2 * tol:
        return f"FAIL backward rel err dq/dk/dv {', '.join(f'{e:.2e}' for e in grad_errs)} (tol {2 * tol:.0e})"
    return (f"ok   rel err out {err:.2e} lse {lse_err:.2e}, "
            f"dq/dk/dv {', '.join(f'{e:.2e}' for e in grad_errs)}")


def run_trusted_offsets_case(case, gen) -> str:
    """Variable-size block offsets taken on trust (check_plan=False) out of range, decreasing and
    longer than block_q / block_k: wrong numbers are allowed, out-of-bounds accesses (memcheck) not."""
    name, bad = case
    B, H, N, D = 1, 2, 200, 64
    q, k, v = (torch.randn(B, H, N, D, generator=gen).to(torch.bfloat16).cuda() for _ in range(3))
    import genaccel

    mask = (torch.rand(B, H, 4, 4, generator=gen) < 0.6).cuda()
    idx, cnt = genaccel.block_mask_to_indices(mask, max_kv_blocks=4)
    off = torch.tensor(bad, dtype=torch.int32).view(1, 1, 5).cuda()
    op = torch.ops.genaccel
    kw = dict(check_plan=False, q_block_offsets=off, k_block_offsets=off)
    out, lse = op.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125, **kw)
    delta = op.attention_delta(out, out)
    op.block_sparse_attn_bwd(out, q, k, v, delta, lse, idx, cnt, 64, 64, 0.125, **kw)
    torch.cuda.synchronize()
    return "ok   ran in bounds (memcheck)"


TRUSTED_OFFSETS_CASES = [
    ("trusted offsets, out of range", [0, -300, 100000, 50, 200]),
    ("trusted offsets, blocks above block_q", [0, 5, 190, 195, 200]),
]


def descending_plan(mask):
    """kv_indices/kv_counts listing each row's key blocks in descending order (padding -1)."""
    import genaccel

    tk = mask.shape[-1]
    idx, cnt = genaccel.block_mask_to_indices(mask.flip(-1))
    return torch.where(idx >= 0, tk - 1 - idx, idx).to(torch.int32).contiguous(), cnt


def make_inputs(case, gen):
    _, B, H, Hkv, nq, nk, D, dtype, (bq, bk), density, bcast, layout, _ = case

    # float32 on the CPU; "bnhd": (B, N, H, D) storage seen as (B, H, N, D), strided like a fused QKV.
    lay = "transposed" if layout == "bnhd" else "contig"

    def rand(b, h, n):
        return make_input(gen, (b, h, n, D), torch.float32, "cpu", lay)

    q, k, v = rand(B, H, nq), rand(B, Hkv, nk), rand(B, Hkv, nk)
    tq, tk = math.ceil(nq / bq), math.ceil(nk / bk)
    mshape = (1, 1, tq, tk) if bcast else (B, H, tq, tk)
    mask = make_mask(gen, mshape, "random", density)
    if density < 1.0 and tq > 2:
        mask[..., 1, :] = False  # an empty row: output zeros, lse -inf
    # The last (partial) query block always computes something with the last (partial) key block
    # (with tq == 2, emptying row 1 would have emptied exactly the partial query block).
    mask[..., -1, -1] = True
    return q, k, v, mask, dtype, (bq, bk)


def run_case(case, gen, backend="auto") -> str:
    """'ok ...', 'unsupported ...' or raises/returns 'FAIL ...'; backend: the ops' kernel choice."""
    import genaccel
    from genaccel.attention.block_sparse.reference import block_sparse_attention_reference

    q, k, v, mask, dtype, bs = make_inputs(case, gen)
    # Round to the tested dtype first so the reference sees exactly the kernel's inputs.
    q, k, v = (t.to(dtype) for t in (q, k, v))
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, mask, bs)
    dq, dk, dv = (t.cuda() for t in (q, k, v))
    if case[11] == "bnhd":
        assert not dq.is_contiguous()
    if case[0] in DESCENDING_PLAN:
        idx, cnt = descending_plan(mask.cuda())
        out, lse = torch.ops.genaccel.block_sparse_attn_fwd(dq, dk, dv, idx, cnt, bs[0], bs[1],
                                                            1.0 / math.sqrt(dq.shape[-1]), backend=backend)
    else:
        out, lse = genaccel.block_sparse_attention(dq, dk, dv, mask.cuda(), block_size=bs, return_lse=True,
                                                   backend=backend)
    torch.cuda.synchronize()
    out, lse = out.cpu(), lse.cpu()
    if out.dtype != dtype or out.shape != ref_out.shape or lse.shape != ref_lse.shape:
        return f"FAIL shapes/dtype: out {tuple(out.shape)} {out.dtype}, lse {tuple(lse.shape)}"
    if not torch.isfinite(out).all():
        return "FAIL non-finite output"
    err = rel_err(out, ref_out)
    finite = torch.isfinite(ref_lse)
    lse_ok = torch.equal(torch.isfinite(lse), finite)
    lse_err = rel_err(lse[finite], ref_lse[finite]) if finite.any() else 0.0
    tol = RTOL[dtype]
    if err > tol or lse_err > tol or not lse_ok:
        return f"FAIL rel err out {err:.2e} lse {lse_err:.2e} (tol {tol:.0e}), lse -inf rows match: {lse_ok}"

    # Backward through the op, on the same plan, against autograd through the reference.
    go = torch.randn(ref_out.shape, generator=gen).to(dtype)
    if case[0] in DESCENDING_PLAN:
        plan = (idx, cnt)
    else:
        plan = tuple(t.to(torch.int32).contiguous() for t in genaccel.block_mask_to_indices(mask.cuda()))
    delta = (go.float() * out.float()).sum(-1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    grads = torch.ops.genaccel.block_sparse_attn_bwd(go.cuda(), dq, dk, dv, delta.cuda(), lse.cuda(), *plan,
                                                     bs[0], bs[1], scale, backend=backend)
    torch.cuda.synchronize()
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = block_sparse_attention_reference(*leaves, mask, bs)[0]
    expected = torch.autograd.grad((ref * go.double()).sum(), leaves)
    grad_errs = [rel_err(g.cpu(), e) for g, e in zip(grads, expected)]
    if not all(torch.isfinite(g).all() for g in grads) or max(grad_errs) > 2 * tol:
        return f"FAIL backward rel err dq/dk/dv {', '.join(f'{e:.2e}' for e in grad_errs)} (tol {2 * tol:.0e})"
    return (f"ok   rel err out {err:.2e} lse {lse_err:.2e}, "
            f"dq/dk/dv {', '.join(f'{e:.2e}' for e in grad_errs)}")


def run_sla_case(case, gen) -> str:
    """SLA forward and backward (q, k, v, projection) against autograd through the reference; a case
    with a GENACCEL_SLA_CHUNK_BYTES other than this process's runs in a child process."""
    chunk = case[-1]
    if chunk is not None and os.environ.get("GENACCEL_SLA_CHUNK_BYTES") != chunk:
        return run_sla_case_in_child(case, gen, chunk)
    return run_sla_case_here(case, gen)


def run_sla_case_here(case, gen) -> str:
    import genaccel
    from genaccel.attention.sla import sla_block_map
    from genaccel.attention.sla.reference import sparse_linear_attention_reference

    name, B, H, Hkv, Nq, Nk, D, dtype, bs, fmap, all_keys, layout, _ = case
    q = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cpu") for _ in range(2))
    w = 0.2 * torch.randn(D, D, generator=gen)
    go = torch.randn(B, H, Nq, D, generator=gen).to(dtype)
    leaves = []
    for t in (q, k, v):
        c = t.cuda()
        if layout == "bnhd":  # same values, a (B, N, H, D) tensor seen as (B, H, N, D)
            c = c.transpose(1, 2).contiguous().transpose(1, 2)
        leaves.append(c.requires_grad_())
    wc = w.cuda().requires_grad_()
    out = genaccel.sparse_linear_attention(*leaves, wc, None, 0.2, 0.1, bs, fmap, linear_over_all_keys=all_keys)
    grads = torch.autograd.grad((out * go.cuda()).float().sum(), (*leaves, wc))
    torch.cuda.synchronize()
    codes = sla_block_map(leaves[0], leaves[1], 0.2, 0.1, bs)[0].cpu()
    ref_in = [t.double().requires_grad_() for t in (q, k, v, w)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, ref_in[3], None, bs, fmap,
                                            linear_over_all_keys=all_keys)[0]
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_in)
    err = rel_err(out.detach().cpu(), ref.detach())
    grad_errs = [rel_err(g.cpu(), e) for g, e in zip(grads, expected)]
    tol = RTOL[dtype]
    if not torch.isfinite(out).all() or err > tol:
        return f"FAIL forward rel err {err:.2e} (tol {tol:.0e})"
    if not all(torch.isfinite(g).all() for g in grads) or max(grad_errs) > 2 * tol:
        return f"FAIL backward rel err dq/dk/dv/dw {', '.join(f'{e:.2e}' for e in grad_errs)} (tol {2 * tol:.0e})"
    return f"ok   rel err out {err:.2e}, dq/dk/dv/dw {', '.join(f'{e:.2e}' for e in grad_errs)}"


def run_sla_case_in_child(case, gen, chunk) -> str:
    """run_sla_case_here in `python THIS_SCRIPT --sla-case NAME --seed S` started with
    GENACCEL_SLA_CHUNK_BYTES=chunk (the library reads it once, when it loads). The child's output goes to
    this process's stdout/stderr (and so into the memcheck log); its result comes back in a file."""
    seed = int(torch.randint(1 << 30, (1,), generator=gen))
    env = dict(os.environ, GENACCEL_SLA_CHUNK_BYTES=chunk)
    with tempfile.TemporaryDirectory(prefix=PROG + "_") as tmp:
        result_path = os.path.join(tmp, "result.txt")
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--sla-case", case[0], "--seed", str(seed),
                               "--result", result_path], env=env)
        result = open(result_path).read().strip() if os.path.exists(result_path) else ""
    if proc.returncode != 0 or not result:
        raise RuntimeError(f"child process (GENACCEL_SLA_CHUNK_BYTES={chunk}) exited {proc.returncode}"
                           f"{'' if result else ' without a result'}: {result}")
    return f"{result} (child, GENACCEL_SLA_CHUNK_BYTES={chunk})"


def run_select_case(case, gen) -> str:
    name, shape, n_crit, n_neg = case
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), float("nan")])
    scores = torch.randn(*shape, generator=gen)
    tied = torch.rand(shape, generator=gen) < 0.3
    scores[tied] = pool[torch.randint(0, len(pool), (int(tied.sum()),), generator=gen)]
    got = torch.ops.genaccel.sla_select_blocks(scores.cuda(), n_crit, n_neg)
    torch.cuda.synchronize()
    want = torch.ops.genaccel.sla_select_blocks(scores, n_crit, n_neg)
    same = [torch.equal(g.cpu(), w) for g, w in zip(got, want)]
    return "ok   codes and ids equal the CPU kernel's" if all(same) else f"FAIL codes/ids equal: {same}"


def run_trusted_plan_case(case, gen, backend="auto") -> str:
    name, corrupt = case
    B, H, N, D = 1, 2, 200, 64
    q, k, v = (torch.randn(B, H, N, D, generator=gen).to(torch.bfloat16).cuda() for _ in range(3))
    import genaccel

    mask = (torch.rand(B, H, 4, 4, generator=gen) < 0.5).cuda()
    idx, cnt = corrupt(*genaccel.block_mask_to_indices(mask, max_kv_blocks=4))
    op = torch.ops.genaccel
    out, lse = op.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125, check_plan=False, backend=backend)
    delta = op.attention_delta(out, out)
    grads = op.block_sparse_attn_bwd(out, q, k, v, delta, lse, idx, cnt, 64, 64, 0.125, check_plan=False,
                                     backend=backend)
    torch.cuda.synchronize()
    finite = all(torch.isfinite(t).all() for t in (out, *grads))
    return "ok   ran in bounds (memcheck), outputs finite" if finite else "FAIL non-finite outputs"


def with_wgmma(run):
    """`run` with the wgmma kernels (backend="sm90", Hopper only)."""

    def run_wgmma(case, gen) -> str:
        return run(case, gen, backend="sm90")

    return run_wgmma


run_case_wgmma = with_wgmma(run_case)


def run_delta_case(case, gen) -> str:
    name, shape, dtype, misaligned = case
    dout, out = (torch.randn(*shape, generator=gen).to(dtype).cuda() for _ in range(2))
    if misaligned:
        dout, out = dout[..., 1:], out[..., 1:]
    got = torch.ops.genaccel.attention_delta(dout, out).cpu().double()
    want = (dout.cpu().double() * out.cpu().double()).sum(-1)
    err = rel_err(got, want)
    return f"ok   rel err {err:.2e}" if err <= 1e-6 else f"FAIL rel err {err:.2e} (tol 1e-6)"


# SVG2: (name, B, H, Hkv, N, D, dtype, q clusters, k clusters): k-means against the CPU op from the same init,
# the permutation round trip, and svg2_attention (forward and backward) against float64 attention under its
# own selection. Tokens near a few centres, so float32 atomics cannot flip labels between near-equal centroids.
SVG2_CASES = [
    ("svg2 bf16 GQA 2:1, clusters of 1-200 tokens", 1, 4, 2, 600, 64, torch.bfloat16, 12, 40),
    ("svg2 fp16 D=128, more clusters than some heads fill", 2, 2, 2, 333, 128, torch.float16, 30, 120),
]


def run_svg2_case(case, gen) -> str:
    from genaccel.attention.svg2 import cluster_permute, cluster_unpermute, kmeans, svg2_attention
    from genaccel.attention.svg2.reference import svg2_attention_reference

    name, B, H, Hkv, N, D, dtype, qc, kc = case
    centres = 3 * torch.randn(6, D, generator=gen)

    def blobs(h):
        ids = torch.randint(0, 6, (B, h, N), generator=gen)
        return (centres[ids] + 0.3 * torch.randn(B, h, N, D, generator=gen)).to(dtype)

    q, k, v = blobs(H), blobs(Hkv), torch.randn(B, Hkv, N, D, generator=gen).to(dtype)
    init = k[:, :, :kc].float().contiguous()
    labels, cents, counts = kmeans(k.cuda(), kc, 10, init.cuda(), 0.0)
    want_labels, want_cents, want_counts = kmeans(k, kc, 10, init, 0.0)
    if not (torch.equal(labels.cpu(), want_labels) and torch.equal(counts.cpu(), want_counts)):
        return f"FAIL kmeans labels differ from the CPU op on {(labels.cpu() != want_labels).sum().item()} tokens"
    if rel_err(cents.cpu(), want_cents) > 1e-5:
        return f"FAIL kmeans centroids rel err {rel_err(cents.cpu(), want_cents):.2e}"
    x_perm, perm, _ = cluster_permute(k.cuda(), labels, kc)
    if not torch.equal(cluster_unpermute(x_perm, perm).cpu(), k):
        return "FAIL permute / unpermute round trip"
    leaves = [t.cuda().requires_grad_() for t in (q, k, v)]
    out, state = svg2_attention(*leaves, qc, kc, 0.9, 0.1, iters=10, seed=0)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = svg2_attention_reference(*ref_leaves, state["q_labels"].cpu(), state["k_labels"].cpu(), state["pairs"].cpu())
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, leaves, dout.cuda())
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.double())
    errs = [rel_err(out.cpu(), ref)] + [rel_err(g.cpu(), r) for g, r in zip(grads, ref_grads)]
    tol = RTOL[dtype]
    bad = errs[0] > tol or any(e > 2 * tol for e in errs[1:])
    return ("FAIL" if bad else "ok  ") + " rel err out/dq/dk/dv " + " ".join(f"{e:.2e}" for e in errs) + \
        f" (density {state['density']:.2f})"


# XQuant's group quantizer (ops xquant_quantize / xquant_dequantize) against its CPU kernel on the same
# input: name, rows, K, group_size, bits, zero, dtype, layout ("contig"; "rows": strided rows read in
# place; "cols": a strided last dim, copied by the op; "nonfinite": NaN / inf in some groups). The first
# groups of rows 0-2 are constant (1.5, -0.75, 0). Both take their quotients in double, so the bytes should be
# identical; they may differ at rounding ties only: scales within one float16 step, dequantized values
# within one scale of each other and within half a scale of x.
XQUANT_CASES = [
    ("xquant 2-bit int bf16", 33, 256, 128, 2, "int", torch.bfloat16, "contig"),
    ("xquant 3-bit int fp16, K=200 g32", 17, 200, 32, 3, "int", torch.float16, "contig"),
    ("xquant 3-bit int fp32, 42 groups of 8", 9, 333, 8, 3, "int", torch.float32, "contig"),
    ("xquant 4-bit fp16-zero fp32, K=7 g8", 9, 7, 8, 4, "fp16", torch.float32, "contig"),
    ("xquant 8-bit int fp32, K=130 g64", 40, 130, 64, 8, "int", torch.float32, "contig"),
    ("xquant 2-bit fp16-zero fp16, K=3000 g1024", 5, 3000, 1024, 2, "fp16", torch.float16, "contig"),
    ("xquant 4-bit int bf16 strided rows, K=99 g16", 21, 99, 16, 4, "int", torch.bfloat16, "rows"),
    ("xquant 3-bit fp16-zero bf16 strided rows", 25, 333, 64, 3, "fp16", torch.bfloat16, "rows"),
    ("xquant 8-bit fp16-zero fp32 strided cols", 12, 77, 24, 8, "fp16", torch.float32, "cols"),
    ("xquant 4-bit int fp16, 3000 rows of 5 groups", 3000, 40, 8, 4, "int", torch.float16, "contig"),
    ("xquant 4-bit int fp32 NaN/inf groups", 6, 100, 32, 4, "int", torch.float32, "nonfinite"),
    ("xquant 2-bit fp16-zero bf16 NaN/inf groups", 6, 100, 32, 2, "fp16", torch.bfloat16, "nonfinite"),
    ("xquant empty (0 rows)", 0, 64, 32, 4, "int", torch.float32, "contig"),
]


# XQuant's fused products (xquant_matmul, xquant_weighted_sum) on CUDA against float64 products of the
# float64 reference dequantization of the same bytes (quantized on the CPU): (name, op, rows or
# (batch, tokens), k, n or m, group, bits, zero, dtype). Edges: k ending mid-word, n / m / rows not
# multiples of the 64-tiles, a weight whose rows are not 16-byte aligned (k % 8 != 0).
XQUANT_MATMUL_CASES = [
    ("xquant_matmul 4-bit int bf16", "matmul", 130, 256, 72, 128, 4, "int", torch.bfloat16),
    ("xquant_matmul 3-bit fp16-zero fp16, k=100", "matmul", 65, 100, 33, 16, 3, "fp16", torch.float16),
    ("xquant_matmul 2-bit int fp32 (SIMT)", "matmul", 70, 200, 130, 32, 2, "int", torch.float32),
    ("xquant_matmul 8-bit int bf16, k=20 g8", "matmul", 3, 20, 5, 8, 8, "int", torch.bfloat16),
    ("xquant_matmul 4-bit int fp16, 4096 rows", "matmul", 4096, 512, 256, 128, 4, "int", torch.float16),
    ("xquant_weighted_sum 4-bit int bf16", "wsum", (2, 300), 256, 4, 128, 4, "int", torch.bfloat16),
    ("xquant_weighted_sum 3-bit fp16-zero fp16 m=40", "wsum", (1, 77), 136, 40, 8, 3, "fp16", torch.float16),
    ("xquant_weighted_sum 2-bit int fp32 (SIMT)", "wsum", (3, 129), 200, 17, 32, 2, "int", torch.float32),
    ("xquant_weighted_sum 4-bit int bf16 m=70", "wsum", (1, 1000), 1024, 70, 128, 4, "int", torch.bfloat16),
]


def run_xquant_matmul_case(case, gen) -> str:
    from genaccel.kvcache.xquant import reference as R

    name, op, rows, k, n, group, bits, zero, dtype = case
    batch, tokens = rows if op == "wsum" else (1, rows)
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(quantizer_input(gen, batch * tokens, k), bits, group,
                                                              zero == "fp16")
    x = R.dequantize(codes, scales, zeros, bits, group, k, zero)
    cuda = [t.cuda() for t in (codes, scales, zeros)]
    if op == "matmul":
        w = torch.randn(n, k, generator=gen).to(dtype)
        b = torch.randn(n, generator=gen).to(dtype)
        got = torch.ops.genaccel.xquant_matmul(*cuda, bits, group, k, w.cuda(), b.cuda()).cpu()
        want = x @ w.double().T + b.double()
    else:
        a = torch.softmax(torch.randn(batch, n, tokens, generator=gen), -1).to(dtype)
        got = torch.ops.genaccel.xquant_weighted_sum(a.cuda(), *cuda, bits, group, k).cpu()
        want = a.double() @ x.view(batch, tokens, k)
    if got.dtype != dtype or got.shape != want.shape:
        return f"FAIL dtype/shape {got.dtype} {tuple(got.shape)}"
    err = rel_err(got, want)
    # 16-bit: the dequantized tile is rounded to the dtype, the output too; float32: exact FMAs.
    limit = 1e-5 if dtype == torch.float32 else 2 * RTOL[dtype]
    return f"ok rel err {err:.2e}" if err < limit else f"FAIL rel err {err:.2e} >= {limit:.0e}"


# DC-AE's ops on CUDA against their float64 references: (name, op, x shape, args, dtype). conv args:
# (Cout, (kt, kh, kw), chunk, with a cache); shuffle args: (r, rt, out_channels); lite_mla args:
# (head_dim,). Edges: Cout and positions not multiples of the 64-tiles, Cin 3 (K much below one K step),
# kt 1 and 5, a 1-frame chunk; a head whose ReLU(k) is all zero (float16: eps underflows).
DCAE_CASES = [
    ("dcae conv bf16 chunk 4 + cache", "conv", (1, 16, 8, 10, 12), (24, (3, 3, 3), 4, True), torch.bfloat16),
    ("dcae conv fp16 Cin 3, chunk 2", "conv", (2, 3, 4, 9, 7), (70, (3, 3, 3), 2, False), torch.float16),
    ("dcae conv fp32 (SIMT) kt 5", "conv", (1, 5, 10, 6, 6), (9, (5, 3, 1), 5, True), torch.float32),
    ("dcae conv bf16 kt 1, chunk 1", "conv", (1, 40, 3, 5, 70), (33, (1, 3, 3), 1, False), torch.bfloat16),
    ("dcae space_to_channel bf16 3-D", "s2c", (1, 8, 8, 6, 10), (2, 4, 16), torch.bfloat16),
    ("dcae space_to_channel fp32 2-D r 4", "s2c", (2, 3, 8, 12), (4, 1, 24), torch.float32),
    ("dcae channel_to_space fp16 3-D", "c2s", (1, 16, 2, 3, 5), (2, 4, 8), torch.float16),
    ("dcae channel_to_space fp32 2-D", "c2s", (1, 6, 5, 7), (2, 1, 12), torch.float32),
    ("dcae lite_mla bf16 d32", "mla", (2, 4 * 96, 16, 20), (32,), torch.bfloat16),
    ("dcae lite_mla fp16 d32 dead head", "mla", (1, 2 * 96, 8, 8), (32,), torch.float16),
    ("dcae lite_mla fp32 d17 odd map", "mla", (1, 3 * 51, 7, 300), (17,), torch.float32),
    ("dcae lite_mla fp32 d256 one position", "mla", (1, 768, 1, 1), (256,), torch.float32),
]


def run_dcae_case(case, gen) -> str:
    from genaccel.autoencoder.dcae import reference as R

    name, op, shape, args, dtype = case
    x = torch.randn(*shape, generator=gen).to(dtype)
    if op == "conv":
        cout, kernel, chunk, with_cache = args
        w = (torch.randn(cout, shape[1], *kernel, generator=gen) / (shape[1] * kernel[0] * kernel[1] * kernel[2]) ** 0.5).to(dtype)
        b = torch.randn(cout, generator=gen).to(dtype)
        cache = torch.randn(shape[0], shape[1], (kernel[0] - 1) // 2, *shape[3:], generator=gen).to(dtype) if with_cache else None
        got = torch.ops.genaccel.dcae_chunk_causal_conv3d(x.cuda(), w.cuda(), b.cuda(), chunk,
                                                          None if cache is None else cache.cuda()).cpu()
        want = R.chunk_causal_conv3d(x, w, b, chunk, cache)
    elif op == "mla":
        if "dead head" in name:
            x[:, 32:64] = -x[:, 32:64].abs()
        got = torch.ops.genaccel.dcae_lite_mla(x.cuda(), *args).cpu()
        want = R.lite_mla(x, *args)
        if not torch.isfinite(got).all():
            return "FAIL non-finite output"
    else:
        fn = torch.ops.genaccel.dcae_space_to_channel if op == "s2c" else torch.ops.genaccel.dcae_channel_to_space
        got = fn(x.cuda(), *args).cpu()
        want = (R.space_to_channel if op == "s2c" else R.channel_to_space)(x, *args)
    if got.dtype != dtype or got.shape != want.shape:
        return f"FAIL dtype/shape {got.dtype} {tuple(got.shape)}"
    err = rel_err(got, want)
    limit = 1e-5 if dtype == torch.float32 else RTOL[dtype]
    return f"ok rel err {err:.2e}" if err < limit else f"FAIL rel err {err:.2e} >= {limit:.0e}"


def run_xquant_case(case, gen) -> str:
    from genaccel.kvcache.xquant import reference as R

    name, rows, k, group, bits, zero, dtype, layout = case
    x = quantizer_input(gen, rows, k)
    for r, c in enumerate((1.5, -0.75, 0.0)[:rows]):
        x[r, :group] = c
    if layout == "nonfinite":
        x[0, -1], x[1, 0], x[-1, k // 2] = math.nan, math.inf, -math.inf
    x = x.to(dtype)
    if layout == "rows":  # row stride k + 5, last dim contiguous
        xc = torch.zeros(rows, k + 5, dtype=dtype, device="cuda")[:, :k]
    elif layout == "cols":  # last dim stride 2
        xc = torch.zeros(rows, 2 * k, dtype=dtype, device="cuda")[:, ::2]
    else:
        xc = torch.empty(rows, k, dtype=dtype, device="cuda")
    xc.copy_(x)
    fp16_zero = zero == "fp16"
    got = [t.cpu() for t in torch.ops.genaccel.xquant_quantize(xc, bits, group, fp16_zero)]
    want = list(torch.ops.genaccel.xquant_quantize(x, bits, group, fp16_zero))
    if any(g.shape != w.shape or g.dtype != w.dtype for g, w in zip(got, want)):
        return f"FAIL shapes/dtypes {[(tuple(t.shape), t.dtype) for t in got]}"
    groups = want[1].shape[1]
    group_of = torch.arange(k) // group

    def steps(a, b):  # float16 steps between two tensors' bit patterns, at most
        d = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
        return d, (int(d.max()) if d.numel() else 0)

    step, top = steps(got[1], want[1])
    if not torch.equal(got[1].isnan(), want[1].isnan()) or top > 1:
        return f"FAIL scales: {top} float16 steps from the CPU op's, NaN groups equal: " \
               f"{torch.equal(got[1].isnan(), want[1].isnan())}"
    if fp16_zero:
        zstep, ztop = steps(got[2], want[2])
        if not torch.equal(got[2].isnan(), want[2].isnan()) or ztop > 1:
            return f"FAIL fp16 zeros: {ztop} float16 steps from the CPU op's"
        zero_diff = int((zstep > 0).sum())
    else:
        zero_diff = int((R.unpack(got[2], bits, groups) != R.unpack(want[2], bits, groups)).sum())
    code_diff = int((R.unpack(got[0], bits, k) != R.unpack(want[0], bits, k)).sum())
    if code_diff > max(2, x.numel() // 100):
        return f"FAIL {code_diff} of {x.numel()} codes differ from the CPU op's (more than rounding ties)"

    dq = torch.ops.genaccel.xquant_dequantize
    # The dequantize kernel against the CPU kernel on the same bytes, in every output dtype.
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        a = dq(*(t.cuda() for t in got), bits, group, k, dt).cpu()
        b = dq(*got, bits, group, k, dt)
        fi = torch.finfo(dt)
        if a.dtype != dt or not torch.allclose(a.float(), b.float(), rtol=fi.eps, atol=fi.tiny, equal_nan=True):
            return f"FAIL dequantize ({dt}) differs from the CPU op's on the same bytes"
    # The GPU's bytes against the CPU's, both dequantized by the CPU op: one scale apart at most (a tie
    # flips a code by one), within half a scale of x, NaN in the same places.
    mine = dq(*got, bits, group, k, torch.float32)
    ref = dq(*want, bits, group, k, torch.float32)
    if not torch.equal(mine.isnan(), ref.isnan()):
        return "FAIL dequantized NaN positions differ from the CPU op's"
    ok = ~ref.isnan()
    s_gpu = got[1].float()[:, group_of]
    s_max = torch.maximum(s_gpu, want[1].float()[:, group_of])
    if not ((mine - ref).abs()[ok] <= (s_max * (1 + 1e-5) + 1e-6)[ok]).all():
        return "FAIL dequantized values more than one scale from the CPU op's"
    xf = x.float()
    err = (mine - xf).abs()
    if not (err[ok] <= (s_gpu / 2 * (1 + 1e-4) + 1e-6 * xf.abs() + 1e-7)[ok]).all():
        return "FAIL |x - dequantize(quantize(x))| above half a scale"
    identical = all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, want))
    if identical:
        return "ok   codes, scales and zeros bit-identical to the CPU op's"
    return f"ok   {code_diff} codes, {zero_diff} zero points, {int((step > 0).sum())} scales differ (ties)"


def child_main(args) -> int:
    """One SLA case, for run_sla_case_in_child: its result string goes to args.result."""
    case = next(c for c in SLA_CASES if c[0] == args.sla_case)
    result = run_sla_case_here(case, torch.Generator().manual_seed(args.seed))
    with open(args.result, "w") as f:
        f.write(result + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sla-case", help=argparse.SUPPRESS)  # the child of run_sla_case_in_child
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"{PROG}: no CUDA device visible to torch", file=sys.stderr)
        return 2
    import genaccel

    if not genaccel.has_cuda_kernels():
        print(f"{PROG}: genaccel has no CUDA kernels in this build: {genaccel.build_info()}", file=sys.stderr)
        return 2
    if args.sla_case is not None:
        return child_main(args)
    print(f"{PROG} on {torch.cuda.get_device_name()}, genaccel {genaccel.build_info()}")
    gen = torch.Generator().manual_seed(1234)
    failed = passed = 0
    runs = ([(case[0], run_case, case, case[-1]) for case in CASES]
            + [(case[0], run_sla_case, case, True) for case in SLA_CASES]
            + [(case[0], run_select_case, case, True) for case in SELECT_CASES]
            + [(case[0], run_delta_case, case, True) for case in DELTA_CASES]
            + [(case[0], run_trusted_plan_case, case, True) for case in TRUSTED_PLAN_CASES]
            + [(case[0], run_varblock_case, case, True) for case in VARBLOCK_CASES]
            + [(case[0], run_trusted_offsets_case, case, True) for case in TRUSTED_OFFSETS_CASES]
            + [(case[0], run_svg2_case, case, True) for case in SVG2_CASES]
            + [(case[0], run_xquant_case, case, True) for case in XQUANT_CASES]
            + [(case[0], run_xquant_matmul_case, case, True) for case in XQUANT_MATMUL_CASES]
            + [(case[0], run_dcae_case, case, True) for case in DCAE_CASES])
    if torch.cuda.get_device_capability() == (9, 0) and os.environ.get("GENACCEL_SKIP_WGMMA") != "1":
        runs += [(f"wgmma {case[0]}", run_case_wgmma, case, case[-1]) for case in CASES]
        runs += [(f"wgmma {case[0]}", with_wgmma(run_trusted_plan_case), case, True) for case in TRUSTED_PLAN_CASES]
    for name, run, case, required in runs:
        try:
            result = run(case, gen)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            if not required:
                result = f"unsupported (optional case): {type(exc).__name__}: {first}"
            else:
                traceback.print_exc()
                result = f"FAIL raised {type(exc).__name__}: {first}"
        bad = result.startswith("FAIL")
        failed += bad
        passed += result.startswith("ok")
        print(f"{'FAIL' if bad else 'pass'}  {name:<34} {result}", flush=True)
    print(f"{PROG}: {passed} ok, {failed} failed, {len(runs) - passed - failed} unsupported optional")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
