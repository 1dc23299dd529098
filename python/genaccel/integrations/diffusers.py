"""Sparse self-attention in diffusers video transformers without forking the model: one call installs
genaccel attention processors, `handle.remove()` puts the originals back.

    handle = apply_sparse_attention(pipe.transformer, method="radial", dense_layers=1, dense_steps=12,
                                    decay_factor=0.2)
    video = pipe(prompt).frames          # self-attention runs through genaccel
    handle.remove()

Supported: `WanTransformer3DModel` and `LTXVideoTransformer3DModel` (diffusers >= 0.35), whose blocks
have a self-attention of their own; HunyuanVideo and CogVideoX attend jointly over text and video
tokens and are not. Self-attention only: cross-attention (and image-conditioned attention) keep the
stock processor. The processors re-implement the self-attention path of diffusers' `WanAttnProcessor`
/ `LTXVideoAttnProcessor` (projections, QK norm, RoPE, output projection) around a genaccel attention
call, because diffusers' attention-backend registry takes no new backend names and Wan's RoPE helper
is a nested function; tests/integrations/test_diffusers.py checks them against the stock processors
(equal in float32), so that a diffusers change to that path fails a test.

The video geometry (latent frames x height x width after patchify) is read from the transformer's
input at each call; the denoising step is counted from the timesteps the transformer sees (a new
timestep value is a new step; a larger one than the last starts a new generation), or set by hand
with `handle.set_step(i)`.
"""

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .._utils import check_choice, check_int
from ..attention.block_sparse import block_sparse_attention
from ..attention.radial.module import RadialAttention
from ..attention.sla import sla_block_map
from ..attention.sla.module import SparseLinearAttention
from ..attention.svg2.module import SVG2Attention

METHODS = ("dense", "sla", "radial", "svg2", "block_topk")
# Options each method takes (passed on to its genaccel module), and their defaults here.
METHOD_OPTIONS = {
    "dense": {},
    "sla": dict(topk=0.05, low_k=0.10, block_size=64, feature_map="softmax"),
    "radial": dict(block_size=64, decay_factor=1.0, sink_frame=True),
    "svg2": dict(num_q_clusters=200, num_k_clusters=1000, top_p=0.9, min_kc_ratio=0.10, first_iters=50,
                 warm_iters=2),
    "block_topk": dict(topk=0.1, block_size=64),
}


def apply_sparse_attention(transformer, method: str = "sla", dense_layers: int = 0, dense_steps: int = 0,
                           log_file: Optional[str] = None, **method_options) -> "SparseAttentionHandle":
    """Installs genaccel self-attention on every transformer block of `transformer`; returns the handle.

    method: "dense" (SDPA through genaccel's processor), "sla", "radial", "svg2" or "block_topk" (exact
    attention over the top-k key blocks of mean-pooled scores, SLA's selection without its linear
    branch). dense_layers / dense_steps: the first layers and denoising steps run dense. method_options:
    that method's options (METHOD_OPTIONS; e.g. topk, decay_factor, top_p). SLA starts with a zero
    projection, i.e. sparse-only attention, as genaccel.nn.SparseLinearAttention does: the linear
    branch only helps once its projection is trained. log_file: a path that gets one JSON line per
    sparse call (the entries of handle.stats(); a call's lines are written at the next transformer call,
    stats() or remove(), so that the processors neither sync nor break a torch.compile graph).
    """
    name = type(transformer).__name__
    if name not in MODELS:
        raise ValueError(f"apply_sparse_attention supports {', '.join(MODELS)}; got {name}")
    check_choice("method", method, METHODS)
    unknown = set(method_options) - set(METHOD_OPTIONS[method])
    if unknown:
        raise ValueError(f"method {method!r} takes the options {sorted(METHOD_OPTIONS[method])}; got {sorted(unknown)}")
    return SparseAttentionHandle(transformer, MODELS[name], method, check_int("dense_layers", dense_layers),
                                 check_int("dense_steps", dense_steps), {**METHOD_OPTIONS[method], **method_options},
                                 log_file)


