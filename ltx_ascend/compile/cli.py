"""`ltx-compile`: exported ONNX artifacts -> CANN ATC `.om` engines or ONNX Runtime-optimised graphs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ltx_ascend.backends import BACKENDS, CompileOptions
from ltx_ascend.compile.atc import HOST_CPUS, HOST_OSES, PRECISIONS, detect_soc_with_source, this_host
from ltx_ascend.compile.compiler import graphs_of, lint_graphs
from ltx_ascend.compile.ort import PROVIDERS
from ltx_ascend.errors import EXIT_USAGE, OneLineParser, UserError, cli_entry
from ltx_ascend.graph_lint import format_violations


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ltx-compile", description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT_DIR", help="folders written by ltx-export")
    targets = [b for b in BACKENDS.values() if b.compile is not None]
    parser.add_argument(
        "--target",
        choices=tuple(b.name for b in targets),
        default="ort",
        help="; ".join(b.compile_help for b in targets),
    )
    parser.add_argument("--lint", action="store_true", help="only run the ATC lint and print violations")
    parser.add_argument("--soc", help="ATC --soc_version, e.g. Ascend910B4 (default: from `npu-smi info`)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="ATC --precision_mode_v2 (default origin: keep the exported dtype; mixed_bfloat16 on Atlas A2/A3 only)",
    )
    host_cpu = this_host()[1]
    parser.add_argument(
        "--host-arch",
        choices=HOST_CPUS,
        default=host_cpu if host_cpu in HOST_CPUS else None,
        help=f"CPU of the host that runs the .om (default: this one, {host_cpu}); another value adds ATC's "
        "--host_env_os/--host_env_cpu, e.g. aarch64 to build on x86_64 for an Atlas 800I A2",
    )
    parser.add_argument(
        "--host-os", choices=HOST_OSES, default="linux", help="OS of the host that runs the .om (default linux)"
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
    target = BACKENDS[args.target]
    linted = lint_graphs(all_graphs, "om" if args.lint else target.lint or "om")
    bad = [(g, v) for g, v in linted if v]
    for g, violations in linted:
        print(f"lint {g.path}: {'clean' if not violations else f'{len(violations)} violations'}")
    if bad:
        for g, violations in bad:
            print(f"\n{g.path}\n{format_violations(violations)}")
        return EXIT_USAGE
    if args.lint:
        return 0
    soc, target_host = None, None
    if "soc" in target.compile_needs:  # ATC: the SoC and the host the .om runs on
        if args.host_arch is None:
            raise UserError(f"this machine's CPU {this_host()[1]!r} is not one ATC targets: pass --host-arch")
        target_host = (args.host_os, args.host_arch)
        soc = args.soc
        if soc is None:
            soc, source = detect_soc_with_source()
            if soc is not None:
                print(f"SoC {soc} (from {source})")
            elif not args.dry_run:
                raise UserError(f"no --soc given and the SoC is unknown ({source}): pass --soc, e.g. --soc Ascend910B4")
            else:
                soc = "Ascend910B4"
                print(f"no --soc and the SoC is unknown ({source}): planning for Ascend910B4")
    options = CompileOptions(
        ep=args.ep, soc=soc, precision=args.precision, force=args.force, dry_run=args.dry_run, target_host=target_host
    )
    step = target.compile_step()
    for folder in args.artifacts:
        if "soc" in target.compile_needs:
            print(f"ATC plan for {folder}:")
        out, cached = step(folder, options)
        if not args.dry_run:
            print(f"{'cached' if cached else 'compiled'} -> {out}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0
