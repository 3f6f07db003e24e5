"""The stage graph interface: what each component exports, with which named tensors.

Every component's export builder (named in its `ComponentSpec`) provides
`build_items(ckset, profile, dtype) -> list[ExportItem]`: the graph-form module (positional tensors
in, tuple out), its input and output names, sample feeds at the profile's static shapes, and the
eager ltx-core reference on those feeds. The exporter, the verifier and the parity tests all
consume this one description.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ltx_ascend import dtypes
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.components import EXPORTABLE, REGISTRY, RandomWeights
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.store import Variant


@dataclass
class ExportItem:
    """One graph to export, with everything needed to check it."""

    component: str
    module: torch.nn.Module
    input_names: Sequence[str]
    output_names: Sequence[str]
    sample: dict[str, torch.Tensor]
    reference: Callable[[dict[str, torch.Tensor]], Sequence[torch.Tensor]]
    variant: str = ""  # "" for the whole component; "tile", "block", ... for parts
    peak: float | None = None  # value range for PSNR (video/audio in [-1, 1] -> 2.0)
    notes: dict[str, Any] = field(default_factory=dict)
    # Files beside the graph the runtime also needs (the DiT's per-block weights); returns their names.
    write_extra: Callable[[Path], list[str]] | None = None
    # What `write_extra`'s files are made of: when set, they go to the store's content-addressed
    # weights (store.ensure_weights), written once for every artifact made from the same weights.
    weights_material: dict[str, Any] | None = None
    # A graph cut into parts after tracing (the DiT block at its attention cores, export/dit_split.py).
    split: GraphSplit | None = None

    @property
    def name(self) -> str:
        return f"{self.component}-{self.variant}" if self.variant else self.component

    def io_spec(self, outputs: Sequence[torch.Tensor] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Names, shapes and dtypes of the graph boundary (outputs from a reference run)."""
        inputs = [
            {"name": n, "shape": list(self.sample[n].shape), "dtype": dtypes.name(self.sample[n].dtype)}
            for n in self.input_names
        ]
        spec: dict[str, list[dict[str, Any]]] = {"inputs": inputs}
        if outputs is not None:
            spec["outputs"] = [
                {"name": n, "shape": list(t.shape), "dtype": dtypes.name(t.dtype)}
                for n, t in zip(self.output_names, outputs, strict=True)
            ]
        return spec

    def args(self) -> list[torch.Tensor]:
        return [self.sample[n] for n in self.input_names]


class GraphSplit(Protocol):
    """How an item's traced graph becomes several: the parts' files, and their chain run as one graph."""

    def write(self, path: Path) -> list[tuple[str, Path]]:
        """Cut the traced file at `path` into (graph name, file) parts beside it; `path` is removed."""

    def run(self, files: dict[str, Path], feeds: dict[str, torch.Tensor]) -> Sequence[torch.Tensor]:
        """The item's outputs from its parts (ONNX Runtime), for `--verify`."""


@dataclass(frozen=True)
class ExportOptions(Variant):
    """The variant to build, plus seeded random weights when there is no checkpoint (`--random-weights`)."""

    random_config: dict[str, Any] | None = None  # export with seeded random weights at this config's sizes
    seed: int = 0

    @property
    def variant(self) -> Variant:
        return Variant(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Variant)})

    @property
    def random(self) -> RandomWeights | None:
        return None if self.random_config is None else RandomWeights(self.random_config, self.seed)


class ItemBuilder(Protocol):
    def __call__(self, ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]: ...


def builder(component: str) -> ItemBuilder:
    target = REGISTRY[component].export if component in REGISTRY else None
    if target is None:
        raise UserError(f"--component {component}: choose one of {', '.join(EXPORTABLE)} or all")
    module_name, fn = target.split(":")
    return getattr(importlib.import_module(module_name), fn)


def build_items(
    component: str,
    ckset: CheckpointSet | None,
    profile: ShapeProfile,
    dtype: torch.dtype,
    options: ExportOptions | None = None,
) -> list[ExportItem]:
    build = builder(component)
    if component == "dit":
        return build(ckset, profile, dtype, options or ExportOptions())
    if ckset is None:
        raise UserError(f"--random-weights exports only the DiT; {component} needs --checkpoint-path")
    return build(ckset, profile, dtype)


def seeded(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """Deterministic sample data: the same feeds every export, so verification is repeatable."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
