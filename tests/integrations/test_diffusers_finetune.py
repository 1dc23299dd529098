"""finetune_sla on a tiny random Wan: each training mode lowers the student's held-out error against
its dense teacher, the teacher is really the untouched model, and the model is left as it was found."""

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install genaccel[diffusers])")

from test_diffusers import tiny_wan  # noqa: E402

from genaccel.integrations.diffusers_finetune import finetune_sla, noised  # noqa: E402

SLA = dict(topk=0.1, block_size=64)
LR = {"proj": 1e-2, "lora": 3e-3, "model": 2e-4}


def smooth_latents(n, seed):
    """Latents with low-frequency content (9 x 32 x 32: 2304 tokens), so attention has structure."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 4, 3, 4, 4, generator=gen)
    latents = torch.nn.functional.interpolate(coarse, size=(9, 32, 32), mode="trilinear")
    return latents, torch.randn(n, 8, 32, generator=gen)


@pytest.mark.parametrize("train", ["proj", "lora", "model"])
def test_training_lowers_the_held_out_error_against_the_dense_teacher(train):
    if train == "lora":
        pytest.importorskip("peft", reason="train='lora' needs peft")
    latents, text = smooth_latents(6, seed=0)
    held_out = smooth_latents(2, seed=1)
    untrained = finetune_sla(tiny_wan(), latents, text, steps=1, lr=0.0, train=train, lora_rank=4, **SLA)
    before = untrained.error(*held_out)
    trained = finetune_sla(tiny_wan(), latents, text, steps=40, batch_size=2, lr=LR[train], train=train,
                           lora_rank=4, **SLA)
    after = trained.error(*held_out)
    assert 0.01 < before and after < 0.92 * before, (before, after)


def test_the_lora_teacher_is_the_model_without_adapters_or_genaccel():
    pytest.importorskip("peft", reason="train='lora' needs peft")
    latents, text = smooth_latents(2, seed=0)
    model = tiny_wan()
    x_t, t = noised(latents, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(0))
    with torch.no_grad():
        original = model(hidden_states=x_t, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    result = finetune_sla(model, latents, text, steps=5, batch_size=2, lr=1e-2, train="lora", lora_rank=4, **SLA)
    with torch.no_grad():
        assert torch.equal(result._teacher(x_t, t, text), original)
        student = model(hidden_states=x_t, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert not torch.allclose(student, original, atol=1e-4)  # the adapters and SLA are active again


def test_proj_mode_trains_only_the_projections_and_restores_the_flags():
    latents, text = smooth_latents(2, seed=0)
    model = tiny_wan()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune_sla(model, latents, text, steps=3, lr=1e-2, **SLA)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert any((t != 0).any() for t in result.handle.state_dict().values())
    assert len(result.losses) == 3 and result.handle.step is None
    result.handle.remove()
    assert all(type(p).__name__ == "WanAttnProcessor" for p in model.attn_processors.values())


@pytest.mark.parametrize("kwargs, what", [(dict(train="all"), "train"), (dict(steps=0), "steps"),
                                          (dict(latents=torch.zeros(2, 4, 9, 32)), "latents"),
                                          (dict(encoder_hidden_states=torch.zeros(3, 8, 32)), "encoder_hidden_states")])
def test_bad_arguments_are_named(kwargs, what):
    latents, text = smooth_latents(2, seed=0)
    args = {**dict(latents=latents, encoder_hidden_states=text), **kwargs}
    with pytest.raises(ValueError, match=what):
        finetune_sla(tiny_wan(), **args)


def test_other_transformers_are_refused_by_name():
    latents, text = smooth_latents(2, seed=0)
    with pytest.raises(ValueError, match="WanTransformer3DModel.*got Linear"):
        finetune_sla(torch.nn.Linear(2, 2), latents, text)
