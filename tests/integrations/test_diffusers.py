"""genaccel.integrations.diffusers on a tiny random-weight WanTransformer3DModel: the processor's
self-attention path against the stock processor, remove(), the dense warm-up by layer and by step,
the geometry read from the input, every method, CFG batches, unsupported models; the same for
LTX-Video; torch.compile, bfloat16, a real WanPipeline run, CUDA."""

import pytest
import torch

from conftest import CUDA_MARKS, rel_err

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install genaccel[diffusers])")
from diffusers import WanTransformer3DModel  # noqa: E402

from genaccel.integrations.diffusers import METHODS, apply_sparse_attention  # noqa: E402


def tiny_wan(layers=2, seed=0):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4,
                                  out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=layers,
                                  rope_max_seq_len=64)
    return model.eval()


def inputs(B=1, frames=5, height=16, width=24, seed=1, t=900.0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(B, 4, frames, height, width, generator=gen)
    text = torch.randn(B, 8, 32, generator=gen)
    return dict(hidden_states=latents, timestep=torch.full((B,), t), encoder_hidden_states=text, return_dict=False)


@torch.no_grad()
def run(model, **kw):
    return model(**inputs(**kw))[0]


def test_dense_method_equals_stock_processor_and_remove_restores_it():
    model = tiny_wan()
    stock = run(model)
    handle = apply_sparse_attention(model, "dense")
    assert rel_err(run(model), stock) <= 1e-5
    handle.remove()
    assert torch.equal(run(model), stock)
    assert all(type(p).__name__ == "WanAttnProcessor" for p in model.attn_processors.values())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
def test_sparse_methods_run_and_differ_from_dense(method):
    model = tiny_wan()
    stock = run(model, frames=9, height=32, width=32)  # 9 x 16 x 16 = 2304 tokens
    options = {"sla": dict(block_size=64), "radial": dict(block_size=64, decay_factor=0.2),
               "svg2": dict(num_q_clusters=16, num_k_clusters=48, top_p=0.5, first_iters=5),
               "block_topk": dict(topk=0.1)}[method]
    handle = apply_sparse_attention(model, method, **options)
    out = run(model, frames=9, height=32, width=32)
    assert torch.isfinite(out).all()
    err = rel_err(out, stock)
    assert 1e-4 < err < 1.0, err  # really sparse, and still the same model
    stats = handle.stats()
    assert [s["layer"] for s in stats] == [0, 1] and all(0 < s["density"] < 1 for s in stats)
    assert handle.geometry == (9, 16, 16)
    handle.remove()


def test_sla_with_every_block_is_dense():
    model = tiny_wan()
    stock = run(model)
    apply_sparse_attention(model, "sla", topk=1.0, low_k=0.0)
    assert rel_err(run(model), stock) <= 1e-5


def test_dense_warm_up_layers_and_steps():
    model = tiny_wan()
    stock = run(model, frames=9, height=32, width=32)
    handle = apply_sparse_attention(model, "block_topk", dense_layers=2, topk=0.1)
    assert rel_err(run(model, frames=9, height=32, width=32), stock) <= 1e-5  # every layer dense
    assert handle.stats() == []
    handle.remove()
    handle = apply_sparse_attention(model, "block_topk", dense_layers=1, topk=0.1)
    run(model, frames=9, height=32, width=32)
    assert [s["layer"] for s in handle.stats()] == [1]  # layer 0 dense
    handle.remove()
    handle = apply_sparse_attention(model, "block_topk", dense_steps=2, topk=0.1)
    steps = []
    for t in (900.0, 900.0, 700.0, 500.0, 950.0):  # CFG's second call, two steps, then a new generation
        out = run(model, frames=9, height=32, width=32, t=t)
        steps.append(handle.step)
        if handle.step < 2:
            assert rel_err(out, run_stock(model, t)) <= 1e-5
    assert steps == [0, 0, 1, 2, 0]
    assert {s["step"] for s in handle.stats()} == {2}
    handle.set_step(5)
    run(model, frames=9, height=32, width=32, t=10.0)
    assert handle.step == 5 and handle.stats()[-1]["step"] == 5


def run_stock(model, t):
    """The stock model's output at timestep t (the handle's processors bypassed by a fresh copy)."""
    fresh = tiny_wan()
    return run(fresh, frames=9, height=32, width=32, t=t)


def test_cfg_batch_and_odd_geometry():
    model = tiny_wan()
    stock = run(model, B=2, frames=3, height=10, width=14)
    handle = apply_sparse_attention(model, "dense")
    assert rel_err(run(model, B=2, frames=3, height=10, width=14), stock) <= 1e-5
    assert handle.geometry == (3, 5, 7)
    handle.remove()
    handle = apply_sparse_attention(model, "svg2", num_q_clusters=8, num_k_clusters=20, first_iters=3)
    out = run(model, B=2, frames=3, height=10, width=14)
    assert out.shape == stock.shape and torch.isfinite(out).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="supports WanTransformer3DModel, LTXVideoTransformer3DModel; got Linear"):
        apply_sparse_attention(torch.nn.Linear(2, 2))
    model = tiny_wan()
    with pytest.raises(ValueError, match="method"):
        apply_sparse_attention(model, "flash")
    with pytest.raises(ValueError, match="takes the options"):
        apply_sparse_attention(model, "radial", top_p=0.9)
    with pytest.raises(ValueError, match="dense_steps"):
        apply_sparse_attention(model, "sla", dense_steps=-1)


