"""Exported ONNX artifacts -> CANN ATC `.om` engines or ONNX Runtime-optimised graphs (what `ltx-compile` runs).

Every graph is linted against ATC's op registry first (`--lint` does only that). The om target
builds ATC command lines from the manifest (static `--input_shape`, explicit
`--precision_mode_v2`, `--host_env_os/--host_env_cpu` when the .om runs on another kind of host)
and runs them when ATC is installed; `--dry-run` prints the plan. The om manifest records the file
ATC actually wrote for each graph (it may be `NAME_<os>_<arch>.om`).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx_ascend.atomic import file_lock
from ltx_ascend.backends import BACKENDS, CompileOptions
from ltx_ascend.compile.atc import (
    AtcJob,
    build_atc_argv,
    check_host_env,
    check_precision_for_soc,
    default_precision,
    find_atc,
    missing_atc_message,
    run_atc,
    this_host,
)
from ltx_ascend.compile.ort import PROVIDERS, optimize_for_ort, uses_external_data
from ltx_ascend.errors import UserError
from ltx_ascend.graph_lint import Violation, lint_onnx
from ltx_ascend.store import (
    MANIFEST,
    PORTABLE,
    Manifest,
    Variant,
    contained,
    file_hashes,
    file_sizes,
    request_key,
    verify_files,
)

log = logging.getLogger(__name__)

# Graphs above this size keep their .om weights in a weight/ folder beside the model.
EXTERNAL_WEIGHT_BYTES = 1 << 30


@dataclass(frozen=True)
class Graph:
    """One exported graph inside an artifact folder."""

    folder: Path
    name: str
    file: str
    inputs: list[dict[str, Any]]

    @property
    def path(self) -> Path:
        return contained(self.folder, self.file)


def graphs_of(folder: Path) -> tuple[Manifest, list[Graph]]:
    manifest = Manifest.read(folder)
    if manifest.kind != "onnx":
        raise UserError(f"{folder} holds a compiled '{manifest.kind}' artifact: pass the exported folder above it")
    graphs = [Graph(folder, name, g["file"], g["inputs"]) for name, g in manifest.io["graphs"].items()]
    return manifest, graphs


def check_external_data(graph: Graph) -> None:
    """Every external-data file an ONNX graph names stays inside its artifact folder, as its manifest's
    names do (ONNX Runtime >= 1.20 refuses such paths itself; ATC is given the graph as is)."""
    import onnx

    model = onnx.load(str(graph.path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                contained(graph.path.parent, entry.value, source=graph.path.name)


def graph_variant(folder: Path) -> str:
    return Manifest.read(folder).variant


def lint_graphs(graphs: list[Graph], target: str = "om") -> list[tuple[Graph, list[Violation]]]:
    """ATC lint for every graph; an ORT-only variant gets the ORT lint for `--target ort`, and for
    `--target om` one violation saying ATC cannot take it."""
    out = []
    for g in graphs:
        variant = graph_variant(g.folder)
        if not Variant.parse(variant or PORTABLE).ort_only:
            out.append((g, lint_onnx(g.path)))
        elif target == "ort":
            out.append((g, lint_onnx(g.path, target="ort")))
        else:
            detail = (
                f"the {variant!r} variant is ONNX Runtime-only (com.microsoft fused ops / MatMulInteger); "
                "for ATC re-export without --ort-fused (add --npu-ops for Ascend's fused and W8A8 ops)"
            )
            out.append((g, [Violation("variant", "<model>", detail)]))
    return out


def verify_export(folder: Path, export: Manifest) -> None:
    """Every file of the export against its manifest's sha256, re-hashed (the size+mtime cache is not
    trusted here): compiling seals the graphs' hashes, so a tampered export must not be laundered."""
    verify_files(folder, export, f"re-export it with `ltx-export --force` (artifact {folder})", rehash=True)


def target_request(export: Manifest, target: dict[str, Any]) -> dict[str, Any]:
    return {"export": export.request, "target": target}


def _cached(out: Path, request: dict[str, Any]) -> bool:
    if not (out / MANIFEST).is_file():
        return False
    manifest = Manifest.read(out)
    return manifest.key == request_key(request) and manifest.files_present(out)


