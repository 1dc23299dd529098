"""A small DC-AE-V trained here, because no released weights are reachable: `TINY_CONFIG` (f4t4c16, the
released model's structure at a fraction of its width and depth) trained for a few minutes on 2 CPU
cores on procedural videos (synthetic.py), so that `genaccel ae roundtrip` has a meaningful PSNR to show.
The weights are cached under genaccel's cache folder ($GENACCEL_CACHE, default ~/.cache/genaccel),
keyed by every training setting, never committed.

    python bench/dcae_train_tiny.py [--minutes M] [--seed S] [--json FILE] [--save DIR] [--clip FILE]

Training: AdamW, linear warm-up then cosine decay over the time budget, L1 + MSE loss on random
32x32 crops of 64x64 clips of 8 frames (one chunk; the model is convolutional, so it runs on any multiple of 8x8
pixels and 8 frames), every residual branch's final norm zero-initialised so training starts from the
parameter-free shortcuts (residual autoencoding). Evaluated on held-out clips from another seed as
8-bit frames, the way `genaccel ae roundtrip` measures a real video.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ..._utils import cache_dir
from ...benchmarks.timing import environment
from ..metrics import psnr_from_mse, ssim
from .checkpoint import load, save
from .synthetic import moving_shapes
from .video import DCAEV, DCAEVConfig, ResBlock3d

# f4 t4 c16 (12x fewer values than the pixels): an f8 variant learnt far slower in a few CPU minutes
TINY_CONFIG = DCAEVConfig(latent_channels=16, block_out_channels=(16, 32, 64, 64), layers_per_block=(0, 1, 1, 1),
                          temporal_down_stage=2, chunk=8, latent_chunk=2, scaling_factor=1.0)
HELD_OUT_SEED = 12345  # training clips come from `seed`; this one is never trained on
EVAL_SIZE = 64


@dataclass
class TrainSettings:
    minutes: float = 5.0
    seed: int = 0
    crop: int = 32
    batch: int = 16
    lr: float = 2e-3
    version: int = 1  # bump when the recipe or the data generator changes

    def key(self) -> str:
        fields = {"settings": asdict(self), "config": asdict(TINY_CONFIG)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def model_dir(settings: TrainSettings) -> Path:
    return cache_dir() / "dcae_tiny" / settings.key()


def default_model_path() -> str:
    """The cached model of the default settings (what `make demo` trains)."""
    path = model_dir(TrainSettings())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no --model given and no tiny DC-AE-V trained yet at {path}; run "
                                f"`python bench/dcae_train_tiny.py` first (about {TrainSettings().minutes:g} minutes)")
    return str(path)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def evaluate(model: DCAEV, clips: int = 4, frames: int = 16, size: int = EVAL_SIZE) -> dict:
    """PSNR (dB) and SSIM of 8-bit held-out frames through encode + decode."""
    video = _to_uint8(moving_shapes(clips, frames, size, size, seed=HELD_OUT_SEED))
    model.eval()
    with torch.inference_mode():
        recon = _to_uint8(model(video / 127.5 - 1))
    model.train()
    a = video.transpose(1, 2).flatten(0, 1).double()  # (clips * frames, 3, H, W)
    b = recon.transpose(1, 2).flatten(0, 1).double()
    err = (a - b).pow(2).mean().item()
    return {"psnr_db": psnr_from_mse(err, 255.0), "ssim": ssim(a, b, data_range=255.0).mean().item(),
            "clips": clips, "frames": frames, "size": size}


def train(settings: TrainSettings, log=print) -> Path:
    """Train (or find in the cache) the tiny model; returns its folder (checkpoint.save layout plus
    train_log.json)."""
    folder = model_dir(settings)
    if (folder / "train_log.json").is_file():
        log(f"dcae tiny: cached model {folder}")
        return folder
    torch.manual_seed(settings.seed)
    model = DCAEV(TINY_CONFIG)
    for m in model.modules():  # residual branches start at zero: the model starts as its shortcuts
        if isinstance(m, ResBlock3d):
            torch.nn.init.zeros_(m.norm.weight)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(settings.seed)
    start_eval = evaluate(model)
    log(f"dcae tiny: training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters for "
        f"{settings.minutes:g} min (held-out PSNR at init {start_eval['psnr_db']:.2f} dB)")
    budget, start, step, losses = settings.minutes * 60, time.perf_counter(), 0, []
    while (elapsed := time.perf_counter() - start) < budget:
        warm = min(1.0, (step + 1) / 20)
        for group in opt.param_groups:
            group["lr"] = settings.lr * warm * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        # crops of frames drawn at the evaluation size, so shapes and textures have the held-out scale
        x = moving_shapes(settings.batch, TINY_CONFIG.chunk, EVAL_SIZE, EVAL_SIZE, generator=g)
        i, j = torch.randint(0, EVAL_SIZE - settings.crop + 1, (2,), generator=g).tolist()
        x = x[..., i:i + settings.crop, j:j + settings.crop]
        y = model(x)
        loss = (y - x).abs().mean() + (y - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append([step, round(elapsed, 1), loss.item()])
        if step % 50 == 0:
            log(f"dcae tiny: step {step}  {elapsed:.0f}/{budget:.0f} s  loss {loss.item():.4f}")
    result = evaluate(model)
    log(f"dcae tiny: {step} steps, held-out PSNR {result['psnr_db']:.2f} dB, SSIM {result['ssim']:.4f}")
    folder.mkdir(parents=True, exist_ok=True)
    save(model, str(folder))
    with open(folder / "train_log.json", "w") as f:
        json.dump({"environment": environment(torch.device("cpu")), "settings": asdict(settings),
                   "config": asdict(TINY_CONFIG), "steps": step,
                   "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                   "held_out_at_init": start_eval, "held_out": result, "loss": losses}, f)
    return folder


def write_clip(path: str, frames: int = 32, height: int = 96, width: int = 128, seed: int = HELD_OUT_SEED + 1) -> None:
    """A held-out procedural clip as a video file or frame folder (the demo's input)."""
    from ..video_io import write_frames

    video = _to_uint8(moving_shapes(1, frames, height, width, seed=seed))[0].to(torch.uint8)
    write_frames(path, (video[:, t].permute(1, 2, 0).numpy() for t in range(frames)), fps=16.0)


def main(argv: Optional[List[str]] = None) -> int:
    defaults = TrainSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="training time budget")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--json", metavar="FILE", help="write the training log's summary (no loss curve) as JSON")
    p.add_argument("--save", metavar="DIR", help="also copy the trained model folder here")
    p.add_argument("--clip", metavar="FILE", help="write a held-out 32-frame 96x128 clip here (.mp4 or a folder)")
    args = p.parse_args(argv)
    settings = TrainSettings(minutes=args.minutes, seed=args.seed)
    folder = train(settings)
    with open(folder / "train_log.json") as f:
        summary = {k: v for k, v in json.load(f).items() if k != "loss"}
    summary["model"] = str(folder)
    print(json.dumps({k: summary.get(k) for k in ("steps", "seconds", "held_out_at_init", "held_out", "model")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.save:
        shutil.copytree(folder, args.save, dirs_exist_ok=True)
    if args.clip:
        os.makedirs(os.path.dirname(os.path.abspath(args.clip)), exist_ok=True)
        write_clip(args.clip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