def test_sla_state_round_trip_and_density_log(tmp_path):
    model = tiny_wan()
    log = tmp_path / "density.jsonl"
    handle = apply_sparse_attention(model, "sla", topk=0.2, log_file=str(log))
    state = handle.state_dict()
    assert sorted(state) == [f"blocks.{i}.proj.{n}" for i in (0, 1) for n in ("bias", "weight")]
    assert all((t == 0).all() for t in state.values())  # a fresh SLA layer is sparse-only
    sparse_only = run(model, frames=9, height=32, width=32)
    gen = torch.Generator().manual_seed(3)
    trained = {k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    handle.load_state_dict(trained)
    with_linear = run(model, frames=9, height=32, width=32)
    assert rel_err(with_linear, sparse_only) > 1e-4  # the projections are used
    handle.save(str(tmp_path / "sla.safetensors"))
    handle.remove()
    other = apply_sparse_attention(model, "sla", topk=0.2)
    other.load(str(tmp_path / "sla.safetensors"))
    assert torch.equal(run(model, frames=9, height=32, width=32), with_linear)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in trained.items() if "bias" not in k})
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["layer"] for e in lines] == [0, 1, 0, 1] and all(0 < e["density"] <= 1 for e in lines)


COMPILE_OPTIONS = {"dense": {}, "sla": dict(block_size=64), "radial": dict(block_size=64, decay_factor=0.2),
                   "block_topk": dict(topk=0.1)}


@pytest.mark.parametrize("method", sorted(COMPILE_OPTIONS))
def test_compiles_in_one_graph_and_switches_from_dense_steps_without_recompiling_per_step(method):
    from torch._dynamo.testing import CompileCounter

    model = tiny_wan()
    handle = apply_sparse_attention(model, method, dense_steps=1, **COMPILE_OPTIONS[method])
    shape = dict(frames=9, height=32, width=32)
    eager = [run(model, t=t, **shape) for t in (900.0, 800.0, 700.0, 600.0)]
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)  # fullgraph: a graph break raises
    outs = [run(compiled, t=t, **shape) for t in (900.0, 800.0, 700.0, 600.0)]
    for out, ref in zip(outs, eager):
        assert rel_err(out, ref) <= 1e-6
    assert counter.frame_count <= 2  # the dense step 0, then one graph for every sparse step
    steps = [s["step"] for s in handle.stats()]  # eager then compiled: 2 layers x steps 1-3, twice
    assert steps == ([1, 1, 2, 2, 3, 3] * 2 if method != "dense" else [])


def test_svg2_runs_under_torch_compile():
    model = tiny_wan()
    apply_sparse_attention(model, "svg2", num_q_clusters=16, num_k_clusters=48, top_p=0.5, first_iters=5)
    torch._dynamo.reset()
    out = run(torch.compile(model, backend="eager"), frames=9, height=32, width=32)  # eager islands for SVG2
    assert torch.isfinite(out).all()


def test_sla_under_inductor_equals_eager():
    model = tiny_wan()
    apply_sparse_attention(model, "sla", block_size=64)
    eager = run(model, frames=9, height=32, width=32)
    torch._dynamo.reset()
    assert rel_err(run(torch.compile(model, fullgraph=True), frames=9, height=32, width=32), eager) <= 1e-5


def test_steps_are_counted_through_a_wan_pipeline_with_cfg_and_restart_with_the_next_video():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    model = tiny_wan()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    handle = apply_sparse_attention(model, "block_topk", dense_steps=2, topk=0.25, block_size=32)
    for _ in range(2):  # two videos: the second starts again at step 0
        pipe(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.zeros(1, 8, 32), height=64, width=64,
             num_frames=9, num_inference_steps=5, guidance_scale=3.0, output_type="latent")
    # Steps 0 and 1 dense (no entries); steps 2-4 sparse in both layers, for the conditional and the
    # unconditional call of each step.
    per_video = [(layer, step) for step in (2, 3, 4) for _ in range(2) for layer in (0, 1)]
    assert [(s["layer"], s["step"]) for s in handle.stats()] == per_video * 2


