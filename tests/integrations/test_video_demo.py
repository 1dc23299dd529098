"""genaccel video-demo: the stock and genaccel denoising loops, their comparison and the command."""

import json

import pytest

pytest.importorskip("diffusers", reason="the video demo needs diffusers (pip install genaccel[diffusers])")

from genaccel.cli import main  # noqa: E402
from genaccel.integrations.video_demo import latent_shape, psnr, run_demo  # noqa: E402

TINY = dict(frames=9, height=128, width=128, steps=3, progress=False)  # 3 latent frames of 16x16: 192 tokens


def test_dense_method_follows_the_stock_trajectory():
    result = run_demo("dense", **TINY)
    s = result["summary"]
    assert s["tokens"] == 192 and s["latent"] == [3, 16, 16] and len(result["steps"]) == 3
    assert s["rel_err"] <= 1e-5
    assert all(0 < r["stock_self_attn_share"] < 1 for r in result["steps"])


def test_sparse_method_is_sparse_and_dense_steps_are_dense():
    result = run_demo("block_topk", dense_steps=1, topk=0.25, block_size=32, **TINY)
    first, *rest = result["steps"]
    assert first["density"] == 1.0 and first["rel_err"] <= 1e-5  # step 0 ran dense: the stock result
    assert all(r["density"] < 1 for r in rest) and rest[-1]["rel_err"] > 1e-4
    assert [r["step"] for r in result["steps"]] == [0, 1, 2]  # steps counted from the scheduler's timesteps


def test_guidance_runs_a_batch_of_two():
    result = run_demo("sla", guidance=3.0, **TINY)
    assert result["summary"]["batch"] == 2 and result["summary"]["rel_err"] < 0.1


def test_latent_shape_follows_wan_vae_and_refuses_what_does_not_tile():
    assert latent_shape(81, 480, 832) == (21, 60, 104)
    with pytest.raises(ValueError, match="frames"):
        latent_shape(80, 480, 832)
    with pytest.raises(ValueError, match="size"):
        latent_shape(81, 480, 830)


def test_psnr():
    import torch

    ref = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert psnr(ref, ref) == float("inf")
    assert psnr(ref + 0.1, ref) == pytest.approx(10 * torch.log10(torch.tensor(9 / 0.01)).item(), rel=1e-6)


def test_command_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "demo.json", tmp_path / "demo.png"
    assert main(["video-demo", "--method", "radial", "--frames", "9", "--size", "128x128", "--steps", "2",
                 "--option", "decay_factor=0.5", "--option", "block_size=32", "--no-progress",
                 "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["options"]["decay_factor"] == 0.5 and len(result["steps"]) == 2
    assert png.stat().st_size > 0
    assert "x; final latents rel. error" in capsys.readouterr().out


@pytest.mark.parametrize("argv, what", [(["--size", "128"], "--size"), (["--frames", "8"], "frames"),
                                        (["--option", "no_such=1"], "no_such"), (["--steps", "0"], "steps")])
def test_command_refuses_bad_arguments(argv, what, capsys):
    assert main(["video-demo", "--no-progress", "--frames", "9", "--size", "128x128", *argv]) == 2
    assert what in capsys.readouterr().err


@pytest.mark.parametrize("pipeline_folder", [False, True])
def test_model_from_a_local_folder(tmp_path, pipeline_folder):
    from test_diffusers import tiny_wan

    folder = tmp_path / "wan"
    tiny_wan().save_pretrained(str(folder / "transformer" if pipeline_folder else folder))
    result = run_demo("dense", model=str(folder), **TINY)
    assert result["summary"]["model"] == str(folder) and result["summary"]["rel_err"] <= 1e-5
    assert result["summary"]["latent"] == [3, 16, 16]
