"""One record per backend: what the store, the stack, the opener, `ltx-compile`, `ltx-bench` and
`ltx-prepare` need to know about it, in one place.

A backend is where a component's graphs run: `om` (CANN `.om` engines over pyACL), `ort` (graphs
`ltx-compile --target ort` pre-optimised for ONNX Runtime), `onnx` (the exported graphs themselves,
on ONNX Runtime) or `eager` (ltx-core's modules, no artifact). Adding one (ORT's CANN execution
provider, TensorRT) is its record here, its session module and a test.

Neutral: session factories and compile steps are "module:function" strings resolved on use, so
importing this imports no stage (tests/test_layout.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx_ascend.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DtypeLimit:
    """A graph dtype the backend refuses on one device (for ORT: its execution provider)."""

    device: str
    dtype: str  # manifest dtype name
    message: str  # one line, formatted with {component} and {backend}


@dataclass(frozen=True)
class Requirement:
    """A module the backend needs importable to run its graphs, and where it comes from."""

    module: str
    hint: str

    def available(self) -> bool:
        if self.module in sys.modules:
            return sys.modules[self.module] is not None
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


@dataclass(frozen=True)
class OpenOptions:
    """Where a session opens: the torch device its tensors live on, ORT's provider and threads, the
    accelerator index (an om session's NPU)."""

    device: Any = None  # torch.device; None: the CPU
    ep: str = "cpu"
    threads: int | None = None
    device_id: int = 0


@dataclass(frozen=True)
class CompileOptions:
    """What a compile step may read: ORT's provider; ATC's SoC, precision and target host."""

    ep: str = "cpu"
    soc: str | None = None
    precision: str | None = None
    force: bool = False
    dry_run: bool = False
    target_host: tuple[str, str] | None = None


# A session factory: (graph file, input specs, output specs, options) -> Session.
SessionFactory = Callable[[Path, list, list, OpenOptions], Any]
# A compile step: (exported artifact folder, options) -> (compiled folder, whether it was cached).
CompileStep = Callable[[Path, CompileOptions], tuple[Path, bool]]


def _resolve(target: str) -> Any:
    """The object a "package.module:attr[.attr]" string names."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Backend:
    """One backend. `kind` None (eager) means it runs modules, not artifact files."""

    name: str
    summary: str
    aliases: tuple[str, ...] = ()
    # The manifest kind of the folder it runs ("onnx": the export itself); None: no artifact (eager).
    kind: str | None = None
    # Its compiled subfolder of an exported artifact, formatted with ep, soc and precision ("*": any);
    # None: it runs the exported folder itself (onnx), or nothing (eager).
    folder: str | None = None
    session: str | None = None  # "module:function", a SessionFactory
    # The graph variants it takes, preferred first (ArtifactFinder.candidates); under W8A8 `w8a8_preference`.
    preference: tuple[Mapping[str, Any], ...] = ({},)
    w8a8_preference: tuple[Mapping[str, Any], ...] | None = None
    compile: str | None = None  # "module:function", a CompileStep; None: nothing to compile
    compile_hint: str = ""  # its `ltx-compile` flags in messages, formatted with ep
    compile_needs: tuple[str, ...] = ()  # CompileOptions a caller must supply ("soc": ATC's SoC)
    compile_help: str = ""  # `ltx-compile --target` help
    compiles_in_parallel: bool = False  # separate processes (ATC): ltx-prepare runs several at once
    lint: str | None = None  # ltx-compile's graph lint target for it
    builds_missing: bool = False  # --build-missing can export (and compile) a missing artifact here
    dtype_limits: tuple[DtypeLimit, ...] = ()
    fp8_devices: tuple[str, ...] = ()  # device kinds where ltx-core's FP8 policies run on it
    default_on: tuple[str, ...] = ()  # device kinds where it is the default --backend
    requires: tuple[Requirement, ...] = ()

    @property
    def compiled(self) -> bool:
        """It runs graph files out of the store (everything but eager)."""
        return self.kind is not None

    def folder_name(self, ep: str | None = None, soc: str | None = None, precision: str | None = None) -> str:
        """Its compiled subfolder's name (a glob pattern where a field is None)."""
        if self.folder is None:
            raise ValueError(f"compiled_pattern: backend must be ort or om, not {self.name!r}")
        return self.folder.format(ep=ep or "*", soc=soc or "*", precision=precision or "*")

    def hint(self, ep: str | None = None) -> str:
        return self.compile_hint.format(ep=ep or "cpu")

    def variants(self, w8a8: bool = False) -> tuple[Mapping[str, Any], ...]:
        """The variant fields it takes, preferred first."""
        if w8a8 and self.w8a8_preference is not None:
            return self.w8a8_preference
        return self.preference

    def limit(self, dtype: str, device: str) -> DtypeLimit | None:
        return next((lim for lim in self.dtype_limits if lim.device == device and lim.dtype == dtype), None)

    def check_dtype(self, component: str, dtype: str, device: str) -> None:
        """One line for graphs of `dtype` it cannot run on `device`."""
        limit = self.limit(dtype, device)
        if limit is not None:
            raise UserError(limit.message.format(component=component, backend=self.name))

    def session_factory(self) -> SessionFactory:
        if self.session is None:
            raise ValueError(f"backend {self.name} opens no graph files")
        return _resolve(self.session)

    def compile_step(self) -> CompileStep:
        if self.compile is None:
            raise ValueError(f"backend {self.name} has nothing to compile")
        return _resolve(self.compile)

    def missing(self) -> str | None:
        """What is not installed that it needs to run, as one line; None when everything is."""
        absent = [r for r in self.requires if not r.available()]
        if not absent:
            return None
        return f"--backend {self.name} needs {', '.join(f'`{r.module}` ({r.hint})' for r in absent)}"

    def available(self) -> bool:
        return self.missing() is None


_ORT_CPU_BF16 = DtypeLimit(
    "cpu",
    "bfloat16",
    "{component}: --backend {backend} on the CPU provider needs float32 graphs (ONNX Runtime's CPU provider "
    "lacks bfloat16 kernels): pass --dtype float32, or --backend eager for bfloat16",
)
_ORT_VARIANTS = ({"ort_fused": True}, {})  # its fused ops (com.microsoft), then the portable graph
_ONNXRUNTIME = Requirement("onnxruntime", "pip install onnxruntime, or onnxruntime-gpu for --ep cuda")
_OPEN_ORT = "ltx_ascend.runtime.ort_session:open_ort"

OM = Backend(
    name="om",
    summary="CANN ATC .om engines over pyACL (Ascend NPUs)",
    kind="om",
    folder="om-{soc}-{precision}",
    session="ltx_ascend.runtime.om_session:open_om",
    preference=({"npu_ops": True}, {}),  # Ascend's fused ops, then the portable graph
    w8a8_preference=({"npu_ops": True},),  # W8A8 only as Ascend's quant ops
    compile="ltx_ascend.compile.compiler:om_step",
    compile_hint="--target om",
    compile_needs=("soc",),
    compile_help="om: CANN ATC",
    compiles_in_parallel=True,
    lint="om",
    default_on=("npu",),
    requires=(Requirement("acl", "pyACL, with CANN: source its set_env.sh"),),
)
ORT = Backend(
    name="ort",
    summary="graphs pre-optimised for ONNX Runtime (ltx-compile --target ort)",
    kind="ort",
    folder="ort-{ep}",
    session=_OPEN_ORT,
    preference=_ORT_VARIANTS,
    compile="ltx_ascend.compile.compiler:ort_step",
    compile_hint="--target ort --ep {ep}",
    compile_needs=("ep",),
    compile_help="ort: ONNX Runtime",
    lint="ort",
    builds_missing=True,
    dtype_limits=(_ORT_CPU_BF16,),
    default_on=("cpu", "cuda"),
    requires=(_ONNXRUNTIME,),
)
ONNX = Backend(
    name="onnx",
    summary="the exported graphs themselves, on ONNX Runtime",
    kind="onnx",
    session=_OPEN_ORT,
    preference=_ORT_VARIANTS,
    builds_missing=True,
    dtype_limits=(_ORT_CPU_BF16,),
    requires=(_ONNXRUNTIME,),
)
EAGER = Backend(
    name="eager",
    summary="ltx-core's modules in torch (no artifact)",
    fp8_devices=("cuda",),
    requires=(Requirement("ltx_core", "pip install ltx-core"),),
)

# Every backend, by name, in the order messages list them (compiled ones first).
BACKENDS: dict[str, Backend] = {b.name: b for b in (OM, ORT, ONNX, EAGER)}


def names(*, compiled: bool | None = None) -> tuple[str, ...]:
    """Backend names (aliases aside), optionally only the compiled ones or only the others."""
    return tuple(n for n, b in BACKENDS.items() if compiled is None or b.compiled == compiled)


def find(name: str) -> Backend | None:
    """The record `name` (or one of its aliases) names, else None."""
    if name in BACKENDS:
        return BACKENDS[name]
    return next((b for b in BACKENDS.values() if name in b.aliases), None)


def _unknown(name: str) -> UserError:
    compiled, other = ", ".join(names(compiled=True)), ", ".join(names(compiled=False))
    return UserError(f"--backend {name}: choose one of {compiled} (or {other})")


def backend(name: str) -> Backend:
    """The record `name` names; one line listing them for a name that is none."""
    found = find(name)
    if found is None:
        raise _unknown(name)
    return found


def compiled_backend(name: str) -> Backend:
    """The record of a backend that runs artifact files (the store's lookups); the same line otherwise."""
    found = find(name)
    if found is None or not found.compiled:
        raise _unknown(name)
    return found


def default_for(device_kind: str) -> str:
    """The default --backend on a device kind: om on an NPU, ort elsewhere (a kind no record names
    gets the CPU's)."""
    for kind in (device_kind, "cpu"):
        for name, record in BACKENDS.items():
            if kind in record.default_on:
                return name
    return "eager"
