"""`ltx-export`: trace LTX-2.3 stage modules to NPU-safe ONNX at a static shape profile."""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.args import add_checkpoint_args, checkpoint_set_from_args
from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, validate_set
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.checkpoints.tiny import ensure_tiny_set
from ltx_ascend.components import EXPORTABLE, REGISTRY
from ltx_ascend.dtypes import GRAPH_DTYPES
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.export.exporter import ExportResult, export_component, passes_tolerance
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.shapes import TEXT_TOKENS, parse_shape
from ltx_ascend.validation import check_finite, flag_values

DEFAULT_OUT = Path("artifacts")
TINY_DISTILLED_LORA_STRENGTH = 0.8  # the strength Lightricks' two-stage examples use


def _read_config(path: Path | None) -> dict:
    """--config FILE: a checkpoint's `config` metadata as JSON (or the released 22B one by default)."""
    if path is None:
        return config_22b()
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {path}: not valid JSON ({exc.msg})") from None


def add_quantization_args(parser: argparse.ArgumentParser) -> None:
    """--quantization / --quantization-skip, shared by ltx-export and ltx-run."""
    parser.add_argument(
        "--quantization",
        default="",
        help="w8a8: int8 weights (per output channel) and activations (per token) in the DiT blocks' linears",
    )
    parser.add_argument(
        "--quantization-skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep block linears matching this fnmatch pattern in float (e.g. 'attn2.*'); repeatable",
    )


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ltx-export", description=__doc__)
    parser.add_argument("--component", required=True, help=f"one of {', '.join(EXPORTABLE)}, or all")
    parser.add_argument("--shape", required=True, help="output pixel shape FRAMESxHEIGHTxWIDTH, e.g. 41x1024x1536")
    parser.add_argument("--stage", type=int, choices=(1, 2), help="stage of a two-stage pipeline (1: half size)")
    parser.add_argument("--batch", type=int, default=1, help="rows per call (e.g. 4: all guidance passes at once)")
    parser.add_argument("--conditioning-tokens", type=int, default=0, help="keyframe / IC-LoRA tokens appended")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS, help="prompt length (ltx-core pads to 1024)")
    parser.add_argument("--dtype", choices=tuple(GRAPH_DTYPES), default="float32", help="graph dtype (default float32)")
    parser.add_argument("--npu-ops", action="store_true", help="emit npu::NPURmsNorm (ATC-only graph, not for ORT)")
    parser.add_argument(
        "--ort-fused",
        action="store_true",
        help="DiT for ONNX Runtime only: com.microsoft MultiHeadAttention + SimplifiedLayerNormalization (not for ATC)",
    )
    add_quantization_args(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artifact store (default artifacts/)")
    parser.add_argument("--force", action="store_true", help="re-export even when a matching artifact exists")
    parser.add_argument("--verify", action="store_true", help="run each graph on ONNX Runtime and compare with eager")
    parser.add_argument(
        "--dit-layout",
        choices=("auto", "whole", "blocks", "split"),
        default="auto",
        help="DiT as one graph, or input + shared block (weights as inputs) + output graphs (auto: blocks above "
        "1 GiB); split: blocks, the block graph cut at its attention cores for Ulysses sequence parallel (--ulysses)",
    )
    parser.add_argument(
        "--ulysses",
        type=int,
        default=1,
        metavar="U",
        help="--dit-layout split: graphs for one of U sequence-parallel ranks (ceil(tokens / U) each; default 1)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="export the DiT with seeded random weights at --config's sizes (no checkpoint; no block weight files)",
    )
    parser.add_argument("--config", type=Path, help="model config JSON for --random-weights (default: LTX-2.3 22B)")
    parser.add_argument(
        "--smooth-alpha",
        type=float,
        help="w8a8: SmoothQuant per-channel smoothing of activations into weights (0..1, typically 0.5)",
    )
    add_checkpoint_args(parser, required=False)
    return parser


def resolve_checkpoint_set(args: argparse.Namespace, *, distilled: bool) -> CheckpointSet:
    """The user's files, or the tiny set under artifacts/ (built on first use) when none are given."""
    if args.checkpoint_path is None:
        tiny = ensure_tiny_set(args.out / "tiny")
        args.checkpoint_path = tiny.checkpoint
        args.gemma_root = args.gemma_root or tiny.gemma_root
        args.spatial_upsampler_path = args.spatial_upsampler_path or tiny.spatial_upsampler
        if distilled and not args.distilled_lora:
            args.distilled_lora = [LoraSpec(tiny.distilled_lora, TINY_DISTILLED_LORA_STRENGTH)]
    ckset = checkpoint_set_from_args(args)
    if distilled and args.distilled_lora:
        ckset = ckset.with_loras([*ckset.loras, *args.distilled_lora])
    validate_set(ckset)
    return ckset


def format_results(results: list[ExportResult]) -> str:
    header = (
        f"{'graph':<22} {'status':<8} {'time s':>7} {'size MB':>8}  "
        f"{'cosine':>9} {'rel L2':>9} {'max abs':>9}  top ops"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        for g in result.graphs:
            top = ", ".join(f"{op} {n}" for op, n in list(g.ops.items())[:4] if op != "Constant")
            worst = min(g.comparisons.values(), key=lambda c: c.cosine, default=None)
            numbers = (
                f"{worst.cosine:>9.6f} {max(c.rel_l2 for c in g.comparisons.values()):>9.2e} "
                f"{max(c.max_abs for c in g.comparisons.values()):>9.2e}"
                if worst
                else f"{'-':>9} {'-':>9} {'-':>9}"
            )
            status = "cached" if result.cached else "exported"
            lines.append(
                f"{g.name:<22} {status:<8} {g.seconds:>7.1f} {g.bytes / 2**20:>8.2f}  {numbers}  {top}"
            )
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_writable_dir(args.out, "--out")  # before the tiny set or any graph is written
    check_finite(flag_values(vars(args)))
    for flag, value, minimum in (
        ("--text-tokens", args.text_tokens, 1),
        ("--batch", args.batch, 1),
        ("--ulysses", args.ulysses, 1),
        ("--conditioning-tokens", args.conditioning_tokens, 0),
    ):
        if value < minimum:  # checked before the tiny set is written or any model loads
            raise UserError(f"{flag} {value}: must be >= {minimum}")
    components = EXPORTABLE if args.component == "all" else (args.component,)
    for name in components:
        if name not in EXPORTABLE:
            raise UserError(f"--component {name}: choose one of {', '.join(EXPORTABLE)} or all")
    shape = parse_shape(args.shape)
    dtype = GRAPH_DTYPES[args.dtype]
    variant = {
        "npu_ops": args.npu_ops,
        "ort_fused": args.ort_fused,
        "quantization": args.quantization,
        "quantization_skip": tuple(args.quantization_skip),
        "smooth_alpha": args.smooth_alpha,
        "ulysses": args.ulysses,
    }
    options = ExportOptions(dit_layout=args.dit_layout, **variant)
    if args.random_weights:
        if args.checkpoint_path is not None:
            raise UserError("--random-weights and --checkpoint-path exclude each other: pick one")
        if args.component != "dit":
            raise UserError("--random-weights exports only the DiT: pass --component dit")
        options = ExportOptions(dit_layout=args.dit_layout, random_config=_read_config(args.config), **variant)
        ckset = None
    else:
        ckset = resolve_checkpoint_set(args, distilled=args.stage == 2)
    results = []
    start = time.perf_counter()
    for name in components:
        spec = REGISTRY[name]
        if spec.needs and ckset is not None and getattr(ckset, spec.needs) is None:
            if args.component == "all":
                continue
            raise UserError(f"--component {name} needs --{spec.needs.replace('_', '-')}-path")
        # The DiT carries the batch (guidance passes) and conditioning tokens; the others run once per call.
        component_profile = spec.profile_at(
            shape,
            args.stage,
            batch=args.batch,
            text_tokens=args.text_tokens,
            conditioning_tokens=args.conditioning_tokens,
        )
        print(f"exporting {name} at {component_profile.key} ({args.dtype}) ...", flush=True)
        result = export_component(
            name,
            ckset,
            component_profile,
            out=args.out,
            dtype=spec.graph_dtype_for(dtype),
            force=args.force,
            verify=args.verify,
            options=options,
        )
        print(f"  -> {result.folder}{' (cached)' if result.cached else ''}", flush=True)
        results.append(result)
    print(format_results(results))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"total {time.perf_counter() - start:.1f} s, peak host memory {peak_gb:.2f} GB")
    failed = [g.name for r in results for g in r.graphs if g.comparisons and not passes_tolerance(g, args.dtype)]
    if failed:
        print(f"verification failed for: {', '.join(failed)}")
        return 1
    return 0
