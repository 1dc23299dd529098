"""nn.Module form of Radial attention: the self-attention call of a video transformer block."""

from typing import Dict, Optional

import torch

from ..._utils import check_choice, check_int
from ..block_sparse import ATTENTION_BACKENDS, BlockSparsePlan, block_sparse_attention, mask_density
from .plan import radial_block_mask


class RadialAttention(torch.nn.Module):
    """Block-sparse self-attention under the Radial mask (`genaccel.radial_block_mask`) over
    (B, H, N, D) q and (B, Hkv, N, D) k, v with N = num_frames * tokens_per_frame + text_tokens.

    The mask is built once and planned once per device. forward runs dense attention (torch SDPA)
    where layer_idx < dense_layers or step_idx < dense_timesteps (the paper's dense warm-up; None
    skips that test), else the block-sparse kernels. Differentiable in q, k, v, so LoRA length
    extension trains through it. `backend` is passed to `genaccel.block_sparse_attention`.
    """

    def __init__(self, num_frames: int, tokens_per_frame: int, block_size: int = 128, decay_factor: float = 1.0,
                 sink_frame: bool = True, text_tokens: int = 0, dense_layers: int = 0, dense_timesteps: int = 0,
                 *, backend: str = "auto"):
        super().__init__()
        mask = radial_block_mask(num_frames, tokens_per_frame, block_size, decay_factor, sink_frame, text_tokens)
        self.num_frames, self.tokens_per_frame, self.block_size = num_frames, tokens_per_frame, block_size
        self.decay_factor, self.sink_frame, self.text_tokens = float(decay_factor), sink_frame, text_tokens
        self.dense_layers = check_int("dense_layers", dense_layers)
        self.dense_timesteps = check_int("dense_timesteps", dense_timesteps)
        self.backend = check_choice("backend", backend, ATTENTION_BACKENDS)
        self.seq_len = num_frames * tokens_per_frame + text_tokens
        self.register_buffer("block_mask", mask, persistent=False)
        self.density = mask_density(mask)
        self._plans: Dict[torch.device, BlockSparsePlan] = {}

    def is_dense(self, layer_idx: Optional[int] = None, step_idx: Optional[int] = None) -> bool:
        """Whether forward runs dense attention at this layer and denoising step."""
        if layer_idx is not None and check_int("layer_idx", layer_idx) < self.dense_layers:
            return True
        return step_idx is not None and check_int("step_idx", step_idx) < self.dense_timesteps

    def plan(self, device: torch.device) -> BlockSparsePlan:
        """The mask's plan on `device`, made on first use."""
        device = torch.device(device)
        if device not in self._plans:
            mask = self.block_mask.to(device)[None, None]
            self._plans[device] = BlockSparsePlan.from_mask(mask, self.block_size)
        return self._plans[device]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: Optional[int] = None,
                step_idx: Optional[int] = None) -> torch.Tensor:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[2] != self.seq_len:
                raise ValueError(
                    f"{name} must be a 4-D tensor (B, H, N, D) with N = num_frames * tokens_per_frame + "
                    f"text_tokens = {self.seq_len}, got shape {tuple(getattr(t, 'shape', ()))}")
        if self.is_dense(layer_idx, step_idx):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])
        return block_sparse_attention(q, k, v, self.plan(q.device), backend=self.backend)

    def extra_repr(self) -> str:
        return (f"num_frames={self.num_frames}, tokens_per_frame={self.tokens_per_frame}, "
                f"block_size={self.block_size}, decay_factor={self.decay_factor}, sink_frame={self.sink_frame}, "
                f"text_tokens={self.text_tokens}, dense_layers={self.dense_layers}, "
                f"dense_timesteps={self.dense_timesteps}, density={self.density:.4f}")
