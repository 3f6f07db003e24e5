"""Export-time patches for ltx-core's tracing hazards. Active only inside `export_patches()`.

Each replaces one ltx-core function with a mathematically identical form that traces to a
correct, NPU-safe graph; ltx-core itself is never edited, and eager runs never see a patch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from ltx_core.model.transformer import rope


def split_rotary_emb_out_of_place(input_tensor: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """ltx-core's `apply_split_rotary_emb` without the in-place `addcmul_` on slices.

    The TorchScript tracer drops in-place updates to views of intermediate tensors, so the
    traced graph silently loses the sine term (and the `*_pe_sin` inputs). Same arithmetic:
    first' = first*cos - second*sin, second' = second*cos + first*sin.
    """
    needs_reshape = input_tensor.ndim != 4 and cos.ndim == 4
    if needs_reshape:
        b, h, t, _ = cos.shape
        input_tensor = input_tensor.reshape(b, t, h, -1).swapaxes(1, 2)
    halves = input_tensor.unflatten(-1, (2, -1))  # "... (d r) -> ... d r" with d=2
    first, second = halves[..., :1, :], halves[..., 1:, :]
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    output = torch.cat((first * c - s * second, second * c + s * first), dim=-2).flatten(-2)
    if needs_reshape:
        output = output.swapaxes(1, 2).reshape(b, t, -1)
    return output


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    original = rope.apply_split_rotary_emb
    rope.apply_split_rotary_emb = split_rotary_emb_out_of_place
    try:
        yield
    finally:
        rope.apply_split_rotary_emb = original