def compile_ort(folder: Path, provider: str, *, force: bool) -> tuple[Path, bool]:
    export, graphs = graphs_of(folder)
    out = folder / BACKENDS["ort"].folder_name(ep=provider)
    request = target_request(export, {"kind": "ort", "execution_provider": PROVIDERS[provider][0]})
    if not force and _cached(out, request):
        return out, True
    # One build at a time per target folder: a concurrent run waits, then finds this one's result.
    with file_lock(folder / f".{out.name}.lock"):
        if not force and _cached(out, request):
            return out, True
        verify_export(folder, export)
        out.mkdir(exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        for g in graphs:
            optimize_for_ort(g.path, contained(out, g.file), provider)
        names = [p.name for p in out.iterdir() if p.name != MANIFEST and not p.name.startswith(".")]
        Manifest(
            kind="ort",
            component=export.component,
            variant=export.variant,
            request=request,
            io=export.io,
            files=file_hashes(out, names),
            sizes=file_sizes(out, names),
            extra={"execution_provider": PROVIDERS[provider][0]},
        ).write(out)
    return out, False


def host_env_flags(target: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """`--host_env_os/--host_env_cpu` values for a target host: none when the .om runs on a host like
    this one (ATC's default is the build host, ATC reference `--host_env_cpu`), else the target's."""
    if target is None or target == this_host():
        return None, None
    check_host_env(*target)
    return target


def atc_jobs(
    folder: Path, soc: str, precision: str | None, target_host: tuple[str, str] | None = None
) -> tuple[Manifest, Path, list[AtcJob]]:
    export, graphs = graphs_of(folder)
    precision = precision or default_precision(export.request["dtype"])
    check_precision_for_soc(soc, precision, export.request["dtype"])
    host_os, host_cpu = host_env_flags(target_host)
    out = folder / BACKENDS["om"].folder_name(soc=soc, precision=precision)
    jobs = []
    for g in graphs:
        check_external_data(g)
        size = sum(p.stat().st_size for p in folder.glob(g.file + "*"))
        jobs.append(
            AtcJob(
                model=g.path,
                output=out / g.name,
                soc=soc,
                input_shapes={i["name"]: tuple(i["shape"]) for i in g.inputs},
                precision=precision,
                external_weight=size > EXTERNAL_WEIGHT_BYTES or uses_external_data(g.path),
                host_os=host_os,
                host_cpu=host_cpu,
            )
        )
    return export, out, jobs


def _cann_version(atc: Path) -> str | None:
    """CANN writes its version beside the toolkit (…/ascend-toolkit/latest/version.cfg or version.info)."""
    for parent in atc.resolve().parents[:4]:
        for name in ("version.cfg", "version.info"):
            path = parent / name
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    if "version" in line.lower() and "=" in line:
                        return line.split("=", 1)[1].strip().strip('"[]')
    return None


def compile_om(
    folder: Path,
    soc: str,
    precision: str | None,
    *,
    force: bool,
    dry_run: bool,
    target_host: tuple[str, str] | None = None,
) -> tuple[Path, bool]:
    """ATC-compile every graph of an exported artifact into `om-<soc>-<precision>/`; (folder, cached).

    `target_host` is the (OS, CPU) of the host that will run the .om (default: this one)."""
    target_host = target_host or this_host()
    export, out, jobs = atc_jobs(folder, soc, precision, target_host)
    atc = find_atc()
    for job in jobs:
        log.info("  %s", shlex.join(build_atc_argv(job, atc or "atc")))
    if dry_run:
        return out, False
    if atc is None:
        raise UserError(missing_atc_message())
    target = {
        "kind": "om",
        "soc_version": soc,
        "precision_mode_v2": jobs[0].precision,
        "host_os": target_host[0],
        "host_cpu": target_host[1],
        "cann": _cann_version(atc),
    }
    request = target_request(export, target)
    if not force and _cached(out, request):
        return out, True
    verify_export(folder, export)
    out.mkdir(exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    written = {}
    for job in jobs:
        written[job.output.name] = run_atc(job, atc, log_file=out / f"{job.output.name}.atc.log").name
    # Each graph's "file" is the .om ATC wrote (NAME.om or NAME_<os>_<arch>.om); "onnx" is its source.
    graphs = {n: {**g, "file": written[n], "onnx": g["file"]} for n, g in export.io["graphs"].items()}
    io = {**export.io, "graphs": graphs}
    Manifest(
        kind="om",
        component=export.component,
        variant=export.variant,
        request=request,
        io=io,
        files=file_hashes(out, sorted(written.values())),
        sizes=file_sizes(out, sorted(written.values())),
        extra=target,
    ).write(out)
    return out, False


def ort_step(folder: Path, options: CompileOptions) -> tuple[Path, bool]:
    """The ort record's compile step (ltx_ascend.backends); ORT has no plan to dry-run: it compiles."""
    return compile_ort(folder, options.ep, force=options.force)


def om_step(folder: Path, options: CompileOptions) -> tuple[Path, bool]:
    """The om record's compile step (ltx_ascend.backends)."""
    if options.soc is None:
        raise UserError("--target om needs a SoC: pass --soc, e.g. --soc Ascend910B4")
    return compile_om(
        folder,
        options.soc,
        options.precision,
        force=options.force,
        dry_run=options.dry_run,
        target_host=options.target_host,
    )
