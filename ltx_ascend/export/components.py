"""The stage graph interface: what each component exports, with which named tensors.

Every component module provides `build_items(ckset, profile, dtype) -> list[ExportItem]`: the
graph-form module (positional tensors in, tuple out), its input and output names, sample feeds at
the profile's static shapes, and the eager ltx-core reference on those feeds. The exporter,
the verifier and the parity tests all consume this one description.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import ShapeProfile

# Component name -> "module:function" building its export items. Imported lazily.
BUILDERS: dict[str, str] = {
    "dit": "ltx_ascend.export.dit:build_items",
    "video_encoder": "ltx_ascend.export.video_vae:build_encoder_items",
    "video_decoder": "ltx_ascend.export.video_vae:build_decoder_items",
    "audio_decoder": "ltx_ascend.export.audio:build_audio_decoder_items",
    "vocoder": "ltx_ascend.export.audio:build_vocoder_items",
    "spatial_upsampler": "ltx_ascend.export.upsampler:build_items",
    "text_connectors": "ltx_ascend.export.text_connectors:build_items",
}
EXPORTABLE = tuple(BUILDERS)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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

    @property
    def name(self) -> str:
        return f"{self.component}-{self.variant}" if self.variant else self.component

    def io_spec(self, outputs: Sequence[torch.Tensor] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Names, shapes and dtypes of the graph boundary (outputs from a reference run)."""
        inputs = [
            {"name": n, "shape": list(self.sample[n].shape), "dtype": dtype_name(self.sample[n].dtype)}
            for n in self.input_names
        ]
        spec: dict[str, list[dict[str, Any]]] = {"inputs": inputs}
        if outputs is not None:
            spec["outputs"] = [
                {"name": n, "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
                for n, t in zip(self.output_names, outputs, strict=True)
            ]
        return spec

    def args(self) -> list[torch.Tensor]:
        return [self.sample[n] for n in self.input_names]


@dataclass(frozen=True)
class ExportOptions:
    """Choices only some components read (today: the DiT)."""

    dit_layout: str = "auto"  # "whole", "blocks", or "auto" (blocks above WHOLE_DIT_MAX_BYTES of weights)
    random_config: dict[str, Any] | None = None  # export with seeded random weights at this config's sizes
    seed: int = 0
    ort_fused: bool = False  # ORT-only graph: com.microsoft::MultiHeadAttention, SimplifiedLayerNormalization
    quantization: str = ""  # "" (float) or "w8a8" (the DiT blocks' linear layers; export/quantize.py)
    quantization_skip: tuple[str, ...] = ()  # fnmatch patterns of block linears kept float
    smooth_alpha: float | None = None  # SmoothQuant migration strength (w8a8 only), calibrated on the sample


def variant_name(options: ExportOptions, npu_ops: bool = False) -> str:
    """The graph variant a request names: "" (portable), "npu-ops", "ort-fused", each optionally "+w8a8"."""
    base = "npu-ops" if npu_ops else "ort-fused" if options.ort_fused else ""
    if not options.quantization:
        return base
    return f"{base}+{options.quantization}" if base else options.quantization


def ort_only(variant: str) -> bool:
    """Variants ATC cannot compile: com.microsoft fused ops, or ORT's MatMulInteger lowering of w8a8."""
    return variant.startswith("ort-fused") or variant == "w8a8"


class ItemBuilder(Protocol):
    def __call__(self, ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]: ...


def builder(component: str) -> ItemBuilder:
    if component not in BUILDERS:
        raise UserError(f"--component {component}: choose one of {', '.join(EXPORTABLE)} or all")
    module_name, fn = BUILDERS[component].split(":")
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
