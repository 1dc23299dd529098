"""XQuantCache: a transformers `Cache` that stores quantized layer inputs X (or KIVI-quantized K/V) for
Llama-family models (Llama, Mistral, Qwen2/3: decoder layers with `self_attn.k_proj / v_proj`, RoPE).

How it plugs in: `XQuantCache(model, mode=...)` (or `enable_xquant`) puts a forward pre-hook on every
layer's attention module, which hands the attention input X (the post-norm hidden states) and the
position ids to the cache when, and only when, that call's cache is an XQuantCache; the model code is
untouched. The attention then calls `cache.update(k_new, v_new, layer_idx)` as with any cache: the
new tokens' K / V (computed by the model from the exact X) are returned as they are, the past ones are
rematerialised from the stored X: K = RoPE(X_hat W_k^T + b_k) (RoPE after rematerialisation, at the
stored tokens' positions), V = X_hat W_v^T + b_v, through genaccel.xquant_matmul (no dequantized X).

Modes (docs/xquant.md has the memory arithmetic):
- fp16_kv: K / V in the model's dtype (bits must be 16): the baseline.
- kivi: keys per-channel (groups of `group_size` tokens; the tokens that do not fill a group yet in full
  precision), values per-token with the most recent `residual_length` tokens in full precision.
- xquant: X per-token (axis="token", default) or per-channel (axis="channel", KIVI's residual trick).
- xquant_cl: cross-layer closed-loop deltas: the first `cl_base_layers` layers store Q(X_i), later ones
  Q(X_i - A_{i-1}) with A_i = A_{i-1} + deq(Q(delta_i)); `cl_input="post_norm"` deltas the attention
  input X, `cl_input="pre_norm"` the residual stream entering the layer, normed after reconstruction.
  Per-token groups only (a per-channel group would be quantized after the deltas that depend on it).
- xquant_gqa: per layer W_k^T = U S B^T (and W_v) by SVD, computed once (`svd_path` saves / loads it);
  caches the latents X U_k (per-channel) and X U_v (per-token); K = (X U_k) S B^T: exact unquantized.

bits=16 stores unquantized values in the model's dtype in every mode: the logits then equal the plain
model's (the test of RoPE order, layouts and plumbing).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import weakref
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin

from ..._utils import check_choice, check_int
from .ops import BITS, QuantizedTensor, dequantize, quantize, xquant_matmul

MODES = ("fp16_kv", "kivi", "xquant", "xquant_cl", "xquant_gqa")
AXES = {"token": -1, "channel": -2}
CL_INPUTS = ("post_norm", "pre_norm")


class TokenStore:
    """A growing (B, ..., tokens, channels) store: unquantized (bits=16) or a QuantizedTensor grouped
    along channels (axis -1) or tokens (axis -2, trailing tokens unquantized). Values are stored as
    `dtype` (None: as they come), the unquantized ones and the quantizer's input alike."""

    def __init__(self, bits: int, group_size: int = 8, axis: int = -1, zero: str = "int",
                 dtype: Optional[torch.dtype] = None):
        self.bits, self.group_size, self.axis, self.zero, self.dtype = bits, group_size, axis, zero, dtype
        self.data = None  # tensor (bits=16) or QuantizedTensor

    def empty_like(self) -> "TokenStore":
        return TokenStore(self.bits, self.group_size, self.axis, self.zero, self.dtype)

    @property
    def tokens(self) -> int:
        return 0 if self.data is None else self.data.shape[-2]

    @property
    def nbytes(self) -> int:
        if self.data is None:
            return 0
        return self.data.nbytes if isinstance(self.data, QuantizedTensor) else self.data.numel() * self.data.element_size()

    def append(self, x: torch.Tensor) -> None:
        x = x if self.dtype is None else x.to(self.dtype)
        if self.bits == 16:
            self.data = x.clone() if self.data is None else torch.cat([self.data, x], dim=-2)
            return
        if self.data is None:
            shape = (*x.shape[:-2], 0, x.shape[-1])
            self.data = QuantizedTensor.empty(shape, self.bits, self.group_size, self.axis, self.zero, x.dtype, x.device)
        self.data.append(x)

    def values(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.data if self.bits == 16 else dequantize(self.data)).to(dtype)

    def matmul(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """values() @ weight.T + bias in weight's dtype, fused for quantized stores."""
        if self.bits == 16:
            return F.linear(self.data.to(weight.dtype), weight, bias)
        return xquant_matmul(self.data, weight, bias)

    def append_per_token(self, x: torch.Tensor) -> torch.Tensor:
        """Appends x (axis -1 stores) and returns what the store now holds for it, in x's dtype."""
        stored = x if self.dtype is None else x.to(self.dtype)
        if self.bits == 16:
            self.append(stored)
            return stored.to(x.dtype)
        qt = quantize(stored, self.bits, self.group_size, -1, self.zero)
        if self.data is None:
            self.data = qt
        else:  # per-token groups: the new rows' codes follow the old ones
            d = self.data
            d.codes, d.scales, d.zeros = (torch.cat([a, b], dim=-2) for a, b in
                                          ((d.codes, qt.codes), (d.scales, qt.scales), (d.zeros, qt.zeros)))
            d.shape = (*d.shape[:-2], d.shape[-2] + qt.shape[-2], d.shape[-1])
        return dequantize(qt, x.dtype)

    def select(self, index: torch.Tensor) -> None:
        """Keeps batch rows `index` (dim 0), for beam search and batch selection."""
        if self.data is None:
            return
        if self.bits == 16:
            self.data = self.data.index_select(0, index)
            return
        d = self.data
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        self.data = QuantizedTensor(pick(d.codes), pick(d.scales), pick(d.zeros), (len(index), *d.shape[1:]), d.bits,
                                    d.group_size, d.axis, d.dtype, pick(d.residual))


class _AttentionParts:
    """What rematerialisation needs from one attention module: its projections, RoPE function and
    optional per-head key norm (Qwen3), the layer norm before it (pre-norm CL)."""

    def __init__(self, layer: torch.nn.Module):
        attn = layer.self_attn
        self.k_proj, self.v_proj = attn.k_proj, attn.v_proj
        self.head_dim = attn.head_dim
        self.k_norm = getattr(attn, "k_norm", None)
        self.input_norm = layer.input_layernorm
        module = sys.modules[type(attn).__module__]
        if not hasattr(module, "apply_rotary_pos_emb"):
            raise ValueError(f"{type(attn).__name__} has no apply_rotary_pos_emb in its module: not a RoPE "
                             f"Llama-family attention")
        self.apply_rope = module.apply_rotary_pos_emb

    def keys(self, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(B, L, n_kv * hd) projected keys -> (B, n_kv, L, hd) after the key norm and RoPE."""
        b, length = k.shape[:2]
        k = k.view(b, length, -1, self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        k = k.transpose(1, 2)
        return self.apply_rope(k, k, cos, sin)[1]

    def heads(self, v: torch.Tensor) -> torch.Tensor:
        b, length = v.shape[:2]
        return v.view(b, length, -1, self.head_dim).transpose(1, 2)


class XQuantLayer(CacheLayerMixin):
    """One decoder layer's cache. The pre-hook sets `pending` (X, position ids) before update()."""

    is_sliding = False
    is_croppable = False

    def __init__(self, cache: "XQuantCache", index: int):
        super().__init__()
        self.cache_ref = weakref.ref(cache)
        self.index = index
        self.cumulative_length = 0
        self.pending: Optional[Dict[str, torch.Tensor]] = None
        self.absorbed: Optional[Dict[str, object]] = None  # the absorbed attention's past part, this call
        self.stores: Dict[str, TokenStore] = {}

    @property
    def cache(self) -> "XQuantCache":
        return self.cache_ref()

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int):
        return self.cumulative_length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.stores.values())

    def reset(self) -> None:
        self.stores = {name: s.empty_like() for name, s in self.stores.items()}
        self.cumulative_length, self.pending, self.is_initialized = 0, None, False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)
        if self.index == 0:
            self.cache.positions.select(beam_idx.to(self.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for s in self.stores.values():
            s.select(indices.to(self.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        b = self.cache.batch_size
        self.batch_select_indices(torch.arange(b, device=self.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("XQuantCache cannot be cropped (its quantized groups span tokens); start a new cache")

    def take_pending(self) -> Dict[str, torch.Tensor]:
        if self.pending is None:
            raise RuntimeError(f"XQuantCache layer {self.index}: update() was called without the attention input; "
                               f"the model's attention pre-hook did not run (was the cache built for this model?)")
        pending, self.pending = self.pending, None
        return pending

    def take_absorbed(self) -> Optional[Dict[str, object]]:
        state, self.absorbed = self.absorbed, None
        return state

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        pending = self.take_pending()
        past_k, past_v = self.rematerialise(pending, key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        if past_k is None:
            return key_states, value_states
        return torch.cat([past_k, key_states], dim=-2), torch.cat([past_v, value_states], dim=-2)

    def rematerialise(self, pending, key_states, value_states):
        """Stores the new tokens and returns the past K, V (None, None when there is none)."""
        raise NotImplementedError


class KVLayer(XQuantLayer):
    """fp16_kv and kivi: K / V after RoPE, (B, n_kv, L, hd)."""

    def __init__(self, cache, index):
        super().__init__(cache, index)
        if cache.mode == "fp16_kv":
            self.stores = {"k": cache.store(16, -1), "v": cache.store(16, -1)}
        else:  # keys per-channel (groups along tokens), values per-token behind a full-precision window
            self.stores = {"k": cache.store(cache.bits, -2), "v": cache.store(cache.bits, -1),
                           "v_recent": cache.store(16, -1)}

    def rematerialise(self, pending, key_states, value_states):
        k, v = self.stores["k"], self.stores["v"]
        recent = self.stores.get("v_recent")
        past = k.tokens > 0
        dtype = key_states.dtype
        past_k = k.values(dtype) if past else None
        if recent is None:
            past_v = v.values(dtype) if past else None
            v.append(value_states)
        else:
            parts = ([v.values(dtype)] if v.tokens else []) + ([recent.values(dtype)] if recent.tokens else [])
            past_v = torch.cat(parts, dim=-2) if parts else None
            recent.append(value_states)
            spill = recent.tokens - self.cache.residual_length
            if spill > 0:  # the oldest tokens of the window are quantized
                v.append(recent.data[..., :spill, :])
                recent.data = recent.data[..., spill:, :].clone()
        k.append(key_states)
        return past_k, past_v


class XLayer(XQuantLayer):
    """xquant and xquant_gqa: X (or its SVD latents) of the past tokens, (B, L, channels)."""

    def __init__(self, cache, index):
        super().__init__(cache, index)
        if cache.mode == "xquant":
            self.stores = {"x": cache.store(cache.bits, AXES[cache.axis])}
        else:  # KIVI's choice for the latents: per-channel for keys, per-token for values
            self.stores = {"xk": cache.store(cache.bits, -2), "xv": cache.store(cache.bits, -1)}

    def rematerialise(self, pending, key_states, value_states):
        cache, parts = self.cache, self.cache.parts[self.index]
        x = pending["x"]
        past = self.cumulative_length > 0
        past_k = past_v = None
        if past:
            cos, sin = cache.past_rope(self, x)
            k_store, v_store = (self.stores["x"],) * 2 if cache.mode == "xquant" else (self.stores["xk"], self.stores["xv"])
            svd = cache.svd[self.index] if cache.mode == "xquant_gqa" else None
            w_k, w_v = (parts.k_proj.weight, parts.v_proj.weight) if svd is None else (svd["k_w"], svd["v_w"])
            past_k = parts.keys(k_store.matmul(w_k, parts.k_proj.bias), cos, sin)
            if cache.absorbed_values:  # the attention function takes V from the rows (attention.py)
                rows = v_store.data
                if isinstance(rows, QuantizedTensor):  # a snapshot: append() below rebinds the fields
                    rows = dataclasses.replace(rows)
                self.absorbed = dict(k_past=past_k, x_past=rows, w_v=w_v, b_v=parts.v_proj.bias)
                past_k = None
            else:
                past_v = parts.heads(v_store.matmul(w_v, parts.v_proj.bias))
        if cache.mode == "xquant":
            self.stores["x"].append(x)
        else:
            svd = cache.svd[self.index]
            self.stores["xk"].append(x @ svd["k_u"])
            self.stores["xv"].append(x @ svd["v_u"])
        cache.keep_positions(self, pending["position_ids"], x)
        return past_k, past_v


class CLLayer(XQuantLayer):
    """xquant_cl: the layer's quantized delta against the accumulator of the layers below."""

    def __init__(self, cache, index):
        super().__init__(cache, index)
        base = index < cache.cl_base_layers
        self.bits = cache.cl_base_bits if base else cache.bits
        self.base = base
        self.stores = {"d": cache.store(self.bits, -1)}

    def rematerialise(self, pending, key_states, value_states):
        cache, parts = self.cache, self.cache.parts[self.index]
        x = pending["r"] if cache.cl_input == "pre_norm" else pending["x"]
        step = cache.cl_step
        store = self.stores["d"]
        past = store.tokens > 0
        if past:  # the past tokens' accumulator, rebuilt layer by layer in this step
            deq = store.values(x.dtype)
            step["past"] = deq if self.base or step.get("past") is None else step["past"] + deq
        target = x if self.base or step.get("new") is None else x - step["new"]
        recon = store.append_per_token(target)
        step["new"] = recon if self.base or step.get("new") is None else step["new"] + recon
        if not past:
            cache.keep_positions(self, pending["position_ids"], x)
            return None, None
        x_hat = step["past"]
        if cache.cl_input == "pre_norm":
            x_hat = parts.input_norm(x_hat)
        cos, sin = cache.past_rope(self, x)
        cache.keep_positions(self, pending["position_ids"], x)
        k = F.linear(x_hat, parts.k_proj.weight, parts.k_proj.bias)
        v = F.linear(x_hat, parts.v_proj.weight, parts.v_proj.bias)
        return parts.keys(k, cos, sin), parts.heads(v)


def decoder_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The model's decoder layers (modules with self_attn.k_proj / v_proj), in layer order."""
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m.self_attn, "k_proj")
              and hasattr(m.self_attn, "v_proj")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers with self_attn.k_proj / v_proj: XQuantCache "
                         f"supports Llama-family models")
    return layers


def rotary_embedding(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if type(m).__name__.endswith("RotaryEmbedding"):
            return m
    raise ValueError(f"{type(model).__name__} has no rotary embedding module: XQuantCache needs RoPE")


def _attention_hook(module, args, kwargs):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, XQuantCache):
        x = args[0] if args else kwargs["hidden_states"]
        cache.stash(module.layer_idx, x=x, position_ids=kwargs.get("position_ids"))
        module._genaccel_xquant_layer = weakref.ref(cache.layers[module.layer_idx])  # for attention.py
    else:
        module._genaccel_xquant_layer = None


def _decoder_hook(module, args, kwargs):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, XQuantCache) and cache.cl_input == "pre_norm":
        cache.stash(module.self_attn.layer_idx, r=args[0] if args else kwargs["hidden_states"])


def install_hooks(model: torch.nn.Module) -> None:
    """The pre-hooks, once per model; they do nothing for other caches."""
    if getattr(model, "_genaccel_xquant_hooks", None):
        return
    handles = []
    for layer in decoder_layers(model):
        handles.append(layer.self_attn.register_forward_pre_hook(_attention_hook, with_kwargs=True))
        handles.append(layer.register_forward_pre_hook(_decoder_hook, with_kwargs=True))
    model._genaccel_xquant_hooks = handles


def use_absorbed_attention(model: torch.nn.Module) -> None:
    """Switches the model's attention implementation to "genaccel_xquant" (attention.py): torch SDPA, except
    in the decode steps of an XQuantCache with absorbed_values, where V is absorbed."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from .attention import ATTENTION_NAME, register_attention

    register_attention()
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


def remove_hooks(model: torch.nn.Module) -> None:
    for h in getattr(model, "_genaccel_xquant_hooks", None) or []:
        h.remove()
    model._genaccel_xquant_hooks = None


def svd_factors(model: torch.nn.Module, path: Optional[str] = None) -> List[Dict[str, torch.Tensor]]:
    """Per layer, W^T = U S B^T of k_proj and v_proj (float64 SVD, stored float32): `k_u` / `v_u` (d, r)
    project X to the latent, `k_w` / `v_w` (d_kv, r) = (S B^T)^T rematerialise from it (as linear weights).
    Loaded from `path` (safetensors) when it exists, else computed and, with a path, saved there."""
    from safetensors.torch import load_file, save_file

    layers = decoder_layers(model)
    if path and os.path.exists(path):
        flat = load_file(path)
        factors = [{k: flat[f"layers.{i}.{k}"] for k in ("k_u", "k_w", "v_u", "v_w")} for i in range(len(layers))]
        for i, (f, layer) in enumerate(zip(factors, layers)):
            if f["k_u"].shape[0] != layer.self_attn.k_proj.weight.shape[1]:
                raise ValueError(f"{path}: layer {i}'s factors do not fit this model (hidden size "
                                 f"{f['k_u'].shape[0]} vs {layer.self_attn.k_proj.weight.shape[1]})")
        return factors
    factors = []
    for layer in layers:
        f = {}
        for name, proj in (("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
            u, s, vh = torch.linalg.svd(proj.weight.detach().double().T, full_matrices=False)  # (d, r), (r,), (r, d_kv)
            f[f"{name}_u"] = u.float().contiguous()
            f[f"{name}_w"] = (vh.T * s).float().contiguous()
        factors.append(f)
    if path:
        save_file({f"layers.{i}.{k}": t.cpu() for i, f in enumerate(factors) for k, t in f.items()}, path)
    return factors


class XQuantCache(Cache):
    """A transformers Cache holding quantized X (or K / V) per layer: pass it as `past_key_values` to
    `model(...)` or `model.generate(...)`. Arguments (module docstring for the modes):

    mode: one of MODES; bits: 2, 3, 4, 8 or 16 (unquantized); group_size: elements per group (multiple
    of 8); zero: "int" (b-bit zero point, XQuant's accounting) or "fp16" (KIVI's offset); axis: "token"
    or "channel", X's groups in mode xquant; residual_length: kivi's full-precision value window;
    cl_base_layers / cl_base_bits / cl_input: xquant_cl's directly stored layers, their bits (default
    `bits`) and which input is delta-coded; svd_path: xquant_gqa's factor file (safetensors);
    absorbed_values: decode with XQuant's absorbed value path (attention.py; modes xquant / xquant_gqa;
    switches the model's attention implementation to "genaccel_xquant", SDPA elsewhere); dtype: what
    stored values are cast to before they are stored or quantized (None: the model's; torch.float16
    makes a float32 model's cache what a float16 deployment stores)."""

    def __init__(self, model: torch.nn.Module, mode: str = "xquant", bits: int = 4, group_size: int = 128,
                 zero: str = "int", axis: str = "token", residual_length: int = 128, cl_base_layers: int = 1,
                 cl_base_bits: Optional[int] = None, cl_input: str = "post_norm", svd_path: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, absorbed_values: bool = False):
        self.mode = check_choice("mode", mode, MODES)
        if isinstance(bits, bool) or bits not in BITS + (16,):
            raise ValueError(f"bits must be one of {BITS + (16,)}, got {bits!r}")
        if mode == "fp16_kv" and bits != 16:
            raise ValueError(f"mode 'fp16_kv' stores K / V unquantized: bits must be 16, got {bits}")
        check_int("group_size", group_size, 8)
        if group_size % 8:
            raise ValueError(f"group_size must be a multiple of 8, got {group_size}")
        self.bits, self.group_size = bits, group_size
        self.zero = check_choice("zero", zero, ("int", "fp16"))
        self.axis = check_choice("axis", axis, tuple(AXES))
        self.residual_length = check_int("residual_length", residual_length, 0)
        self.cl_base_layers = check_int("cl_base_layers", cl_base_layers, 1)
        self.cl_base_bits = bits if cl_base_bits is None else cl_base_bits
        if isinstance(self.cl_base_bits, bool) or self.cl_base_bits not in BITS + (16,):
            raise ValueError(f"cl_base_bits must be one of {BITS + (16,)}, got {cl_base_bits!r}")
        self.cl_input = check_choice("cl_input", cl_input, CL_INPUTS)
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be None, float16, bfloat16 or float32, got {dtype}")
        self.dtype = dtype
        if absorbed_values and mode not in ("xquant", "xquant_gqa"):
            raise ValueError(f"absorbed_values needs mode 'xquant' or 'xquant_gqa' (rows to weight), got {mode!r}")
        self.absorbed_values = bool(absorbed_values)
        layers = decoder_layers(model)
        self.parts = [_AttentionParts(layer) for layer in layers]
        self.rotary = rotary_embedding(model)
        self.svd = None
        if mode == "xquant_gqa":
            w = self.parts[0].k_proj.weight
            self.svd = [{k: t.to(device=w.device, dtype=w.dtype) for k, t in f.items()}
                        for f in svd_factors(model, svd_path)]
        self.n_kv_elements = [p.k_proj.weight.shape[0] + p.v_proj.weight.shape[0] for p in self.parts]
        install_hooks(model)
        if self.absorbed_values:
            use_absorbed_attention(model)
        layer_class = {"fp16_kv": KVLayer, "kivi": KVLayer, "xquant": XLayer, "xquant_gqa": XLayer,
                       "xquant_cl": CLLayer}[mode]
        super().__init__(layers=[layer_class(self, i) for i in range(len(layers))])
        self.cl_step: Dict[str, torch.Tensor] = {}  # xquant_cl's accumulators of this forward pass
        self._rope = None  # (cos, sin) of the past tokens in this forward pass, shared by the layers
        self.positions = TokenStore(16)  # (B, L, 1) int32, only for positions other than 0..L-1

    def store(self, bits: int, axis: int) -> TokenStore:
        return TokenStore(bits, self.group_size, axis, self.zero, self.dtype)

    def stash(self, layer_idx: int, **inputs) -> None:
        layer = self.layers[layer_idx]
        layer.pending = {**(layer.pending or {}), **inputs}
        if layer_idx == 0 and "x" in inputs:
            self.cl_step, self._rope = {}, None  # a new forward pass starts

    def keep_positions(self, layer: XQuantLayer, position_ids: Optional[torch.Tensor], x: torch.Tensor) -> None:
        """Layer 0 records the new tokens' positions (once for all layers), after the step's past RoPE:
        nothing while every row's positions are 0..L-1, all of them from the first step where they are
        not (a left-padded batch)."""
        if layer.index != 0:
            return
        b, new = x.shape[:2]
        start = layer.cumulative_length
        expected = torch.arange(start, start + new, device=x.device).expand(b, new)
        ids = expected if position_ids is None else position_ids.expand(b, new)
        if self.positions.tokens == 0 and torch.equal(ids, expected):
            return
        if self.positions.tokens == 0 and start:
            self.positions.append(torch.arange(start, device=x.device).expand(b, start).unsqueeze(-1).to(torch.int32))
        self.positions.append(ids.unsqueeze(-1).to(torch.int32))

    def past_rope(self, layer: XQuantLayer, x: torch.Tensor):
        """cos, sin (B, L, hd) at the past tokens' positions, computed once per forward pass."""
        if self._rope is None:
            length = layer.cumulative_length
            if self.positions.tokens:
                pos = self.positions.data[..., 0].long()
            else:
                pos = torch.arange(length, device=x.device).expand(x.shape[0], length)
            self._rope = self.rotary(x, pos)
        return self._rope

    def memory_report(self) -> Dict[str, object]:
        """Bytes actually stored, per layer and per token, and the ratio to an fp16 K/V cache of the same
        tokens (2 bytes per K and V element)."""
        tokens = self.get_seq_length()
        batch = self.batch_size if tokens else 0
        per_layer = []
        for i, layer in enumerate(self.layers):
            stored = layer.nbytes
            fp16 = 2 * self.n_kv_elements[i] * tokens * batch
            per_layer.append({"layer": i, "bytes": stored, "bytes_per_token": stored / max(tokens * batch, 1),
                              "fp16_kv_bytes": fp16, "ratio": fp16 / stored if stored else math.inf})
        total = sum(p["bytes"] for p in per_layer) + self.positions.nbytes
        fp16 = sum(p["fp16_kv_bytes"] for p in per_layer)
        return {"mode": self.mode, "bits": self.bits, "group_size": self.group_size, "tokens": tokens,
                "batch": batch, "bytes": total, "positions_bytes": self.positions.nbytes, "fp16_kv_bytes": fp16,
                "ratio": fp16 / total if total else math.inf, "layers": per_layer}

    @property
    def batch_size(self) -> int:
        for layer in self.layers:
            for s in layer.stores.values():
                if s.data is not None:
                    return s.data.shape[0]
        return 0

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.cl_step, self._rope = {}, None
        self.positions = TokenStore(16)


def enable_xquant(model: torch.nn.Module, mode: str = "xquant", bits: int = 4, group_size: int = 128,
                  **options) -> XQuantCache:
    """Hooks the model (once) and returns an empty XQuantCache for it: `model.generate(ids,
    past_key_values=enable_xquant(model, "xquant", bits=4))`. Options: XQuantCache's."""
    return XQuantCache(model, mode=mode, bits=bits, group_size=group_size, **options)
