"""The `genaccel` command: `genaccel bench ...` (benchmarks), `genaccel ae ...` (autoencoder round trips),
`genaccel info` (build and device).

Subcommands keep room for more (e.g. SciML scoring) without changing how the existing ones parse.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_bench(args) -> int:
    from .benchmarks import BenchError, benchmarks, run_bench
    from .benchmarks.registry import BROKEN, parse_sets

    if args.list:
        known = benchmarks()
        width = max((len(name) for name in known), default=0)
        for name, bench in known.items():
            print(f"{name:<{width}}  {bench.description}")
        for mod, why in BROKEN.items():
            print(f"(genaccel.benchmarks.{mod} failed to import: {why})")
        return 0
    try:
        return run_bench(
            family=args.family,
            device=args.device,
            quick=args.quick,
            json_path=args.json,
            plot_path=args.plot,
            overrides=parse_sets(args.set),
            progress=False if args.no_progress else None,
        )
    except (BenchError, ValueError) as exc:
        print(f"genaccel bench: {exc}", file=sys.stderr)
        return 2


def _cmd_video_demo(args) -> int:
    from .integrations.video_demo import main as video_demo

    return video_demo(args)


def _cmd_ae(args) -> int:
    from .autoencoder.dcae.roundtrip import main as ae_main

    try:
        return ae_main(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"genaccel ae: {exc}", file=sys.stderr)
        return 2


def _cmd_info(args) -> int:
    import json
    import os
    import platform

    import torch

    try:
        import genaccel
    except Exception as exc:  # the extension failed to load: say so instead of a traceback
        print(f"genaccel failed to import: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    info = {
        "genaccel": genaccel.build_info(),
        "genaccel_has_cuda_kernels": genaccel.has_cuda_kernels(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["cuda_devices"].append(
                {"name": p.name, "capability": f"{p.major}.{p.minor}",
                 "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
            )
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import dataclasses

    from .benchmarks import benchmarks

    known = benchmarks()
    parser = argparse.ArgumentParser(prog="genaccel", description="genaccel kernels: benchmarks, the video demo and build facts")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    bench = sub.add_parser(
        "bench",
        help="time genaccel against its baselines",
        description="Times genaccel against the baselines a PyTorch user would use instead, interleaved in "
        "one process (median of rounds after warm-up), and checks its error against the float64 reference. "
        "Exit code: 0 ok, 1 genaccel raised or exceeded its error bound on some row, 2 could not run.",
    )
    bench.add_argument("--family", default="attention", choices=sorted(known),
                       help="which benchmark to run (--list says what each is)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks, one a line, and exit")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--quick", action="store_true", help="small sizes, few repeats, no compiled baselines")
    bench.add_argument("--json", metavar="FILE", help="write environment and all rows as JSON")
    bench.add_argument("--plot", metavar="FILE", help="write the benchmark's plot as PNG (needs matplotlib)")
    bench.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override a config field for every configuration, e.g. --set N=8192 "
                       "--set densities=0.1,1.0 --set backend=sm90; keys: " + "; ".join(
                           f"{name}: {' '.join(f.name for f in dataclasses.fields(b.config))}"
                           for name, b in known.items()))
    bench.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    bench.set_defaults(func=_cmd_bench)

    demo = sub.add_parser(
        "video-demo",
        help="a Wan transformer's denoising loop, stock processors vs a genaccel method (needs diffusers)",
        description="Runs a small random-weight WanTransformer3DModel (or one from a local folder) through "
        "a flow-matching denoising loop twice from the same seed, with the stock attention processors and "
        "with genaccel's self-attention, step by step; reports per-step transformer time, the share of "
        "self-attention, the end-to-end speedup and the final latents' error / PSNR against the stock run.",
    )
    demo.add_argument("--method", default="sla", choices=["sla", "radial", "svg2", "block_topk", "dense"])
    demo.add_argument("--frames", type=int, default=17, help="video frames, 4k + 1 (default 17: 5 latent frames)")
    demo.add_argument("--size", default="480x832", help="video HxW in pixels, multiples of 16 (default 480x832: "
                      "7,800 tokens at 17 frames)")
    demo.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    demo.add_argument("--model", metavar="PATH", help="a local WanTransformer3DModel folder (or a pipeline "
                      "folder with transformer/); default: a random 2-layer Wan built here")
    demo.add_argument("--dense-layers", type=int, default=0, help="first layers kept dense")
    demo.add_argument("--dense-steps", type=int, default=0, help="first denoising steps kept dense")
    demo.add_argument("--guidance", type=float, default=1.0, help="CFG scale; > 1 runs a batch of 2")
    demo.add_argument("--option", metavar="KEY=VALUE", action="append", default=[],
                      help="a method option, e.g. --option topk=0.05 --option decay_factor=0.2")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="FILE", help="write the summary and per-step rows as JSON")
    demo.add_argument("--plot", metavar="FILE", help="write per-step time and error as PNG")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    demo.set_defaults(func=_cmd_video_demo)

    ae = sub.add_parser(
        "ae",
        help="DC-AE / DC-AE-V: encode, decode or round-trip a video file or a folder of frames",
        description="Streams a video (PyAV: .mp4 and the like) or a folder of PNG/JPEG frames through a DC-AE-V "
        "tile by tile (memory flat in the video's length), or through a DC-AE frame by frame. encode writes the "
        "latent as safetensors; decode writes a video (.mp4) or a PNG folder; roundtrip does both and reports "
        "PSNR/SSIM of the 8-bit frames and the compression ratio as JSON.",
    )
    ae.add_argument("action", choices=["encode", "decode", "roundtrip"])
    ae.add_argument("--input", required=True, metavar="PATH", help="video file or frame folder (decode: a latent file)")
    ae.add_argument("--model", metavar="PATH", help="a folder saved by genaccel, a diffusers AutoencoderDC folder, "
                    "an original DC-AE folder (config.json with model_name) or an original checkpoint file with "
                    "--config; default: the tiny DC-AE-V trained by bench/dcae_train_tiny.py")
    ae.add_argument("--config", help="registered config name for an original checkpoint file, e.g. dc-ae-v-f32t4c32-1.0")
    ae.add_argument("--output", metavar="PATH", help="encode: latent file (default latent.safetensors); decode: "
                    "video or folder (default decoded.mp4); roundtrip: optional reconstruction")
    ae.add_argument("--tile", type=int, default=0, help="spatial tiles of this many pixels for large frames "
                    "(0: whole frames); DC-AE-V crops keep their own halo caches, so streaming still holds")
    ae.add_argument("--overlap", type=int, help="tile overlap in pixels (default: a quarter of the tile)")
    ae.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ae.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    ae.add_argument("--no-progress", action="store_true", help="no progress bar")
    ae.set_defaults(func=_cmd_ae)

    info = sub.add_parser("info", help="print how genaccel was built and what devices torch sees")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
