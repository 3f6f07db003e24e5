"""Find the artifact a request needs, say why not when it cannot, and open it or fall back to eager.

An exported artifact lives at `<out>/<component>/<profile.key>-<dtype>-<request key>/` (see
`ltx_ascend.export.exporter.artifact_dir`); `ltx-compile` adds `ort-<ep>/` or `om-<soc>-<precision>/`
inside it. `resolve` returns the graph files for a backend, or a one-line reason: missing, stale (which
request fields differ from the nearest sibling artifact), or not compiled for the backend.
`open_or_fallback` turns that into sessions, or, under `--fallback eager`, one warning line and eager.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from ltx_ascend.compile.manifest import MANIFEST, Manifest, check_matches, differences, verify_files
from ltx_ascend.errors import UserError
from ltx_ascend.export.components import DTYPES
from ltx_ascend.export.exporter import artifact_dir
from ltx_ascend.runtime.session import Session, specs_from_manifest
from ltx_ascend.shapes import ShapeProfile

CPU = torch.device("cpu")
BACKENDS = ("om", "ort", "onnx")  # onnx: the exported graphs themselves, on ONNX Runtime
FALLBACKS = ("eager", "none")


def add_fallback_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        default="eager",
        help="when no matching compiled artifact exists: eager (warn and run ltx-core) or none (fail)",
    )


def _valid_manifest(folder: Path) -> Manifest | None:
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = Manifest.read(folder)
    except UserError:
        return None
    return manifest if manifest.files_present(folder) else None


def find_compiled(
    folder: Path, backend: str, ep: str | None = "cpu", soc: str | None = None, precision: str | None = None
) -> Path | None:
    """The `ort-<ep>` / `om-<soc>-<precision>` subfolder of an exported artifact compiled from it.

    `ep=None` takes any ORT provider, `soc`/`precision` None any SoC/precision (first by name).
    A subfolder counts only with a readable manifest of the backend's kind, all its files present,
    and a request made from this export (so a leftover from an earlier export does not match).
    """
    folder = Path(folder)
    if backend == "ort":
        pattern = f"ort-{ep}" if ep else "ort-*"
    elif backend == "om":
        pattern = f"om-{soc or '*'}-{precision or '*'}"
    else:
        raise ValueError(f"find_compiled: backend must be ort or om, not {backend!r}")
    export = _valid_manifest(folder)
    for candidate in sorted(p for p in folder.glob(pattern) if p.is_dir()):
        manifest = _valid_manifest(candidate)
        if manifest is None or manifest.kind != backend:
            continue
        if export is not None and manifest.request.get("export") != export.request:
            continue
        return candidate
    return None


def _tensor_specs(io: dict[str, Any]) -> dict[str, Any]:
    """Each graph's inputs and outputs (a compiled manifest records its own file names beside them)."""
    return {name: (g.get("inputs"), g.get("outputs")) for name, g in io.get("graphs", {}).items()}


def _unreadable_compiled(
    folder: Path, backend: str, *, ep: str | None, soc: str | None, precision: str | None
) -> str | None:
    """Why a compiled subfolder that is there does not count (bad manifest, missing files), if one is."""
    pattern = (f"ort-{ep}" if ep else "ort-*") if backend == "ort" else f"om-{soc or '*'}-{precision or '*'}"
    for candidate in sorted(p for p in folder.glob(pattern) if p.is_dir() and (p / MANIFEST).is_file()):
        try:
            manifest = Manifest.read(candidate)
        except UserError as exc:
            return str(exc)
        if not manifest.files_present(candidate):
            missing = [n for n in manifest.files if not (candidate / n).is_file()]
            return f"{candidate} is missing {', '.join(missing)}: rebuild it with --force"
    return None


@dataclass(frozen=True)
class Resolution:
    """Where a request's graphs are for one backend, or why they are not usable."""

    component: str
    backend: str
    folder: Path  # the exported artifact folder (where it is or would be)
    compiled: Path | None = None  # the folder holding the backend's graph files
    graphs: dict[str, Path] = field(default_factory=dict)  # graph name -> file
    io: dict[str, Any] = field(default_factory=dict)  # graph name -> manifest io entry
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _profile(request: dict[str, Any]) -> ShapeProfile:
    names = {f.name for f in dataclasses.fields(ShapeProfile)}
    return ShapeProfile(**{k: v for k, v in request["profile"].items() if k in names})


def _stale_reason(folder: Path, request: dict[str, Any]) -> str | None:
    """Name the fields that differ from the closest sibling with the same profile and dtype, if any."""
    prefix = folder.name[: folder.name.rindex("-") + 1]
    best: tuple[list[str], Path] | None = None
    for sibling in sorted(folder.parent.glob(prefix + "*")):
        if sibling == folder or not sibling.is_dir() or sibling.name.endswith(".partial"):
            continue
        manifest = _valid_manifest(sibling)
        if manifest is None:
            continue
        diff = differences(request, manifest.request)
        if best is None or len(diff) < len(best[0]):
            best = (diff, sibling)
    if best is None:
        return None
    diff, sibling = best
    shown = ", ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
    return f"stale: {sibling} was exported for another request ({shown} differ); re-export with ltx-export"


