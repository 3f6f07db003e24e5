"""Where a block chain's per-block weights come from: the one seam that layer streaming replaces.

The DiT block graph takes its weights as inputs (`w.<parameter name>`), so the same graph (compiled
or eager) runs every block; the runner asks a `BlockWeights` for block i's tensors right before it
runs block i. `ResidentBlockWeights` keeps them all on the device (the default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file


class BlockWeights:
    """Block index -> {parameter name: tensor on the compute device}, for `len(self)` blocks."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Mapping[str, torch.Tensor]:
        raise NotImplementedError

    def release(self, index: int) -> None:
        """Called once block `index` has run in this pass; a streaming source may drop it then."""

    def close(self) -> None:
        """Drop every tensor this source holds."""


class ResidentBlockWeights(BlockWeights):
    """Every block's weights held on the device for the whole run."""

    def __init__(self, blocks: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self._blocks = list(blocks)

    @classmethod
    def from_files(cls, files: Sequence[Path], device: torch.device | str) -> ResidentBlockWeights:
        """`block_XX.safetensors` written by the block exporter, loaded once onto `device`."""
        return cls([load_file(str(p), device=str(device)) for p in files])

    @classmethod
    def from_modules(cls, blocks: Sequence[torch.nn.Module]) -> ResidentBlockWeights:
        """An eager model's own blocks: their parameters, shared, not copied."""
        return cls([{n: p.detach() for n, p in b.named_parameters()} for b in blocks])

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, index: int) -> Mapping[str, torch.Tensor]:
        return self._blocks[index]

    def close(self) -> None:
        self._blocks = []
