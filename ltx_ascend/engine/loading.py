"""Building the eager modules and opening the compiled sessions a run uses, kept where the memory
policy puts them (`memory_policy`: on the device, parked in host memory, or rebuilt per use).

`ModelLoader` is load-time state: one per engine, shared by its requests, so the second request
loads no model and opens no session. It counts what it builds (`loads`) and opens (`opens`).
Quantization (W8A8, ltx-core's FP8) happens here, once per DiT weight set.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.engine.artifact_finder import FP8, W8A8
from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.session import Session
from ltx_ascend.store import Resolution

# --offload all: held in host memory for the run, on the device only while each one runs.
HOST_RESIDENT = ("video_encoder", "spatial_upsampler", "video_decoder", "audio_decoder", "vocoder", "audio_encoder")


def placement_for_offload(offload: str) -> dict[str, str]:
    """ltx-run's --offload as placements: `all` parks the VAE, upsampler and vocoder in host memory;
    `text-encoder` and `all` rebuild Gemma per use (its device memory returned right after)."""
    places = {}
    if offload in ("text-encoder", "all"):
        places["text_encoder"] = "rebuild"
    if offload == "all":
        places.update(dict.fromkeys(HOST_RESIDENT, "host"))
    return places


def _key(component: str, ckset: CheckpointSet, dtype: torch.dtype) -> tuple:
    """What a module depends on: the DiT on its LoRAs, every other component only on the files."""
    return component, ckset if component == "dit" else ckset.with_loras(()), dtype


@dataclass
class ModelLoader:
    """The eager modules and compiled sessions of one run, kept by placement.

    `place(component)` says where each lives: "device" (built once, kept on the device), "host"
    (built once into host memory, moved onto the device by `on_device` for its own calls), or
    "rebuild" (built for each use and dropped after it: nothing kept). Compiled sessions are kept
    unless their component is "rebuild"."""

    policy: dev.DevicePolicy
    place: Callable[[str], str] = lambda _component: "rebuild"
    quantization: str = ""
    quantization_skip: tuple[str, ...] = ()
    modules: dict[tuple, torch.nn.Module] = field(default_factory=dict)
    sessions: dict[tuple, dict[str, Session] | None] = field(default_factory=dict)
    runners: dict[tuple, object] = field(default_factory=dict)  # DiT runners kept whole (see ModelStack.dit)
    dit_labels: dict[tuple, str] = field(default_factory=dict)  # what built each kept DiT ("eager (w8a8)")
    loads: int = 0
    opens: int = 0

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def parked(self, component: str) -> bool:
        return self.place(component) == "host"

    def keeps(self, component: str) -> bool:
        return self.place(component) != "rebuild"

    def load(self, component: str, ckset: CheckpointSet, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The eager module: on the device, or in host memory when parked (`on_device` brings it in)."""
        dtype = dtype or self.policy.dtype
        key = _key(component, ckset, dtype)
        if key in self.modules:
            return self.modules[key]
        self.loads += 1
        module = load_component(component, ckset, device="cpu" if self.parked(component) else self.device, dtype=dtype)
        if self.keeps(component):
            self.modules[key] = module
        return module

    def load_dit(self, ckset: CheckpointSet, used: dict[str, str]) -> torch.nn.Module:
        """The eager DiT, quantized as asked: W8A8 (export/quantize.py, LoRAs fused first) or ltx-core's
        FP8 policies (CUDA), built the way ltx-pipelines' model ledger builds them. Kept by placement."""
        key = _key("dit", ckset, self.policy.dtype)
        if key in self.modules:
            used["dit"] = self.dit_labels.get(key, "eager")
            return self.modules[key]
        model = self._build_dit(ckset, used)
        if self.keeps("dit"):
            self.modules[key] = model
            self.dit_labels[key] = used.get("dit", "eager")
        return model

    def _build_dit(self, ckset: CheckpointSet, used: dict[str, str]) -> torch.nn.Module:
        if self.quantization in FP8:
            from dataclasses import replace

            from ltx_core.loader.sd_ops import SDOps
            from ltx_core.quantization import QuantizationPolicy

            from ltx_ascend.checkpoints.loader import builder_for

            policy = QuantizationPolicy.fp8_cast() if self.quantization == "fp8-cast" else None
            if policy is None:
                try:
                    policy = QuantizationPolicy.fp8_scaled_mm()
                except ImportError as exc:
                    raise UserError(f"--quantization fp8-scaled-mm: {exc}; use fp8-cast or w8a8") from None
            builder = builder_for("dit", ckset)
            sd_ops = builder.model_sd_ops
            if policy.sd_ops is not None:
                mapping = (*sd_ops.mapping, *policy.sd_ops.mapping) if sd_ops else policy.sd_ops.mapping
                sd_ops = SDOps(name=f"{sd_ops.name if sd_ops else 'none'}+{policy.sd_ops.name}", mapping=mapping)
            builder = replace(builder, module_ops=(*builder.module_ops, *policy.module_ops), model_sd_ops=sd_ops)
            used["dit"] = f"eager ({self.quantization})"
            self.loads += 1
            return builder.build(device=self.device).eval()
        self.loads += 1
        model = load_component(
            "dit", ckset, device="cpu" if self.parked("dit") else self.device, dtype=self.policy.dtype
        )
        if self.quantization == W8A8:
            from ltx_ascend.export.quantize import quantize_dit_

            quantize_dit_(model, self.quantization_skip)
            used["dit"] = f"{used.get('dit', 'eager')} ({W8A8})"
        return model

    def open(
        self, component: str, resolution: Resolution, opener: Callable[[], dict[str, Session] | None]
    ) -> dict[str, Session] | None:
        """The resolution's sessions (`opener` opens them), kept unless the component is rebuilt per use."""
        key = (component, resolution.backend, str(resolution.compiled))
        if key in self.sessions:
            return self.sessions[key]
        self.opens += 1
        sessions = opener()
        if self.keeps(component) and sessions is not None:
            self.sessions[key] = sessions
        return sessions

    @contextlib.contextmanager
    def on_device(self, *modules: tuple[str, torch.nn.Module | None], log: list | None = None) -> Iterator[None]:
        """The body runs with these (name, module) on the device; parked ones go back to host memory
        afterwards and the device's cached blocks are returned to the driver."""
        moving = [(name, m) for name, m in modules if m is not None and self.parked(name)]
        for name, module in moving:
            module.to(self.device)
            if log is not None:
                log.append((name, "in"))
        try:
            yield
        finally:
            for name, module in moving:
                module.to("cpu")
                if log is not None:
                    log.append((name, "out"))
            if moving:
                gc.collect()
                dev.empty_cache(self.device)

    def clear(self) -> None:
        """Drop every kept module, session and runner (Engine.close)."""
        self.modules.clear()
        self.sessions.clear()
        self.runners.clear()
        gc.collect()
        dev.empty_cache(self.device)
