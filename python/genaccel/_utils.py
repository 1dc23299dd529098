"""Argument helpers shared by every family's wrappers."""

from typing import Tuple, Union

import torch

BlockSize = Union[int, Tuple[int, int]]


def block_size_pair(block_size: BlockSize) -> Tuple[int, int]:
    """(block_q, block_k) from an int or a pair of positive ints; raises naming block_size."""
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    if (
        not isinstance(block_size, (tuple, list))
        or len(block_size) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block_size)
    ):
        raise ValueError(f"block_size must be a positive int or a pair of them, got {block_size!r}")
    return tuple(block_size)


def check_fraction(name: str, x: float) -> float:
    """x as a float in [0, 1]; raises naming the argument otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    return float(x)


def check_scale(scale) -> float:
    """scale as a float: a real number (not a bool or a string); the ops refuse what is not finite
    in float32."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a real number, got {scale!r}")
    return float(scale)


def check_int(name: str, x, low: int = 0) -> int:
    """x as an int >= low (not a bool, a float or a string); raises naming the argument otherwise."""
    if isinstance(x, bool) or not isinstance(x, int) or x < low:
        raise ValueError(f"{name} must be an int >= {low}, got {x!r}")
    return x


def autocast_enabled(t) -> bool:
    """Whether autocast is on for the device of tensor t (never for the meta device, which has none)."""
    return isinstance(t, torch.Tensor) and t.device.type != "meta" and torch.is_autocast_enabled(t.device.type)


def check_choice(name: str, value, choices) -> str:
    """value if it is one of choices; raises naming the argument otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def refuse_double_backward(backward_op: str, forward_op: str) -> None:
    """Gives the backward op `genaccel::<backward_op>` an autograd formula that raises: gradients of
    its gradients are not implemented, and without a formula torch would warn and return zeros.
    The formula only runs when the first backward was taken with create_graph=True."""

    def backward(ctx, *grads):
        raise RuntimeError(f"{forward_op}: double backward (the gradient of its gradients, e.g. "
                           f"autograd.grad(..., create_graph=True) then backward) is not supported")

    torch.library.register_autograd(f"genaccel::{backward_op}", backward,
                                    setup_context=lambda ctx, inputs, output: None)


def cache_dir() -> "Path":
    """Where genaccel keeps what it builds or trains locally (never committed): $GENACCEL_CACHE, else
    ~/.cache/genaccel."""
    import os
    from pathlib import Path

    return Path(os.environ.get("GENACCEL_CACHE") or Path.home() / ".cache" / "genaccel")
