"""Fine-tuning a diffusers Wan transformer for SLA, with its dense self as the teacher.

    result = finetune_sla(pipe.transformer, latents, prompt_embeds, steps=2000, train="lora")
    result.handle.save("sla.safetensors")          # SLA's projections; LoRA weights stay in the model

Each step draws a batch of the user's clean latents and text embeddings, a flow-matching noise level
sigma ~ U(0, 1) per sample (x_t = (1 - sigma) x_0 + sigma noise, timestep 1000 sigma, as Wan is
trained), and fits the student's prediction at x_t to the teacher's (mean squared error). The student
is the transformer with SLA installed on its self-attention (apply_sparse_attention); the teacher is
the same model with the stock processors. What trains:

  "proj"   only SLA's linear-branch projections; the teacher is the model itself in stock mode;
  "lora"   LoRA adapters (peft) on the attention projections, plus SLA's projections; the teacher is
           the model with its adapters disabled and the stock processors;
  "model"  every weight, plus SLA's projections (what the SLA paper does); the teacher is a frozen
           copy of the model taken before training (twice the weights in memory).

bench/sla_finetune.py shows on a controlled stack why "proj" alone recovers little of what sparsity
loses: the projections can add a linear map of the linear branch, not undo the sparse branch's error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from .._utils import check_choice, check_int
from ..testing import rel_err
from .diffusers import SparseAttentionHandle, apply_sparse_attention

TRAIN_MODES = ("proj", "lora", "model")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class FinetuneResult:
    """What finetune_sla trained: the handle (SLA installed, projections trained), the per-step
    losses, and the teacher (None: the model itself in stock mode, adapters off)."""

    handle: SparseAttentionHandle
    train: str
    losses: List[float] = field(default_factory=list)
    teacher: Optional[torch.nn.Module] = None

    @torch.no_grad()
    def error(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
              sigmas: Sequence[float] = (0.25, 0.5, 0.75), seed: int = 0) -> float:
        """The student's prediction error relative to the teacher's on these latents (noised at each
        sigma with a fixed seed): ||student - teacher|| / ||teacher|| over all of them."""
        gen = torch.Generator().manual_seed(seed)
        students, teachers = [], []
        for sigma in sigmas:
            s = torch.full((latents.shape[0],), float(sigma))
            x_t, t = noised(latents, s, gen)
            teachers.append(self._teacher(x_t, t, encoder_hidden_states))
            students.append(_predict(self.handle.transformer, x_t, t, encoder_hidden_states))
        return rel_err(torch.cat(students), torch.cat(teachers))

    def _teacher(self, x_t, t, text):
        if self.teacher is not None:
            return _predict(self.teacher, x_t, t, text)
        model, handle = self.handle.transformer, self.handle
        handle.stock_mode = True
        adapters = self.train == "lora"
        try:
            if adapters:
                model.disable_adapters()
            return _predict(model, x_t, t, text)
        finally:
            handle.stock_mode = False
            if adapters:
                model.enable_adapters()


def noised(latents: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator):
    """Flow matching's x_t = (1 - sigma) x_0 + sigma noise and its timestep 1000 sigma (per sample)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    s = sigma.to(latents).view(-1, *([1] * (latents.dim() - 1)))
    return (1 - s) * latents + s * noise, (1000 * sigma).to(latents.device)


def _predict(model, x_t, t, text):
    return model(hidden_states=x_t, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def finetune_sla(transformer, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, steps: int = 100,
                 batch_size: int = 1, lr: float = 1e-4, train: str = "proj", lora_rank: int = 16,
                 lora_targets: Sequence[str] = LORA_TARGETS, dense_layers: int = 0, seed: int = 0,
                 callback: Optional[Callable[[int, float], None]] = None, **sla_options) -> FinetuneResult:
    """Installs SLA on `transformer` and fine-tunes it against its dense self (see the module's
    docstring); returns a FinetuneResult whose handle holds the trained SLA state.

    latents: (N, C, F, H, W) clean latents (the VAE's, as the transformer takes them);
    encoder_hidden_states: (N, L, text_dim) their text embeddings. steps: optimizer steps (AdamW, lr)
    on batches of batch_size drawn with `seed`. train: "proj", "lora" (needs peft; lora_rank, the
    modules named by lora_targets in every attention) or "model". dense_layers: as in
    apply_sparse_attention (those layers stay dense, also in training). callback(step, loss) after
    each step. sla_options: SLA's options (topk, low_k, block_size, feature_map).
    """
    if type(transformer).__name__ != "WanTransformer3DModel":
        raise ValueError(f"finetune_sla trains a WanTransformer3DModel (its latents and timesteps); got "
                         f"{type(transformer).__name__}")
    check_choice("train", train, TRAIN_MODES)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if not (isinstance(latents, torch.Tensor) and latents.dim() == 5):
        raise ValueError(f"latents must be a (N, C, F, H, W) tensor, got {getattr(latents, 'shape', type(latents))}")
    if not (isinstance(encoder_hidden_states, torch.Tensor) and encoder_hidden_states.dim() == 3
            and encoder_hidden_states.shape[0] == latents.shape[0]):
        raise ValueError(f"encoder_hidden_states must be (N, L, text_dim) with N = {latents.shape[0]} (one per "
                         f"latent), got {getattr(encoder_hidden_states, 'shape', type(encoder_hidden_states))}")
    teacher = copy.deepcopy(transformer).eval().requires_grad_(False) if train == "model" else None
    if train == "lora":
        try:
            from peft import LoraConfig
        except ImportError as exc:
            raise ImportError("train='lora' needs peft: pip install peft") from exc
        transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(lora_targets),
                                           init_lora_weights=True))
    handle = apply_sparse_attention(transformer, "sla", dense_layers=dense_layers, **sla_options)
    device = latents.device
    for proc in handle.processors:
        proc.sla.to(device)
    flags = {name: p.requires_grad for name, p in transformer.named_parameters()}
    for name, p in transformer.named_parameters():
        p.requires_grad_(train == "model" or (train == "lora" and "lora_" in name))
    params = handle.parameters() + [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    result = FinetuneResult(handle, train, teacher=teacher)
    gen = torch.Generator().manual_seed(seed)
    handle.set_step(0)  # training draws random timesteps: no step counting (and dense_steps do not apply)
    was_training = transformer.training
    transformer.train()
    try:
        for step in range(steps):
            idx = torch.randint(latents.shape[0], (batch_size,), generator=gen).to(device)
            x0, text = latents[idx], encoder_hidden_states[idx]
            x_t, t = noised(x0, torch.rand(batch_size, generator=gen), gen)
            with torch.no_grad():
                target = result._teacher(x_t, t, text)
            loss = torch.nn.functional.mse_loss(_predict(transformer, x_t, t, text).float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, result.losses[-1])
    finally:
        transformer.train(was_training)
        for name, p in transformer.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
        handle.set_step(None)
    return result
