"""Where the wgmma attention kernels (the ops' backend="sm90", sm_90 only) go wrong, if they do:
one query block against one key block with inputs that expose each product on its own, compared
with float64 on the CPU. Diagnostic output only (bench/gpu_check.sh runs it on sm_90).

- lse = logsumexp(scale * Q K^T) per row: the Q K^T product alone (descriptors of K-major tiles).
- V = identity (key j -> feature j, repeated over 64-feature panels): out = P, the probabilities;
  out = P^T or a permuted P points at the MN-major read of V or at the P register layout.
- dO = identity: dV = P^T (the dK/dV kernel's P^T dO); dQ and dK against float64 autograd.

    python tools/wgmma_probe.py     # exit 0: all match (or not an sm_90 GPU), 1: some product is wrong
"""

import math
import sys

import torch


BACKEND = "sm90"  # the wgmma kernels


def max_err(got, want):
    return (got.double().cpu() - want).abs().max().item()


def bad(err, ref) -> bool:
    """Far beyond half-precision rounding: a layout or synchronisation error is of the size of ref."""
    return not err <= 2e-2 * ref.abs().max().item()


def probe(D, dtype, gen):
    import genaccel  # noqa: F401  (registers the ops)

    B, H, N = 1, 1, 64
    q = (torch.randn(B, H, N, D, generator=gen) * 0.5).to(dtype)
    k = (torch.randn(B, H, N, D, generator=gen) * 0.5).to(dtype)
    eye = (torch.arange(D).view(1, D) % 64 == torch.arange(N).view(N, 1)).to(dtype)  # (N, D)
    v = eye.view(B, H, N, D).clone()
    idx, cnt = torch.zeros(1, 1, 1, 1, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int32)
    scale = 1.0 / math.sqrt(D)

    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    p = torch.softmax(s, -1)
    lse = torch.logsumexp(s, -1)
    want_out = p @ v.double()

    args = [t.cuda() for t in (q, k, v, idx, cnt)]
    out, got_lse = torch.ops.genaccel.block_sparse_attn_fwd(*args, 64, 64, scale, backend=BACKEND)
    torch.cuda.synchronize()
    failed = bad(max_err(got_lse, lse), lse) or bad(max_err(out, want_out), want_out)
    lines = [f"D={D} {str(dtype).split('.')[-1]}: lse (Q K^T) max err {max_err(got_lse, lse):.2e}",
             f"  out = P (V identity) max err {max_err(out, want_out):.2e}"]
    if bad(max_err(out, want_out), want_out):
        p64 = p[0, 0]
        o = out[0, 0, :, :64].double().cpu()
        lines.append(f"    against P^T: {(o - p64.T).abs().max().item():.2e}; row sums of out (should be 1): "
                     f"{o.sum(-1)[:4].tolist()}")

    # Backward with dO = identity: dV = P^T dO = P^T (on the features the identity covers).
    go = eye.view(B, H, N, D).clone()
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref = torch.softmax((qd @ kd.transpose(-1, -2)) * scale, -1) @ vd
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), go.double())
    delta = torch.ops.genaccel.attention_delta(go.cuda(), out)
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(go.cuda(), *args[:3], delta, got_lse, *args[3:], 64, 64,
                                                          scale, backend=BACKEND)
    torch.cuda.synchronize()
    for name, g, r in (("dQ", dq, ref_grads[0]), ("dK", dk, ref_grads[1]), ("dV = P^T", dv, ref_grads[2])):
        failed |= bad(max_err(g, r), r)
        lines.append(f"  {name} max err {max_err(g, r):.2e} (max |ref| {r.abs().max().item():.2e})")
    return lines, failed


def main() -> int:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print("wgmma_probe: not an sm_90 GPU, nothing to probe")
        return 0
    gen = torch.Generator().manual_seed(0)
    failures = 0
    for D in (64, 128):
        for dtype in (torch.bfloat16, torch.float16):
            try:
                lines, failed = probe(D, dtype, gen)
                print("\n".join(lines), flush=True)
            except Exception as exc:  # a launch failure names its configuration and the probe goes on
                print(f"D={D} {dtype}: raised {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
                failed = True
            failures += failed
    print(f"wgmma_probe: {failures} of 4 configurations wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
