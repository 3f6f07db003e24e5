"""Finding (and, with `build_missing`, building) the compiled artifacts a run's components use.

`ArtifactFinder` is load-time state: the backend choice, variant preference and store settings of a
run, and the resolutions it has found (kept, so a resident engine's later requests do not walk the
store again). Which graph a stage needs can depend on the request (a stage under a step cache needs
the DiT's block chain), so callers say so with `blocks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltx_ascend import backends as registry
from ltx_ascend import dtypes
from ltx_ascend.backends import CompileOptions
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.components import COMPONENTS, REGISTRY, request_for
from ltx_ascend.engine.parallel import Parallel
from ltx_ascend.errors import UserError
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.runtime import distributed
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.store import Manifest, Resolution, Variant, resolve, resolve_first

W8A8 = "w8a8"
FP8 = ("fp8-cast", "fp8-scaled-mm")  # ltx-pipelines' names: ltx-core's FP8 policies (CUDA; scaled-mm needs TRT-LLM)
QUANTIZATIONS = ("", W8A8, *FP8)


def check_quantization(quantization: str, backend: str, device: torch.device) -> None:
    """One line for a quantization this backend/device cannot run."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization {quantization}: choose w8a8 (any backend) or fp8-cast|fp8-scaled-mm (CUDA)")
    if quantization in FP8 and device.type not in registry.backend(backend).fp8_devices:
        raise UserError(
            f"--quantization {quantization} is ltx-core's FP8 path for CUDA eager only (here: --backend {backend} on "
            f"{device.type}); use --quantization w8a8, which runs on every backend"
        )


@dataclass
class BackendChoice:
    """`--backend ort` or per component `--backend dit=ort,video_decoder=eager`."""

    default: str = "eager"
    per_component: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        choice = cls()
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, backend = part.rpartition("=")
            record = registry.find(backend)
            if record is None:
                raise UserError(f"--backend {text}: backend {backend!r} is not one of {', '.join(registry.BACKENDS)}")
            backend = record.name  # an alias names its record
            if name and name not in COMPONENTS:
                raise UserError(f"--backend {text}: no component {name!r}; components: {', '.join(COMPONENTS)}")
            if name:
                choice.per_component[name] = backend
            else:
                choice.default = backend
        return choice

    def of(self, component: str) -> str:
        return self.per_component.get(component, self.default)


