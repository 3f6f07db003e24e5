"""Run-level settings: what an `Engine` is built with, one frozen object validated once.

Everything that stays the same for every request of a run (checkpoint set, backends, device, dtype,
variant, quantization, step cache, streaming / offload, parallel layout) lives here and is checked in
`RunSettings.__post_init__`, so a bad combination is refused before anything loads, and the parsed
forms (backend choice, step-cache spec, variant, layout, device policy) are made once and kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ltx_ascend import backends as registry
from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine.loading import placement_for_offload
from ltx_ascend.engine.memory_policy import parse_placement
from ltx_ascend.engine.stack import OFFLOAD_CHOICES, WHOLE_CANNOT_STREAM, BackendChoice, check_quantization
from ltx_ascend.engine.stages import PIPELINES
from ltx_ascend.engine.step_cache import StepCacheSpec, parse_spec
from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.runtime.artifacts import FALLBACKS
from ltx_ascend.store import Variant

DIT_LAYOUTS = ("auto", "whole", "blocks")
EPS = ("cpu", "cuda")


def default_backend(device: str | None) -> str:
    """With no --backend: om on an Ascend host (torch_npu usable and --device auto or npu), i.e. the
    compiled graphs where ltx-prepare built them and eager on the NPU where not, never ONNX Runtime's
    CPU provider in bfloat16; ort elsewhere (the tiny set's compiled graphs, in float32 on the CPU)."""
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        kind = dev.available_backends()[0]
    else:
        kind = "npu" if wanted.startswith("npu") else wanted.split(":")[0]
    return registry.default_for(kind)  # each record names the device kinds it is the default on


@dataclass(frozen=True)
class RunSettings:
    """The run-level settings, named as ltx-run's flags (`--backend` -> `backend`). `checkpoint_path`
    None runs the tiny set under `artifacts/tiny` (written on first use). Frozen and validated on
    construction: a bad value or combination raises UserError here, before anything loads."""

    pipelines: tuple[str, ...] = ("ti2vid_two_stages",)
    checkpoint_path: Path | None = None
    gemma_root: Path | None = None
    spatial_upsampler_path: Path | None = None
    distilled_lora: tuple[LoraSpec, ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    artifacts: Path = Path("artifacts")
    backend: str | None = None
    ep: str = "cpu"
    soc: str | None = None
    device: str | None = None
    dtype: str | None = None
    variant: str | Variant | None = None
    quantization: str = ""
    step_cache: str = "off"
    dit_layout: str = "auto"
    streaming_prefetch_count: int | None = None
    max_device_memory: float | None = None
    offload: str = "none"
    fallback: str = "eager"
    build_missing: bool = False
    parallel: str | distributed.Layout | None = None
    prompt_cache: Path | None = None
    # Added beyond the contract: ltx-run's --distilled-checkpoint-path and --quantization-skip.
    distilled_checkpoint_path: Path | None = None
    quantization_skip: tuple[str, ...] = ()
    # Where models live between requests, per component (`text_encoder=host,dit=rebuild`); the rest
    # as the memory policy chooses from the device's memory (memory_policy.py). `device_memory_gb`
    # sizes that device when it cannot be asked (or to plan for another one).
    placement: str | Mapping[str, str] | None = None
    device_memory_gb: float | None = None
    # The parsed forms, made once by check().
    backends: BackendChoice = field(init=False, repr=False, compare=False)
    step_cache_spec: StepCacheSpec = field(init=False, repr=False, compare=False)
    variant_spec: Variant | None = field(init=False, repr=False, compare=False)
    layout: distributed.Layout = field(init=False, repr=False, compare=False)
    policy: dev.DevicePolicy = field(init=False, repr=False, compare=False)
    placements: dict[str, str] = field(init=False, repr=False, compare=False)  # offload, then placement

    def __post_init__(self) -> None:
        self.check()

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def check(self) -> None:
        """Every run-level check, once; fills the parsed forms."""
        pipelines = (self.pipelines,) if isinstance(self.pipelines, str) else tuple(self.pipelines)
        if not pipelines:
            raise UserError("RunSettings.pipelines is empty: name at least one pipeline, e.g. ti2vid_two_stages")
        for name in pipelines:
            if name not in PIPELINES:
                raise UserError(f"pipeline {name!r}: choose one of {', '.join(PIPELINES)}")
        self._set("pipelines", pipelines)
        for name in (
            "checkpoint_path",
            "gemma_root",
            "spatial_upsampler_path",
            "prompt_cache",
            "distilled_checkpoint_path",
        ):
            if getattr(self, name) is not None:
                self._set(name, Path(getattr(self, name)))
        self._set("artifacts", Path(self.artifacts))
        self._set("distilled_lora", tuple(self.distilled_lora or ()))
        self._set("loras", tuple(self.loras or ()))
        self._set("quantization_skip", tuple(self.quantization_skip or ()))
        if self.ep not in EPS:
            raise UserError(f"--ep {self.ep}: choose cpu or cuda")
        if self.fallback not in FALLBACKS:
            raise UserError(f"--fallback {self.fallback}: choose {' or '.join(FALLBACKS)}")
        if self.offload not in OFFLOAD_CHOICES:
            raise UserError(f"--offload {self.offload}: choose {', '.join(OFFLOAD_CHOICES)}")
        if self.dit_layout not in DIT_LAYOUTS:
            raise UserError(f"--dit-layout {self.dit_layout}: choose {', '.join(DIT_LAYOUTS)}")
        prefetch, memory = self.streaming_prefetch_count, self.max_device_memory
        if prefetch is not None and prefetch < 0:
            raise UserError(f"--streaming-prefetch-count {prefetch}: must be >= 0 (blocks ahead)")
        if memory is not None and not memory > 0:
            raise UserError(f"--max-device-memory {memory}: must be a positive number of GB")
        if prefetch is not None and memory is not None:
            raise UserError("--streaming-prefetch-count and --max-device-memory: pass one (the second picks the first)")
        if self.dit_layout == "whole" and (prefetch is not None or memory):
            raise UserError(f"--dit-layout whole: {WHOLE_CANNOT_STREAM}")
        backends = BackendChoice.parse(self.backend or default_backend(self.device))  # refused before any write
        self._set("backends", backends)
        self._set("step_cache_spec", parse_spec(self.step_cache))
        variant = Variant.parse(self.variant) if isinstance(self.variant, str) else self.variant
        self._set("variant_spec", variant)
        layout = self.parallel
        layout = distributed.Layout.parse(layout) if isinstance(layout, str) else layout or distributed.Layout()
        self._set("layout", layout)
        if layout.ulysses > 1 and self.step_cache_spec.policy == "auto":  # a block schedule is the same on every rank
            raise UserError(
                f"--step-cache auto with --parallel {layout}: each rank decides on its own tokens, so the ranks of a "
                "sequence could skip different blocks; use a block schedule (block:start=S,interval=I) or cfg=N alone"
            )
        if layout.ulysses > 1 and self.dit_layout == "whole":
            raise UserError(
                f"--dit-layout whole with --parallel {layout}: sequence parallel shards the DiT's blocks (compiled: "
                "the block graph split at attention); drop --dit-layout whole"
            )
        self._set("policy", dev.policy_for(dev.resolve_device(self.device), self.dtype))
        dit_backend = backends.of("dit")
        if variant is not None:
            if not registry.backend(dit_backend).compiled:
                raise UserError(f"--variant {variant.label} picks a compiled graph: pass --backend ort or om")
            if variant.quantization and self.quantization not in ("", variant.quantization):
                raise UserError(f"--variant {variant.label} and --quantization {self.quantization} disagree: drop one")
            self._set("quantization", self.quantization or variant.quantization)
        check_quantization(self.quantization, dit_backend, self.policy.device)
        if self.device_memory_gb is not None and not self.device_memory_gb > 0:
            raise UserError(f"device_memory_gb {self.device_memory_gb}: must be a positive number of GB")
        self._set("placements", {**placement_for_offload(self.offload), **parse_placement(self.placement)})
        if self.tiny or self.build_missing:
            check_writable_dir(self.artifacts, "--artifacts")
        check_writable_dir(self.prompt_cache_dir, "--prompt-cache")

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint that runs (--checkpoint-path, else --distilled-checkpoint-path); None: the tiny set."""
        return self.checkpoint_path or self.distilled_checkpoint_path

    @property
    def tiny(self) -> bool:
        return self.checkpoint is None

    @property
    def prompt_cache_dir(self) -> Path:
        return self.prompt_cache or self.artifacts / "prompt-cache"

    @property
    def builds(self) -> bool:
        """Missing artifacts are built (--build-missing, implied for the tiny set)."""
        return self.tiny or self.build_missing

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSettings:
        """The settings of a parsed `ltx-run` command line."""
        pick = {
            "pipelines": (args.pipeline,),
            "distilled_lora": tuple(args.distilled_lora or ()),
            "loras": tuple(args.lora or ()),
            "streaming_prefetch_count": args.streaming_prefetch_count,
            "max_device_memory": args.max_device_memory,
            "quantization_skip": tuple(args.quantization_skip or ()),
            "device": None if args.device in (None, "auto") else args.device,
        }
        names = {f.name for f in fields(cls) if f.init}
        given = {name: getattr(args, name) for name in names if hasattr(args, name) and name not in pick}
        return cls(**given, **{k: v for k, v in pick.items() if k in names})