def resolve(
    request: dict[str, Any],
    out: Path,
    backend: str,
    *,
    ep: str | None = "cpu",
    soc: str | None = None,
    precision: str | None = None,
) -> Resolution:
    """Locate the artifact `request` (an `export_request` dict) names under `out`, for `backend`."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: choose one of {', '.join(BACKENDS)} (or eager)")
    component = request["component"]
    folder = artifact_dir(Path(out), component, _profile(request), DTYPES[request["dtype"]], request)

    def fail(reason: str) -> Resolution:
        return Resolution(component, backend, folder, reason=reason.splitlines()[0])

    if not (folder / MANIFEST).is_file():
        stale = _stale_reason(folder, request)
        return fail(stale or f"missing: no exported artifact at {folder}; run ltx-export")
    try:
        export = check_matches(folder, request)
    except UserError as exc:
        return fail(str(exc))
    if backend == "onnx":
        compiled, manifest = folder, export
    else:
        compiled = find_compiled(folder, backend, ep=ep, soc=soc, precision=precision)
        target = f"--target ort --ep {ep or 'cpu'}" if backend == "ort" else "--target om"
        if compiled is None:
            broken = _unreadable_compiled(folder, backend, ep=ep, soc=soc, precision=precision)
            if broken is not None:
                return fail(broken.replace("--force", f"`ltx-compile {target} --force {folder}`"))
            return fail(f"not compiled for {backend}: run ltx-compile {target} {folder}")
        manifest = Manifest.read(compiled)
        if _tensor_specs(manifest.io) != _tensor_specs(export.io):
            raise UserError(
                f"{compiled / MANIFEST}: its graph inputs/outputs differ from the export's (edited by hand?): "
                f"recompile with `ltx-compile {target} --force {folder}`"
            )
    # What the manifests record is what runs: sizes and sha256 of every file (cached by size and mtime).
    verify_files(folder, export, f"re-export it with `ltx-export --force` (artifact {folder})")
    if compiled != folder:
        verify_files(compiled, manifest, f"recompile it with `ltx-compile {target} --force {folder}`")
    graphs, io = {}, {}
    for name, entry in manifest.io["graphs"].items():
        graphs[name] = compiled / entry["file"]  # an om manifest names the .om ATC wrote
        io[name] = entry
        if not graphs[name].is_file():
            return fail(f"incomplete: {graphs[name]} is missing; recompile with --force")
    return Resolution(component, backend, folder, compiled, graphs, io)


def open_sessions(
    resolution: Resolution,
    *,
    device: torch.device = CPU,
    ep: str = "cpu",
    threads: int | None = None,
    device_id: int = 0,
) -> dict[str, Session]:
    """One session per graph of a successful resolution; all closed again if any fails to open."""
    if not resolution.ok:
        raise UserError(f"{resolution.component}: {resolution.reason}")
    sessions: dict[str, Session] = {}
    try:
        for name, path in resolution.graphs.items():
            inputs, outputs = specs_from_manifest(resolution.io[name])
            if resolution.backend == "om":
                from ltx_ascend.runtime.om_session import OmSession

                sessions[name] = OmSession(path, inputs, outputs, device_id=device_id)
            else:
                from ltx_ascend.runtime.ort_session import OrtSession

                sessions[name] = OrtSession(path, inputs, outputs, provider=ep, device=device, threads=threads)
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions


def open_or_fallback(
    request: dict[str, Any],
    out: Path,
    backend: str,
    *,
    fallback: str = "eager",
    eager: Callable[[], dict[str, Session]],
    device: torch.device = CPU,
    ep: str = "cpu",
    soc: str | None = None,
    threads: int | None = None,
    device_id: int = 0,
    stream: TextIO | None = None,
) -> dict[str, Session]:
    """Compiled sessions for `request`, or `eager()`'s after exactly one warning line (`fallback="eager"`),
    or a UserError with the reason (`fallback="none"`). Opening failures a user can fix (no pyACL,
    a bfloat16 graph on ORT's CPU provider) count as reasons too."""
    if fallback not in FALLBACKS:
        raise UserError(f"--fallback {fallback}: choose one of {', '.join(FALLBACKS)}")
    component = request["component"]
    resolution = resolve(request, out, backend, ep=ep, soc=soc)
    reason = resolution.reason
    if reason is None:
        try:
            return open_sessions(resolution, device=device, ep=ep, threads=threads, device_id=device_id)
        except UserError as exc:
            reason = str(exc).splitlines()[0]
    if fallback == "none":
        raise UserError(f"{component}: {reason}")
    print(f"warning: {component}: {reason}; falling back to eager", file=stream or sys.stderr)
    return eager()