@dataclass
class ArtifactFinder:
    """Where each component's compiled graphs are, for one run's backend and variant settings."""

    backends: BackendChoice
    artifacts: Path
    device: torch.device
    dtype: torch.dtype
    fallback: str = "eager"
    build_missing: bool = False
    ep: str = "cpu"
    soc: str | None = None
    quantization: str = ""
    quantization_skip: tuple[str, ...] = ()
    variant: Variant | None = None
    parallel: Parallel | None = None
    log: Callable[[str], None] = print
    keep: bool = True  # keep what was found (a resident engine); False looks again each time (a lone stack)
    found: dict[tuple, Resolution] = field(default_factory=dict)  # resolutions that succeeded, kept

    def candidates(self, component: str, backend: str, layout: str) -> list[Variant]:
        """The variants that can serve `backend`, preferred first. `--variant` names exactly one. Otherwise
        the backend record's preference (ORT: its fused variant, then the portable one; om: Ascend's fused
        variant `npu-ops`, then the portable one); W8A8 asks for a quantized variant only (on om: Ascend's
        quant ops)."""
        quant = {"quantization": self.quantization, "quantization_skip": self.quantization_skip}
        if self.quantization != W8A8:
            quant = {}
        # The split layout (sequence parallel) is cut from each variant's block graph, fused and W8A8 ones too.
        split = {"ulysses": self.parallel.ulysses} if layout == "split" and self.parallel is not None else {}
        if self.variant is not None:
            chosen = dataclasses.replace(self.variant, dit_layout=layout, **split, **quant)
            return [chosen.for_component(component)]
        preference = registry.backend(backend).variants(w8a8=bool(quant))
        preferred = [Variant(dit_layout=layout, **split, **quant, **fields) for fields in preference]
        unique = []  # the DiT-only fields drop out for the other components: npu-ops and portable remain
        for variant in (v.for_component(component) for v in preferred):
            if variant not in unique:
                unique.append(variant)
        return unique

    def find(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype, variants: list[Variant]
    ) -> Resolution:
        """The first variant found, else the preferred one's failed resolution (its reason is reported)."""
        requests = [request_for(component, ckset, profile, dtype, v) for v in variants]
        return resolve_first(requests, self.artifacts, self.backends.of(component), ep=self.ep, soc=self.soc)

    def resolution(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto", *, blocks: bool = False
    ) -> Resolution | None:
        """`resolve_or_build`, one rank of a multi-device run at a time (one builds, the rest find it).
        A resolution that succeeded is kept: the next request at the same shape does not look again."""
        key = (component, ckset if component == "dit" else ckset.with_loras(()), profile, layout, blocks)
        if key in self.found:
            return self.found[key]
        world = self.parallel.world if self.parallel is not None else None
        with distributed.host_lock(self.artifacts / ".build.lock", world):
            resolution = self.resolve_or_build(component, ckset, profile, layout, blocks=blocks)
        if self.keep and resolution is not None and resolution.ok:
            self.found[key] = resolution
        return resolution

    def resolve_or_build(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto", *, blocks: bool = False
    ) -> Resolution | None:
        """Where the component's compiled graphs are (built first with `build_missing`), or None for eager.
        A failed resolution comes back as is (its reason says why); nothing is printed here.
        `blocks`: the DiT of a stage under a step cache must be a block chain: a whole-graph artifact
        will not do, so the block-chain export (`ltx-export --dit-layout blocks`) is looked up, or built."""
        backend = self.backends.of(component)
        if component == "dit":
            check_quantization(self.quantization, backend, self.device)
        record = registry.backend(backend)
        if not record.compiled:
            return None
        graph_dtype = REGISTRY[component].graph_dtype_for(self.dtype)
        record.check_dtype(component, dtypes.name(graph_dtype), self.ep)
        variants = self.candidates(component, backend, layout)
        resolution = self.find(component, ckset, profile, graph_dtype, variants)
        if component == "dit" and blocks:
            if not resolution.ok or "dit" in resolution.graphs:
                variants = _block_chains(variants)
                resolution = self.find(component, ckset, profile, graph_dtype, variants)
            if not resolution.ok:
                why = f"the step cache needs the block-chain DiT (ltx-export --dit-layout blocks): {resolution.reason}"
                resolution = dataclasses.replace(resolution, reason=why)
        if not resolution.ok and self.build_missing and record.builds_missing:
            variant = self.build_variant(component, backend, layout, blocks=blocks)
            request = request_for(component, ckset, profile, graph_dtype, variant)
            start = time.perf_counter()
            self.log(f"building {component} ({variant.label}) for {backend} at {profile.key} ...")
            options = ExportOptions(**dataclasses.asdict(variant))
            result = export_component(component, ckset, profile, options=options, out=self.artifacts, dtype=graph_dtype)
            if record.compile is not None:
                record.compile_step()(result.folder, CompileOptions(ep=self.ep, soc=self.soc))
            self.log(f"built {component} in {time.perf_counter() - start:.1f} s")
            resolution = resolve(request, self.artifacts, backend, ep=self.ep, soc=self.soc)
        return resolution

    def build_variant(self, component: str, backend: str, layout: str, *, blocks: bool = False) -> Variant:
        """The variant built for a missing artifact (`build_missing`, ltx-prepare): what plain runs always
        built, the portable graph, unless a quantized one or a `--variant` was asked for; the block chain
        for the DiT of a stage under a step cache. The lookup then finds it among its candidates."""
        variants = self.candidates(component, backend, layout)
        if component == "dit" and blocks:
            variants = _block_chains(variants)
        return variants[0] if self.quantization == W8A8 or self.variant is not None else variants[-1]

    def check_available(self, component: str, ckset: CheckpointSet, profile: ShapeProfile) -> None:
        """Under `--fallback none`, refuse now (before any model loads) a compiled component that is not
        there and will not be built; a backend/dtype mismatch is refused whatever the fallback."""
        record = registry.backend(self.backends.of(component))
        if not record.compiled:
            return
        if self.build_missing and record.builds_missing:
            if record.limit(dtypes.name(REGISTRY[component].graph_dtype_for(self.dtype)), self.ep) is not None:
                self.resolution(component, ckset, profile)  # raises the one-line dtype error
            return
        resolution = self.resolution(component, ckset, profile)
        if resolution is not None and not resolution.ok and self.fallback == "none":
            raise UserError(f"{component}: {resolution.reason}")

    def producer(self, component: str, ckset: CheckpointSet, profile: ShapeProfile) -> str:
        """What will compute `component` at `profile`: "eager", or the backend and the sha256 of the
        compiled files (so results cached from one backend or build are never served for another)."""
        resolution = self.resolution(component, ckset, profile)
        if resolution is None or not resolution.ok:
            return "eager"
        manifest = Manifest.read(resolution.compiled)
        digest = hashlib.sha256(json.dumps(sorted(manifest.files.items())).encode()).hexdigest()[:16]
        return f"{resolution.backend}:{manifest.key}:{digest}"


def _block_chains(variants: list[Variant]) -> list[Variant]:
    """The block-chain forms a step cache needs: a split chain (sequence parallel) is one already."""
    return [v if v.dit_layout == "split" else dataclasses.replace(v, dit_layout="blocks") for v in variants]
