"""The DiT's device-memory and streaming-time model, from the config alone (no weights).

One model for both users: `ltx-plan` predicts what a run needs, and `ltx-run --max-device-memory`
picks its block-streaming prefetch count with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ltx_ascend.errors import UserError
from ltx_ascend.shapes import ShapeProfile

USABLE_FRACTION = 0.9  # of device memory: the allocator's fragmentation, workspace, the runtime's own


def meta_dit(config: dict[str, Any]) -> torch.nn.Module:
    """ltx-core's transformer for `config` on the meta device: shapes and counts, no memory."""
    from ltx_core.model.transformer import LTXModelConfigurator

    with torch.device("meta"):
        return LTXModelConfigurator.from_config(config)


@dataclass(frozen=True)
class DiTMemory:
    """Bytes on the device for one DiT call: weights (shell + blocks) and activations."""

    num_layers: int
    block_bytes: int  # one transformer block's weights
    shell_bytes: int  # everything but the blocks (patchify, embeddings, output head)
    activation_bytes: int  # peak intermediates of one call at its pass batch

    def resident_blocks(self, prefetch: int | None) -> int:
        """Blocks on the device at once: all (resident, None), else the running one + `prefetch` ahead."""
        return self.num_layers if prefetch is None else min(prefetch + 1, self.num_layers)

    def weight_bytes(self, prefetch: int | None) -> int:
        return self.shell_bytes + self.resident_blocks(prefetch) * self.block_bytes

    def peak_bytes(self, prefetch: int | None) -> int:
        return self.weight_bytes(prefetch) + self.activation_bytes


def activation_bytes(block: torch.nn.Module, profile: ShapeProfile, bytes_per: int, passes: int) -> int:
    """The feed-forward inner activation plus nine AdaLN-modulated rows of video tokens, per pass."""
    ff_inner = block.ff.net[2].in_features
    return profile.video_tokens * (ff_inner + 9 * block.attn1.to_q.in_features) * bytes_per * passes


def dit_memory(config: dict[str, Any], profile: ShapeProfile, bytes_per: int, passes: int) -> DiTMemory:
    model = meta_dit(config)
    block = model.transformer_blocks[0]
    block_params = sum(p.numel() for p in block.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    layers = len(model.transformer_blocks)
    return DiTMemory(
        num_layers=layers,
        block_bytes=block_params * bytes_per,
        shell_bytes=(all_params - layers * block_params) * bytes_per,
        activation_bytes=activation_bytes(block, profile, bytes_per, passes),
    )


def choose_prefetch(memory: DiTMemory, device_bytes: float) -> int | None:
    """None (every block resident) when the whole DiT fits `device_bytes`; else the smallest prefetch
    count that fits, 1 before 0: one block ahead already overlaps each copy with a block's compute
    (`streamed_call_seconds`), and more blocks ahead only cost memory in this model."""
    usable = device_bytes * USABLE_FRACTION
    if memory.peak_bytes(None) <= usable:
        return None
    for prefetch in (1, 0):
        if memory.peak_bytes(prefetch) <= usable:
            return prefetch
    need = memory.peak_bytes(0) / USABLE_FRACTION / 1e9
    raise UserError(
        f"--max-device-memory {device_bytes / 1e9:.1f}: the DiT needs at least {need:.1f} GB even streaming one "
        f"block at a time (shell {memory.shell_bytes / 1e9:.2f} GB, block {memory.block_bytes / 1e9:.2f} GB, "
        f"activations {memory.activation_bytes / 1e9:.2f} GB); raise it or lower the resolution"
    )


def streamed_call_seconds(compute_s: float, memory: DiTMemory, h2d_bytes_per_s: float, prefetch: int | None) -> float:
    """One DiT call with its blocks streamed: every block crosses the host link once per call.
    Prefetch >= 1 overlaps block i+1's copy with block i's compute (the slower of the two sets the
    pace); 0 serialises them; None (resident) copies nothing."""
    if prefetch is None:
        return compute_s
    copy_s = memory.num_layers * memory.block_bytes / h2d_bytes_per_s
    return compute_s + copy_s if prefetch == 0 else max(compute_s, copy_s)
