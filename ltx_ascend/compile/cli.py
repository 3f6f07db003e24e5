"""`ltx-compile`: exported ONNX artifacts -> CANN ATC `.om` engines or ONNX Runtime-optimised graphs.

Every graph is linted against ATC's op registry first (`--lint` does only that). The om target
builds ATC command lines from the manifest (static `--input_shape`, explicit
`--precision_mode_v2`) and runs them when ATC is installed; `--dry-run` prints the plan.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx_ascend.compile.atc import (
    PRECISIONS,
    AtcJob,
    build_atc_argv,
    default_precision,
    detect_soc,
    find_atc,
    missing_atc_message,
    run_atc,
)
from ltx_ascend.compile.lint import Violation, format_violations, lint_onnx
from ltx_ascend.compile.manifest import MANIFEST, Manifest, file_hashes, request_key
from ltx_ascend.compile.ort import PROVIDERS, optimize_for_ort, uses_external_data
from ltx_ascend.errors import EXIT_USAGE, UserError, cli_entry

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
        return self.folder / self.file


def graphs_of(folder: Path) -> tuple[Manifest, list[Graph]]:
    manifest = Manifest.read(folder)
    if manifest.kind != "onnx":
        raise UserError(f"{folder} holds a compiled '{manifest.kind}' artifact: pass the exported folder above it")
    graphs = [Graph(folder, name, g["file"], g["inputs"]) for name, g in manifest.io["graphs"].items()]
    return manifest, graphs


def lint_graphs(graphs: list[Graph]) -> list[tuple[Graph, list[Violation]]]:
    return [(g, lint_onnx(g.path)) for g in graphs]


def target_request(export: Manifest, target: dict[str, Any]) -> dict[str, Any]:
    return {"export": export.request, "target": target}


def _cached(out: Path, request: dict[str, Any]) -> bool:
    if not (out / MANIFEST).is_file():
        return False
    manifest = Manifest.read(out)
    return manifest.key == request_key(request) and manifest.files_present(out)


def compile_ort(folder: Path, provider: str, *, force: bool) -> tuple[Path, bool]:
    export, graphs = graphs_of(folder)
    out = folder / f"ort-{provider}"
    request = target_request(export, {"kind": "ort", "execution_provider": PROVIDERS[provider][0]})
    if not force and _cached(out, request):
        return out, True
    out.mkdir(exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for g in graphs:
        optimize_for_ort(g.path, out / g.file, provider)
    names = [p.name for p in out.iterdir() if p.name != MANIFEST]
    Manifest(
        kind="ort",
        component=export.component,
        variant="",
        request=request,
        io=export.io,
        files=file_hashes(out, names),
        extra={"execution_provider": PROVIDERS[provider][0]},
    ).write(out)
    return out, False


def atc_jobs(folder: Path, soc: str, precision: str | None) -> tuple[Manifest, Path, list[AtcJob]]:
    export, graphs = graphs_of(folder)
    precision = precision or default_precision(export.request["dtype"])
    out = folder / f"om-{soc}-{precision}"
    jobs = []
    for g in graphs:
        size = sum(p.stat().st_size for p in folder.glob(g.file + "*"))
        jobs.append(
            AtcJob(
                model=g.path,
                output=out / g.name,
                soc=soc,
                input_shapes={i["name"]: tuple(i["shape"]) for i in g.inputs},
                precision=precision,
                external_weight=size > EXTERNAL_WEIGHT_BYTES or uses_external_data(g.path),
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


def compile_om(folder: Path, soc: str, precision: str | None, *, force: bool, dry_run: bool) -> tuple[Path, bool]:
    export, out, jobs = atc_jobs(folder, soc, precision)
    atc = find_atc()
    for job in jobs:
        print("  " + shlex.join(build_atc_argv(job, atc or "atc")))
    if dry_run:
        return out, False
    if atc is None:
        raise UserError(missing_atc_message())
    target = {"kind": "om", "soc_version": soc, "precision_mode_v2": jobs[0].precision, "cann": _cann_version(atc)}
    request = target_request(export, target)
    if not force and _cached(out, request):
        return out, True
    out.mkdir(exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for job in jobs:
        run_atc(job, atc, log_file=out / f"{job.output.name}.atc.log")
    names = [p.name for p in out.iterdir() if p.suffix == ".om"]
    Manifest(
        kind="om",
        component=export.component,
        variant="",
        request=request,
        io=export.io,
        files=file_hashes(out, names),
        extra=target,
    ).write(out)
    return out, False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltx-compile", description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT_DIR", help="folders written by ltx-export")
    parser.add_argument("--target", choices=("om", "ort"), default="ort", help="om: CANN ATC; ort: ONNX Runtime")
    parser.add_argument("--lint", action="store_true", help="only run the ATC lint and print violations")
    parser.add_argument("--soc", help="ATC --soc_version, e.g. Ascend910B4 (default: from `npu-smi info`)")
    parser.add_argument(
        "--precision",
        choices=[p for p in PRECISIONS if p != "must_keep_origin_dtype"],
        help="ATC --precision_mode_v2 (default origin: keep the exported dtype)",
    )
    parser.add_argument("--ep", choices=tuple(PROVIDERS), default="cpu", help="ONNX Runtime execution provider")
    parser.add_argument("--dry-run", action="store_true", help="print the lint result and the ATC plan, run nothing")
    parser.add_argument("--force", action="store_true", help="recompile even when a matching engine exists")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    all_graphs = []
    for folder in args.artifacts:
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder; pass artifact folders written by ltx-export")
        all_graphs += graphs_of(folder)[1]
    linted = lint_graphs(all_graphs)
    bad = [(g, v) for g, v in linted if v]
    for g, violations in linted:
        print(f"lint {g.path}: {'clean' if not violations else f'{len(violations)} violations'}")
    if bad:
        for g, violations in bad:
            print(f"\n{g.path}\n{format_violations(violations)}")
        return EXIT_USAGE
    if args.lint:
        return 0
    if args.target == "om":
        soc = args.soc or detect_soc()
        if soc is None:
            if not args.dry_run:
                raise UserError("no --soc given and `npu-smi info` found no NPU: pass --soc, e.g. --soc Ascend910B4")
            soc = "Ascend910B4"
            print("no --soc and no npu-smi: planning for Ascend910B4")
    for folder in args.artifacts:
        if args.target == "ort":
            out, cached = compile_ort(folder, args.ep, force=args.force)
        else:
            print(f"ATC plan for {folder}:")
            out, cached = compile_om(folder, soc, args.precision, force=args.force, dry_run=args.dry_run)
        if not args.dry_run:
            print(f"{'cached' if cached else 'compiled'} -> {out}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0
