"""Where SLA's CUDA forward and backward spend their time: each stage timed with CUDA events
(medians), then the GPU kernels of one forward and of one backward from torch.profiler. Diagnostic
output only (not a result file).

The float32 linear branch is the ops' precision="fp32", the wgmma kernels backend="sm90" (sm_90 only;
GENACCEL_SKIP_WGMMA=1 skips them). The one-stream stages (GENACCEL_SLA_ONE_STREAM=1) run in a child
process of this script started with that variable set, since genaccel reads it once, when it loads
(docs/env.md); --ops-only is that child's mode (the sla_fwd and sla_bwd op stages alone). When this
process already runs with GENACCEL_SLA_ONE_STREAM=1 every stage is on one stream and no child runs.

    python tools/sla_cuda_profile.py [--n 32760] [--heads 12] [--topk 0.05]
"""

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys

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
    ap.add_argument("--ops-only", action="store_true",
                    help="time the sla_fwd and sla_bwd op stages only (the one-stream child's mode)")
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
    if args.ops_only:
        with torch.no_grad():
            ops_only(sla_fwd, sla_bwd, op_args, q, bq, bk, scale, w)
        return
    stages = {
        "sdpa forward (default backend)": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        "sparse_linear_attention (all)": lambda: genaccel.sparse_linear_attention(
            q, k, v, w, b, args.topk, args.low_k, (bq, bk)),
        "  sla_block_map": lambda: genaccel.sla_block_map(q, k, args.topk, args.low_k, (bq, bk)),
        "  sla_fwd op": lambda: sla_fwd(*op_args),
        "  sla_fwd op, plan checked (a sync)": lambda: torch.ops.genaccel.sla_fwd(*op_args),
        "  sla_fwd op, float32 GEMMs": lambda: sla_fwd(*op_args, precision="fp32"),
        "    block-sparse kernel alone": lambda: torch.ops.genaccel.block_sparse_attn_fwd(
            q, k, v, kv_indices, kv_counts, bq, bk, scale),
    }
    if WGMMA:
        stages["    block-sparse kernel alone, wgmma"] = lambda: torch.ops.genaccel.block_sparse_attn_fwd(
            q, k, v, kv_indices, kv_counts, bq, bk, scale, backend="sm90")
        stages["sparse_linear_attention (all), wgmma"] = lambda: genaccel.sparse_linear_attention(
            q, k, v, w, b, args.topk, args.low_k, (bq, bk), backend="sm90")
        stages["sdpa forward (flash)"] = lambda: flash(torch.nn.functional.scaled_dot_product_attention, q, k, v)
    with torch.no_grad():
        print(f"SLA CUDA forward, B{B} H{H} N{N} D{D} bf16, topk {args.topk}, low_k {args.low_k}, "
              f"{torch.cuda.get_device_name()}, critical blocks/row {kv_indices.shape[-1]}"
              + (", GENACCEL_SLA_ONE_STREAM=1: every stage on one stream" if ONE_STREAM else ""))
        for name, fn in stages.items():
            print(f"{name:<40} {cuda_ms(fn):8.3f} ms")
        print(kernel_table(lambda: sla_fwd(*op_args)))
        print("sla_block_map:")
        print(kernel_table(lambda: genaccel.sla_block_map(q, k, args.topk, args.low_k, (bq, bk))))

        # Backward stages, on the saved tensors of one forward.
        bwd_args = backward_args(sla_fwd, op_args, q, bq, bk, scale, w)
        go, delta, lse = bwd_args[0], bwd_args[10], bwd_args[9]
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
            "sla_bwd op, float32 GEMMs": lambda: sla_bwd(*bwd_args, precision="fp32"),
            "  block-sparse backward alone": lambda: torch.ops.genaccel.block_sparse_attn_bwd(
                go, q, k, v, delta, lse, kv_indices, kv_counts, bq, bk, scale),
        }
        if WGMMA:
            stages["  block-sparse backward alone, wgmma"] = lambda: torch.ops.genaccel.block_sparse_attn_bwd(
                go, q, k, v, delta, lse, kv_indices, kv_counts, bq, bk, scale, backend="sm90")
            stages["sla_bwd op, wgmma"] = lambda: sla_bwd(*bwd_args, backend="sm90")
        print("backward:")
        for name, fn in stages.items():
            print(f"{name:<40} {cuda_ms(fn):8.3f} ms")
        print(kernel_table(lambda: sla_bwd(*bwd_args)))
    if not ONE_STREAM:
        one_stream_child()


# The opt-in wgmma kernels exist on sm_90; bench/gpu_check.sh sets GENACCEL_SKIP_WGMMA=1 when they failed its probe.
WGMMA = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and \
    os.environ.get("GENACCEL_SKIP_WGMMA") != "1"
# Read by genaccel once, when it loaded (as the library parses it: exactly "1").
ONE_STREAM = os.environ.get("GENACCEL_SLA_ONE_STREAM") == "1"


def backward_args(sla_fwd, op_args, q, bq, bk, scale, w):
    """The positional arguments of op sla_bwd on the saved tensors of one forward (dO for both branches)."""
    q, k, v, codes, kv_indices, kv_counts = op_args[:6]
    out_s, lse, out_l, denom = sla_fwd(*op_args)
    go = torch.randn_like(q)
    delta = torch.ops.genaccel.attention_delta(go, out_s)
    return (go, go, q, k, v, codes, kv_indices, kv_counts, out_s, lse, delta, out_l, denom, bq, bk,
            scale, "softmax", False, w)


def ops_only(sla_fwd, sla_bwd, op_args, q, bq, bk, scale, w):
    """The op stages alone, on this process's streams setting (the one-stream child's output)."""
    bwd_args = backward_args(sla_fwd, op_args, q, bq, bk, scale, w)
    stages = {"  sla_fwd op": lambda: sla_fwd(*op_args), "sla_bwd op": lambda: sla_bwd(*bwd_args)}
    suffix = ", one stream" if ONE_STREAM else ""
    for name, fn in stages.items():
        print(f"{name + suffix:<40} {cuda_ms(fn):8.3f} ms", flush=True)


def one_stream_child():
    """The op stages again in `python THIS_SCRIPT --ops-only` started with GENACCEL_SLA_ONE_STREAM=1 (the
    same arguments, so the same inputs from the same seed)."""
    print("one stream (a child process with GENACCEL_SLA_ONE_STREAM=1):", flush=True)
    child_args = [a for a in sys.argv[1:] if a != "--ops-only"] + ["--ops-only"]
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *child_args],
                       env=dict(os.environ, GENACCEL_SLA_ONE_STREAM="1"))
    if r.returncode != 0:
        print(f"one-stream child process exited {r.returncode}")


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
