"""CPU speed sanity check of SVG2's k-means (not a test): B=1, H=4, N=16384, D=64 float32, C=256,
2 Lloyd iterations from a given init (SVG2's warm-start step), genaccel (op svg2_kmeans: 2 updates and
the final assignment, 3 assignments in all) against a plain torch version (torch.cdist + argmin +
scatter_add means; 2 assignments, its labels those of the last one, and with --consistent a third
cdist so that its labels match its returned centroids, as genaccel's do). Median of repeats."""

import argparse
import statistics
import time

import torch

import genaccel  # noqa: F401
from genaccel.attention.svg2 import kmeans


def torch_kmeans(x, init, iters, final_assign):
    B, H, N, D = x.shape
    C = init.shape[2]
    c = init.clone()
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(-1)
        sums = torch.zeros_like(c).scatter_add_(2, labels.unsqueeze(-1).expand(B, H, N, D), x)
        counts = torch.zeros(B, H, C, dtype=x.dtype).scatter_add_(2, labels, torch.ones_like(labels, dtype=x.dtype))
        c = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp(min=1).unsqueeze(-1), c)
    if final_assign:
        labels = torch.cdist(x, c).argmin(-1)
    return labels, c


def timed(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    B, H, N, D, C, iters = 1, 4, 16384, 64, 256, 2
    x = torch.randn(B, H, N, D, generator=gen)
    init = x[:, :, torch.randperm(N, generator=gen)[:C]].contiguous()
    ours = timed(lambda: kmeans(x, C, iters=iters, init=init, tol=0.0), args.repeats)
    plain = timed(lambda: torch_kmeans(x, init, iters, False), args.repeats)
    plain3 = timed(lambda: torch_kmeans(x, init, iters, True), args.repeats)
    labels, cent, _ = kmeans(x, C, iters=iters, init=init, tol=0.0)
    ref_labels, ref_cent = torch_kmeans(x, init, iters, True)
    agree = (labels == ref_labels).float().mean().item()
    err = ((cent - ref_cent).norm() / ref_cent.norm()).item()
    print(f"threads={torch.get_num_threads()} B={B} H={H} N={N} D={D} C={C} iters={iters}")
    print(f"genaccel svg2_kmeans (3 assignments): {ours * 1e3:8.1f} ms")
    print(f"torch cdist+argmin+scatter_add (2 assignments): {plain * 1e3:8.1f} ms  ({plain / ours:.2f}x ours)")
    print(f"torch, plus the final assignment (3): {plain3 * 1e3:8.1f} ms  ({plain3 / ours:.2f}x ours)")
    print(f"labels agreeing with torch's: {agree:.5f}; centroid rel. diff {err:.2e}")


if __name__ == "__main__":
    main()