BF16_OPTIONS = {**COMPILE_OPTIONS, "svg2": dict(num_q_clusters=16, num_k_clusters=48, top_p=0.5, first_iters=5)}


@pytest.mark.parametrize("method", sorted(BF16_OPTIONS))
def test_bfloat16_model_follows_the_float32_one(method):
    shape = dict(frames=9, height=32, width=32)
    model = tiny_wan()
    apply_sparse_attention(model, method, **BF16_OPTIONS[method])
    ref = run(model, **shape)
    half = tiny_wan().to(torch.bfloat16)
    apply_sparse_attention(half, method, **BF16_OPTIONS[method])
    x = {k: v.to(torch.bfloat16) if k in ("hidden_states", "encoder_hidden_states") else v
         for k, v in inputs(**shape).items()}
    with torch.no_grad():
        out = half(**x)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < 0.03  # bfloat16 rounding through two layers, not a different method


@pytest.mark.parametrize("method", sorted(BF16_OPTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@CUDA_MARKS[0]
@CUDA_MARKS[1]
def test_cuda_model_follows_the_cpu_one(method, dtype):
    shape = dict(frames=9, height=32, width=32)
    model = tiny_wan()
    apply_sparse_attention(model, method, **BF16_OPTIONS[method])
    ref = run(model, **shape)
    gpu = tiny_wan().to("cuda", dtype)
    apply_sparse_attention(gpu, method, **BF16_OPTIONS[method])
    x = {k: v.to("cuda", dtype) if k in ("hidden_states", "encoder_hidden_states") else v.cuda()
         for k, v in inputs(**shape).items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out = gpu(**x, return_dict=False)[0]
    assert out.dtype == dtype and torch.isfinite(out).all()
    # SVG2's clusters come from a different k-means run on the GPU: the same method, not the same blocks.
    assert rel_err(out.float().cpu(), ref) < (0.05 if method == "svg2" else 0.03 if dtype == torch.bfloat16 else 1e-3)


# ---- LTX-Video: packed (B, N, C) tokens with the grid passed as num_frames, height, width ----------

def tiny_ltx(seed=0):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32,
                                      cross_attention_dim=64, num_layers=2, caption_channels=32).eval()


@torch.no_grad()
def run_ltx(model, frames=5, height=8, width=12, B=1, t=900.0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, frames * height * width, 8, generator=gen)
    text = torch.randn(B, 6, 32, generator=gen)
    return model(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.full((B,), t),
                 encoder_attention_mask=torch.ones(B, 6), num_frames=frames, height=height, width=width,
                 return_dict=False)[0]


def test_ltx_dense_method_equals_stock_processor_and_remove_restores_it():
    model = tiny_ltx()
    stock = run_ltx(model, B=2)
    handle = apply_sparse_attention(model, "dense")
    assert rel_err(run_ltx(model, B=2), stock) <= 1e-5
    handle.remove()
    assert torch.equal(run_ltx(model, B=2), stock)
    assert all(type(p).__name__ == "LTXVideoAttnProcessor" for p in model.attn_processors.values())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
def test_ltx_sparse_methods_run_and_differ_from_dense(method):
    model = tiny_ltx()
    shape = dict(frames=9, height=16, width=16)  # 2304 tokens
    stock = run_ltx(model, **shape)
    handle = apply_sparse_attention(model, method, **BF16_OPTIONS[method])
    out = run_ltx(model, **shape)
    assert torch.isfinite(out).all() and 1e-4 < rel_err(out, stock) < 1.0
    assert handle.geometry == (9, 16, 16)
    assert [s["layer"] for s in handle.stats()] == [0, 1] and all(0 < s["density"] < 1 for s in handle.stats())


def test_ltx_grid_that_does_not_match_the_tokens_is_refused():
    model = tiny_ltx()
    apply_sparse_attention(model, "radial", block_size=64)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_frames x height x width"):
        model(hidden_states=torch.randn(1, 100, 8, generator=gen), encoder_hidden_states=torch.randn(1, 6, 32),
              timestep=torch.tensor([900.0]), encoder_attention_mask=torch.ones(1, 6), num_frames=5, height=8,
              width=12)


def test_ltx_compiles_in_one_graph():
    model = tiny_ltx()
    apply_sparse_attention(model, "sla", block_size=64)
    shape = dict(frames=9, height=16, width=16)
    eager = run_ltx(model, **shape)
    torch._dynamo.reset()
    assert rel_err(run_ltx(torch.compile(model, fullgraph=True, backend="eager"), **shape), eager) <= 1e-6