class SparseAttentionHandle:
    """What apply_sparse_attention installed: the processors, the geometry and step they read, stats."""

    def __init__(self, transformer, model: "ModelSpec", method: str, dense_layers: int, dense_steps: int,
                 options: dict, log_file: Optional[str] = None):
        self.transformer, self.model, self.method, self.options = transformer, model, method, options
        self.log_file = log_file
        self.dense_layers, self.dense_steps = dense_layers, dense_steps
        self.geometry: Optional[Tuple[int, int, int]] = None
        self.step: Optional[int] = None
        self._manual_step = False
        self._last_timestep: Optional[float] = None
        self._stats: List[dict] = []
        self._pending: List[tuple] = []
        self.dense_now = False
        self.stock_mode = False  # True: every call goes to the stock processors (a teacher's pass)
        self._originals = dict(transformer.attn_processors)
        processors = dict(self._originals)
        self.processors: List[SelfAttnProcessor] = []
        for i in range(len(getattr(transformer, model.blocks))):
            key = f"{model.blocks}.{i}.attn1.processor"
            if key not in processors:
                raise ValueError(f"{type(transformer).__name__}: no self-attention processor at {key}")
            proc = model.processor(self, i, processors[key])
            processors[key] = proc
            self.processors.append(proc)
        transformer.set_attn_processor(processors)
        self._hook = transformer.register_forward_pre_hook(self._read_input, with_kwargs=True)

    @torch.compiler.disable
    def _read_input(self, module, args, kwargs):
        """The latent geometry and the denoising step of this transformer call, and what the processors
        need prepared for them. Runs eagerly under torch.compile (it reads the timestep's value), so the
        processors only read `dense_now`, a bool, and the modules made here: no graph break in them and
        no recompilation per step."""
        self._flush()  # the previous call's densities, under the previous call's step
        self.geometry, timestep, device = self.model.read_input(module, args, kwargs)
        if not self._manual_step and timestep is not None:
            t = float(timestep.flatten()[0])
            if self._last_timestep is None or t > self._last_timestep:
                self.step = 0  # a new generation (flow-matching and DDPM timesteps decrease)
            elif t < self._last_timestep:
                self.step += 1
            self._last_timestep = t
        self.dense_now = self.step is not None and self.step < self.dense_steps
        for proc in self.processors:
            proc.prepare(self.geometry, device)

    def set_step(self, step: Optional[int]) -> None:
        """The denoising step of the following calls (None: count steps from the timesteps again)."""
        self._flush()
        self._manual_step = step is not None
        self.step = None if step is None else check_int("step", step)
        self.dense_now = self.step is not None and self.step < self.dense_steps
        self._last_timestep = None

    def is_dense(self, layer: int) -> bool:
        return layer < self.dense_layers or self.dense_now

    def stats(self) -> List[dict]:
        """Per sparse call: layer, step, method and the density of query-key pairs computed."""
        self._flush()
        return list(self._stats)

    def record(self, layer: int, density) -> None:
        """A sparse call's density (a float or a 0-d tensor: no host sync, no graph break)."""
        self._pending.append((layer, density))

    def _flush(self) -> None:
        """Turns the recorded calls into stats entries under the current step (and the log file's lines)."""
        entries = [dict(layer=layer, step=self.step, method=self.method, density=float(density))
                   for layer, density in self._pending]
        self._pending.clear()
        self._stats.extend(entries)
        if self.log_file is not None and entries:
            with open(self.log_file, "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries)

    def parameters(self) -> List[torch.nn.Parameter]:
        """The trainable parameters the processors hold: SLA's projections (none for the other methods)."""
        return [t for p in self.processors if p.sla is not None for t in p.sla.parameters()]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """SLA's trained projections, `blocks.{i}.proj.weight` / `.bias` (empty for the other methods)."""
        return {f"blocks.{p.layer}.proj.{name}": t.detach().clone()
                for p in self.processors if p.sla is not None for name, t in p.sla.proj.state_dict().items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Loads what state_dict() gave; every key must be there, and no other."""
        want = set(self.state_dict())
        if set(state) != want:
            raise ValueError(f"state must hold exactly the keys {sorted(want)[:4]}... ({len(want)}); "
                             f"missing {sorted(want - set(state))[:4]}, unexpected {sorted(set(state) - want)[:4]}")
        for p in self.processors:
            if p.sla is not None:
                p.sla.proj.load_state_dict({n: state[f"blocks.{p.layer}.proj.{n}"] for n in ("weight", "bias")})

    def save(self, path: str) -> None:
        """state_dict() to a safetensors file."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, path)

    def load(self, path: str) -> None:
        """load_state_dict() from a safetensors file written by save()."""
        from safetensors.torch import load_file

        self.load_state_dict(load_file(path))

    def remove(self) -> None:
        """Restores the original processors (the very objects) and removes the hook."""
        self._flush()
        self.transformer.set_attn_processor(self._originals)
        self._hook.remove()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on x (B, N, H, D): each adjacent pair (x[2i], x[2i+1]) turned by the angle
    whose cosine is cos[..., 2i] and sine sin[..., 2i+1] (cos / sin broadcast as (1, N, 1, D))."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).type_as(x)


class SelfAttnProcessor:
    """A model's attention processor with its self-attention call going through genaccel; every other
    call (cross-attention, image context, a mask) goes to the stock processor it replaced. Subclasses
    compute the model's q, k, v (B, N, H, D), RoPE applied; this class attends and projects out."""

    def __init__(self, handle: SparseAttentionHandle, layer: int, stock):
        self.handle, self.layer, self.stock = handle, layer, stock
        self._radial: Dict[Tuple[int, int, int], RadialAttention] = {}  # per geometry
        self._svg2_layer: Optional[SVG2Attention] = None  # holds the centroid cache across steps
        # SLA's layer exists from the start, so that trained projections can be loaded before a call.
        self.sla: Optional[SparseLinearAttention] = None
        if handle.method == "sla":
            o = handle.options
            self.sla = SparseLinearAttention(handle.transformer.config.attention_head_dim, o["topk"], o["low_k"],
                                             o["block_size"], o["feature_map"])

    def goes_to_stock(self, attn, encoder_hidden_states, attention_mask) -> bool:
        return (self.handle.stock_mode or encoder_hidden_states is not None or attention_mask is not None
                or getattr(attn, "add_k_proj", None) is not None)

    def finish(self, attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over (B, N, H, D) q, k, v, then the output projection."""
        out = self.attend(*(t.transpose(1, 2) for t in (q, k, v)))  # (B, H, N, D)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = self.handle
        if h.method == "dense" or h.is_dense(self.layer):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        o = h.options
        if h.method == "sla":
            layer = self.sla if self.sla.proj.weight.device == q.device else self.sla.to(q.device)
            # (return_sparsity gives the fraction of key blocks computed exactly: topk floored to whole blocks)
            out, density = layer(q, k, v, return_sparsity=True)
        elif h.method == "radial":
            layer = self._radial[h.geometry]
            out, density = layer(q, k, v), layer.density
        elif h.method == "svg2":
            out, density = self._svg2(q, k, v)
        else:  # block_topk
            codes, _, _ = sla_block_map(q, k, o["topk"], 0.0, o["block_size"])
            critical = codes == 1
            out = block_sparse_attention(q, k, v, critical, o["block_size"])
            density = critical.float().mean()
        h.record(self.layer, density)
        return out

    def prepare(self, geometry: Tuple[int, int, int], device: torch.device) -> None:
        """Makes what a call at this geometry needs before it runs (outside torch.compile): Radial's
        mask and its plan on the device, built once per geometry."""
        if self.handle.method != "radial":
            return
        if geometry is None:
            raise ValueError("method 'radial' needs the latent grid: call the LTX transformer with num_frames, "
                             "height and width")
        if geometry not in self._radial:
            o, (f, hh, ww) = self.handle.options, geometry
            self._radial[geometry] = RadialAttention(f, hh * ww, o["block_size"], o["decay_factor"], o["sink_frame"])
        self._radial[geometry].plan(device)

    @torch.compiler.disable
    def _svg2(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """SVG2 runs eagerly under torch.compile: its clusters, and so its plan, depend on the data."""
        if self._svg2_layer is None:
            o = self.handle.options
            self._svg2_layer = SVG2Attention(o["num_q_clusters"], o["num_k_clusters"], o["top_p"],
                                             o["min_kc_ratio"], o["first_iters"], o["warm_iters"])
        out = self._svg2_layer(q, k, v)
        return out, self._svg2_layer.last_density


class WanSelfAttnProcessor(SelfAttnProcessor):
    """diffusers' WanAttnProcessor path: projections (fused or not), QK norm, heads, Wan's RoPE."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if self.goes_to_stock(attn, encoder_hidden_states, attention_mask):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attn.fused_projections:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            q, k = apply_rope(q, *rotary_emb), apply_rope(k, *rotary_emb)
        return self.finish(attn, q, k, v)


class LTXSelfAttnProcessor(SelfAttnProcessor):
    """diffusers' LTXVideoAttnProcessor path: projections, QK norm over all heads, LTX's RoPE (its
    module-level helper, imported), heads."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self.goes_to_stock(attn, encoder_hidden_states, attention_mask):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        q, k = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(hidden_states))
        v = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        return self.finish(attn, q, k, v)


def _arg(args, kwargs, name: str, index: int):
    return kwargs[name] if name in kwargs else args[index] if len(args) > index else None


def _read_wan(module, args, kwargs):
    """Wan takes (B, C, F, H, W) latents and patchifies them: the geometry is the patch grid."""
    latents, timestep = _arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "timestep", 1)
    p_t, p_h, p_w = module.config.patch_size
    _, _, f, h, w = latents.shape
    return (f // p_t, h // p_h, w // p_w), timestep, latents.device


def _read_ltx(module, args, kwargs):
    """LTX takes packed (B, N, C) tokens and the token grid as num_frames, height, width (None when a
    caller passes video_coords instead: then only Radial, which needs the grid, refuses)."""
    tokens, timestep = _arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "timestep", 2)
    grid = tuple(_arg(args, kwargs, name, i) for i, name in ((4, "num_frames"), (5, "height"), (6, "width")))
    geometry = tuple(int(g) for g in grid) if all(g is not None for g in grid) else None
    if geometry is not None and geometry[0] * geometry[1] * geometry[2] != tokens.shape[1]:
        raise ValueError(f"LTX input: num_frames x height x width = {geometry} does not match its "
                         f"{tokens.shape[1]} tokens")
    return geometry, timestep, tokens.device


@dataclass(frozen=True)
class ModelSpec:
    """How a supported transformer is driven: the attribute holding its blocks, the processor that
    replaces their attn1's, and how the geometry, timestep and device are read from its input."""

    blocks: str
    processor: type
    read_input: Callable


MODELS = {"WanTransformer3DModel": ModelSpec("blocks", WanSelfAttnProcessor, _read_wan),
          "LTXVideoTransformer3DModel": ModelSpec("transformer_blocks", LTXSelfAttnProcessor, _read_ltx)}
