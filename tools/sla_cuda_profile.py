"""Where SLA's CUDA forward and backward spend their time: each stage timed with CUDA events
(medians), then the GPU kernels of one forward and of one backward from torch.profiler. Diagnostic
output only (not a result file).

    python tools/sla_cuda_profile.py [--n 32760] [--heads 12] [--topk 0.05]
"""

import argparse
import functools
import math
import os
import statistics

import torch

import genaccel


def cuda_ms(fn, reps=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32760)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--topk", type=float, default=0.05)
    ap.add_argument("--low-k", type=float, default=0.10)
    args = ap.parse_args()
    torch.manual_seed(0)
    B, H, N, D, bq, bk = 1, args.heads, args.n, args.dim, 64, 64
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    w, b = torch.randn(D, D, device="cuda") / math.sqrt(D), torch.zeros(D, device="cuda")
    scale = D ** -0.5
    codes, kv_indices, kv_counts = genaccel.sla_block_map(q, k, args.topk, args.low_k, (bq, bk))
    op_args = (q, k, v, codes, kv_indices, kv_counts, bq, bk, scale, "softmax", False, w)
    # As sparse_linear_attention calls them: the plan from sla_block_map taken on trust (no sync).
    sla_fwd = functools.partial(torch.ops.genaccel.sla_fwd, check_plan=False)
    sla_bwd = functools.partial(torch.ops.genaccel.sla_bwd, check_plan=False)
    stages = {
        "sdpa forward (default backend)": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        "sparse_linear_attention (all)": lambda: genaccel.sparse_linear_attention(
            q, k, v, w, b, args.topk, args.low_k, (bq, bk)),
        "  sla_block_map": lambda: genaccel.sla_block_map(q, k, args.topk, args.low_k, (bq, bk)),
        "  sla_fwd op": lambda: sla_fwd(*op_args),
        "  sla_fwd op, plan checked (a sync)": lambda: torch.ops.genaccel.sla_fwd(*op_args),
        "  sla_fwd op, float32 GEMMs": lambda: with_env("GENACCEL_SLA_FLOAT32_GEMMS", sla_fwd, *op_args),
        "  sla_fwd op, one stream": lambda: with_env("GENACCEL_SLA_ONE_STREAM", sla_fwd, *op_args),
        "    block-sparse kernel alone": lambda: torch.ops.genaccel.block_sparse_attn_fwd(
            q, k, v, kv_indices, kv_counts, bq, bk, scale),
    }
    if WGMMA:
        stages["    block-sparse kernel alone, wgmma"] = lambda: with_env(
            "GENACCEL_ATTENTION_SM90", torch.ops.genaccel.block_sparse_attn_fwd, q, k, v, kv_indices, kv_counts,
            bq, bk, scale)
        stages["sparse_linear_attention (all), wgmma"] = lambda: with_env(
            "GENACCEL_ATTENTION_SM90", genaccel.sparse_linear_attention, q, k, v, w, b, args.topk, args.low_k,
            (bq, bk))
        stages["sdpa forward (flash)"] = lambda: flash(torch.nn.functional.scaled_dot_product_attention, q, k, v)
    with torch.no_grad():
        print(f"SLA CUDA forward, B{B} H{H} N{N} D{D} bf16, topk {args.topk}, low_k {args.low_k}, "
              f"{torch.cuda.get_device_name()}, critical blocks/row {kv_indices.shape[-1]}")
        for name, fn in stages.items():
            print(f"{name:<40} {cuda_ms(fn):8.3f} ms")
        print(kernel_table(lambda: sla_fwd(*op_args)))
        print("sla_block_map:")
        print(kernel_table(lambda: genaccel.sla_block_map(q, k, args.topk, args.low_k, (bq, bk))))

        # Backward stages, on the saved tensors of one forward.
        out_s, lse, out_l, denom = sla_fwd(*op_args)
        go = torch.randn_like(q)
        delta = torch.ops.genaccel.attention_delta(go, out_s)
        bwd_args = (go, go, q, k, v, codes, kv_indices, kv_counts, out_s, lse, delta, out_l, denom, bq, bk,
                    scale, "softmax", False, w)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        sla_leaves = [t.detach().requires_grad_() for t in (q, k, v, w, b)]
        with torch.enable_grad():
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                sdpa_out = torch.nn.functional.scaled_dot_product_attention(*leaves)
            sla_out = genaccel.sparse_linear_attention(*sla_leaves, args.topk, args.low_k, (bq, bk))
        stages = {
            "sdpa backward (flash)": lambda: torch.autograd.grad(sdpa_out, leaves, go, retain_graph=True),
            "sparse_linear_attention backward (all)": lambda: torch.autograd.grad(
                sla_out, sla_leaves, go, retain_graph=True),
            "sla_bwd op": lambda: sla_bwd(*bwd_args),
            "sla_bwd op, plan checked (a sync)": lambda: torch.ops.genaccel.sla_bwd(*bwd_args),
            "sla_bwd op, float32 GEMMs": lambda: with_env("GENACCEL_SLA_FLOAT32_GEMMS", sla_bwd, *bwd_args),
            "sla_bwd op, one stream": lambda: with_env("GENACCEL_SLA_ONE_STREAM", sla_bwd, *bwd_args),
            "  block-sparse backward alone": lambda: torch.ops.genaccel.block_sparse_attn_bwd(
                go, q, k, v, delta, lse, kv_indices, kv_counts, bq, bk, scale),
        }
        if WGMMA:
            stages["  block-sparse backward alone, wgmma"] = lambda: with_env(
                "GENACCEL_ATTENTION_SM90", torch.ops.genaccel.block_sparse_attn_bwd, go, q, k, v, delta, lse,
                kv_indices, kv_counts, bq, bk, scale)
            stages["sla_bwd op, wgmma"] = lambda: with_env("GENACCEL_ATTENTION_SM90", sla_bwd, *bwd_args)
        print("backward:")
        for name, fn in stages.items():
            print(f"{name:<40} {cuda_ms(fn):8.3f} ms")
        print(kernel_table(lambda: sla_bwd(*bwd_args)))


# The opt-in wgmma kernels exist on sm_90; bench/gpu_check.sh sets GENACCEL_SKIP_WGMMA=1 when they failed its probe.
WGMMA = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and \
    os.environ.get("GENACCEL_SKIP_WGMMA") != "1"


def with_env(flag, fn, *args):
    """fn(*args) with the environment switch `flag` set to 1: GENACCEL_SLA_FLOAT32_GEMMS (the linear
    branch at float32 accuracy), GENACCEL_ATTENTION_SM90 (the wgmma kernels), GENACCEL_SLA_ONE_STREAM
    (both branches on one stream)."""
    os.environ[flag] = "1"
    try:
        return fn(*args)
    finally:
        del os.environ[flag]


def flash(fn, *args):
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return fn(*args)


def kernel_table(fn):
    """torch.profiler's table of the GPU kernels of one call of fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)


if __name__ == "__main__":
    main()
