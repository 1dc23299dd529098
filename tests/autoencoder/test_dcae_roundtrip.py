"""`genaccel ae encode | decode | roundtrip` on real files (PNG folders, .mp4 through PyAV), the
model loader for every layout, PSNR/SSIM against a direct float64 computation, and the tiny trainer."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from genaccel.autoencoder import DCAE, DCAEV
from genaccel.autoencoder.dcae import checkpoint
from genaccel.autoencoder.dcae.roundtrip import to_frames, video_tiles
from genaccel.autoencoder.metrics import psnr, ssim
from genaccel.cli import main as cli

from test_dcae_model import TINY, randomize
from test_dcae_video import TINY as TINY_V


def frames(n=11, h=30, w=22, seed=0):
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, size=(h, w, 3))
    return [np.clip(base + 3 * t, 0, 255).astype(np.uint8) for t in range(n)]


def write_png_folder(folder, frs):
    os.makedirs(folder, exist_ok=True)
    for i, fr in enumerate(frs):
        Image.fromarray(fr).save(os.path.join(folder, f"{i:04d}.png"))


def read_png_folder(folder):
    return [np.asarray(Image.open(os.path.join(folder, n))) for n in sorted(os.listdir(folder))]


def ssim_direct(a, b, data_range, size=11, sigma=1.5):
    """Gaussian-window SSIM at every window that fits, one loop per position, float64."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2, n = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2, size * size
    vals = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum() * n / (n - 1)
            vb = (w * (pb - mb) ** 2).sum() * n / (n - 1)
            cab = (w * (pa - ma) * (pb - mb)).sum() * n / (n - 1)
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 14, 16, generator=g) * 255
    b = (a + torch.randn(a.shape, generator=g) * 20).clamp(0, 255)
    got = ssim(a, b, data_range=255.0)
    for i in range(2):
        want = np.mean([ssim_direct(a[i, c].double().numpy(), b[i, c].double().numpy(), 255.0) for c in range(3)])
        assert abs(got[i].item() - want) < 1e-9
    assert torch.allclose(ssim(a, a, data_range=255.0), torch.ones(2, dtype=torch.float64))
    a = a.double()
    assert abs(psnr(a, a + 5, data_range=255.0) - 20 * math.log10(255 / 5)) < 1e-9
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[..., :10, :], b[..., :10, :])


def test_tiles_pad_and_crop_exactly():
    frs = frames()
    tiles = list(video_tiles(frs, 8, 8))
    assert [real for _, real in tiles] == [8, 3]
    assert tiles[0][0].shape == (1, 3, 8, 32, 24)
    back = [fr for x, real in tiles for fr in to_frames(x, real, 30, 22)]
    assert all(np.array_equal(p, q) for p, q in zip(back, frs)) and len(back) == 11
    assert np.array_equal(list(to_frames(tiles[1][0], 8, 30, 22))[7], frs[-1])  # padding repeats the last frame


def video_model(tmp_path):
    model = randomize(DCAEV(TINY_V).eval(), 7)
    checkpoint.save(model, str(tmp_path / "model"))
    return model, str(tmp_path / "model")


def full_pass(model, frs):
    """The whole padded video through model() at once: what the streamed CLI must reproduce."""
    x, _ = next(video_tiles(frs, 16, model.config.spatial_compression))  # 11 real frames + 5 repeats
    with torch.no_grad():
        y = model(x)
    return list(to_frames(y, len(frs), 30, 22))


def test_roundtrip_cli_equals_the_full_pass(tmp_path, capsys):
    model, mdir = video_model(tmp_path)
    frs = frames()
    write_png_folder(tmp_path / "in", frs)
    summary = tmp_path / "rt.json"
    rc = cli(["ae", "roundtrip", "--input", str(tmp_path / "in"), "--model", mdir, "--output",
              str(tmp_path / "rt"), "--json", str(summary), "--no-progress"])
    assert rc == 0
    result = json.loads(summary.read_text())
    assert result["frames"] == 11 and (result["height"], result["width"]) == (30, 22)
    assert model.config.spatial_compression == 4
    assert result["latent_shape"] == [4, 4, 8, 6]  # 16 padded frames / 4, 32x24 / 4
    assert result["compression"] == pytest.approx(3 * 11 * 30 * 22 / (4 * 4 * 8 * 6))
    out = read_png_folder(tmp_path / "rt")
    want = full_pass(model, frs)
    assert len(out) == 11 and all(np.array_equal(p, q) for p, q in zip(out, want))
    a = torch.from_numpy(np.stack(frs)).double()
    b = torch.from_numpy(np.stack(out)).double()
    assert result["psnr_db"] == pytest.approx(psnr(a, b, data_range=255.0), rel=1e-9)

    # encode then decode through a latent file gives the same frames
    latent = tmp_path / "z.safetensors"
    assert cli(["ae", "encode", "--input", str(tmp_path / "in"), "--model", mdir, "--output", str(latent),
                "--no-progress"]) == 0
    assert cli(["ae", "decode", "--input", str(latent), "--model", mdir, "--output", str(tmp_path / "dec"),
                "--no-progress"]) == 0
    dec = read_png_folder(tmp_path / "dec")
    assert len(dec) == 11 and all(np.array_equal(p, q) for p, q in zip(dec, want))
    capsys.readouterr()


def test_roundtrip_cli_with_spatial_tiles(tmp_path, capsys):
    """--tile on a DC-AE-V: streamed and tiled, equal to the tiled passes over the whole video."""
    model, mdir = video_model(tmp_path)
    frs = frames()
    write_png_folder(tmp_path / "in", frs)
    assert cli(["ae", "roundtrip", "--input", str(tmp_path / "in"), "--model", mdir, "--output",
                str(tmp_path / "rt"), "--tile", "16", "--overlap", "4", "--no-progress"]) == 0
    x, _ = next(video_tiles(frs, 16, 4))
    with torch.no_grad():
        y = model.decode_tiled(model.encode_tiled(x, 16, 4), 16, 4)
    want = list(to_frames(y, 11, 30, 22))
    out = read_png_folder(tmp_path / "rt")
    assert len(out) == 11 and all(np.array_equal(p, q) for p, q in zip(out, want))
    capsys.readouterr()


def test_image_model_frame_by_frame(tmp_path):
    model = randomize(DCAE(TINY["in-style"]).eval(), 3)
    checkpoint.save(model, str(tmp_path / "img"))
    frs = frames(n=5, h=16, w=16)
    write_png_folder(tmp_path / "in", frs)
    assert cli(["ae", "roundtrip", "--input", str(tmp_path / "in"), "--model", str(tmp_path / "img"),
                "--output", str(tmp_path / "rt"), "--no-progress"]) == 0
    out = read_png_folder(tmp_path / "rt")
    x = torch.from_numpy(np.stack(frs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = ((model(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert len(out) == 5 and all(np.array_equal(p, q) for p, q in zip(out, want))


def test_mp4_through_pyav(tmp_path):
    pytest.importorskip("av")
    from genaccel.autoencoder.video_io import probe, read_frames, write_frames

    y, x = np.mgrid[0:32, 0:24]
    # smooth content (H.264's 4:2:0 chroma halves colour resolution, so noise would not survive)
    frs = [np.stack([x * 8, y * 6, np.full_like(x, 100 + 5 * t)], -1).astype(np.uint8) for t in range(9)]
    path = str(tmp_path / "clip.mp4")
    assert write_frames(path, frs, fps=12.0) == 9
    back = list(read_frames(path))
    count, fps = probe(path)
    assert len(back) == 9 and back[0].shape == (32, 24, 3) and fps == pytest.approx(12.0)
    assert count in (None, 9)
    err = np.mean([(p.astype(float) - q) ** 2 for p, q in zip(back, frs)])
    assert 10 * math.log10(255 ** 2 / err) > 35  # crf 12: near-lossless
    _, mdir = video_model(tmp_path)
    assert cli(["ae", "roundtrip", "--input", path, "--model", mdir, "--output", str(tmp_path / "rt.mp4"),
                "--no-progress"]) == 0
    assert len(list(read_frames(str(tmp_path / "rt.mp4")))) == 9


def test_load_every_layout(tmp_path):
    from safetensors.torch import save_file

    model = randomize(DCAE(TINY["sana-style"]).eval(), 5)
    # diffusers' folder
    diff = tmp_path / "diffusers"
    diff.mkdir()
    (diff / "config.json").write_text(json.dumps({"_class_name": "AutoencoderDC", **model.diffusers_config()}))
    save_file(model.state_dict(), str(diff / "diffusion_pytorch_model.safetensors"))
    # an original checkpoint file, with the config given
    save_file(model.original_state_dict(), str(tmp_path / "orig.safetensors"))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = model(x)
        for loaded in (checkpoint.load(str(diff)), checkpoint.load(str(tmp_path / "orig.safetensors"), TINY["sana-style"])):
            assert torch.equal(loaded(x), want)
    v = randomize(DCAEV(TINY_V).eval(), 6)
    torch.save({"ema_model_state_dict": {"0.999": v.original_state_dict()}}, tmp_path / "v.pt")
    assert isinstance(checkpoint.load(str(tmp_path / "v.pt"), TINY_V), DCAEV)


def test_cli_errors(tmp_path, capsys):
    _, mdir = video_model(tmp_path)
    assert cli(["ae", "roundtrip", "--input", str(tmp_path / "missing"), "--model", mdir]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file({"latent": torch.zeros(1, 5, 2, 2, 2)}, str(tmp_path / "z.safetensors"),
              metadata={"frames": "8", "height": "16", "width": "16"})
    assert cli(["ae", "decode", "--input", str(tmp_path / "z.safetensors"), "--model", mdir]) == 2
    assert "this model decodes (1, 4, t, h, w)" in capsys.readouterr().err
    write_png_folder(tmp_path / "in", frames())
    assert cli(["ae", "roundtrip", "--input", str(tmp_path / "in"), "--model", mdir, "--tile", "6"]) == 2
    assert "tile must be a positive multiple of 4" in capsys.readouterr().err


def test_tiny_trainer(tmp_path, monkeypatch):
    """A few seconds of training lands in the cache and loads back; the default path says how to train."""
    from genaccel.autoencoder.dcae import tiny

    monkeypatch.setenv("GENACCEL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dcae_train_tiny.py"):
        tiny.default_model_path()
    settings = tiny.TrainSettings(minutes=0.01, batch=2, crop=16)
    folder = tiny.train(settings, log=lambda *_: None)
    log = json.loads((folder / "train_log.json").read_text())
    assert log["steps"] >= 1 and math.isfinite(log["held_out"]["psnr_db"])
    assert isinstance(checkpoint.load(str(folder)), DCAEV)
    assert tiny.train(settings, log=lambda *_: None) == folder  # cached
