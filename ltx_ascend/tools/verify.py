"""`ltx-verify`: is the compiled graph right? Compiled vs eager ltx-core on identical inputs.

For each artifact folder: cosine, max/mean abs error, relative L2, PSNR for images and audio,
NaN/Inf counts, pass/fail against the per-dtype tolerances (`ltx_ascend.metrics`); float16
artifacts also get an overflow scan of the eager intermediates; `--per-block` walks a block-
layout DiT block by block to find the first block that leaves tolerance; `--lora` reports what a
LoRA file holds and how its merge on the target device compares with the merge on CPU.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraStateDictWithStrength, StateDict, apply_loras
from safetensors.torch import load_file

from ltx_ascend.atomic import atomic_write_text
from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, read_model_config, read_safetensors_metadata
from ltx_ascend.dtypes import GRAPH_DTYPES
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.export import dit_blocks, dit_split
from ltx_ascend.export.items import ExportItem, ExportOptions, build_items
from ltx_ascend.metrics import TOLERANCES, Comparison, compare
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.runtime.session import Session
from ltx_ascend.store import (
    Manifest,
    built_profile,
    fingerprint_file,
    rehash_tree,
    resolve_folder,
    weight_files,
)

FLOAT16_MAX = 65504.0


@dataclass
class GraphResult:
    artifact: str
    graph: str
    backend: str
    dtype: str
    outputs: dict[str, Comparison]
    passed: bool
    overflow: list[tuple[str, float]] = field(default_factory=list)  # module, max |value| beyond fp16
    per_block: list[dict[str, Any]] = field(default_factory=list)
    first_bad_block: int | None = None


def checkpoint_set_from_manifest(manifest: Manifest, override: CheckpointSet | None) -> CheckpointSet | None:
    """The files the artifact was exported from, unless given: where the export read them (a hint the
    manifest keeps beside its identity), used only if their content still matches the fingerprints."""
    if override is not None:
        return override
    source = manifest.request["source"]
    if "random_weights" in source:
        return None
    hint = manifest.extra.get("source_paths", {})

    def located(name: str, path: str | None, fingerprint: dict) -> Path:
        fix = "pass --checkpoint-path (the sources are identified by content, not path)"
        if path is None or not Path(path).is_file():
            raise UserError(f"{manifest.component}: its {name} is not where it was exported from ({path}): {fix}")
        if fingerprint_file(path) != {k: fingerprint.get(k) for k in ("size", "sha256_sampled")}:
            raise UserError(f"{manifest.component}: {path} is not the {name} it was exported from: {fix}")
        return Path(path)

    if "spatial_upsampler" in source:
        path = located("spatial upsampler", hint.get("spatial_upsampler"), source["spatial_upsampler"])
        return CheckpointSet(checkpoint=path, spatial_upsampler=path)
    gemma = hint.get("gemma_root") if "gemma_config" in source else None
    lora_paths = hint.get("loras", [])
    loras = tuple(
        LoraSpec(located("LoRA", lora_paths[i] if i < len(lora_paths) else None, x), x["strength"])
        for i, x in enumerate(source.get("loras", []))
    )
    checkpoint = located("checkpoint", hint.get("checkpoint"), source["checkpoint"])
    return CheckpointSet(checkpoint, Path(gemma) if gemma else None, None, loras)


def _sessions(folder: Path, backend: str, ep: str) -> tuple[str, dict[str, Session]]:
    """The artifact's sessions for `backend`; an ORT request without an `ort-<ep>` build runs the exported
    graphs themselves (`onnx`). Nothing falls back to eager here: the eager model is the reference."""
    resolution = resolve_folder(folder, backend, ep=ep)
    if not resolution.ok and backend == "ort":
        resolution = resolve_folder(folder, "onnx", ep=ep)
    sessions = open_component(resolution, fallback="none", ep=ep)
    assert sessions is not None  # fallback="none" raises instead
    return resolution.backend, sessions


def overflow_scan(item: ExportItem, feeds: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
    """Modules whose eager float32 outputs exceed float16's range: where an fp16 graph overflows."""
    hits: dict[str, float] = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    peak = float(t.detach().abs().max())
                    if peak > FLOAT16_MAX:
                        hits[name] = max(hits.get(name, 0.0), peak)

        return record

    module = item.module.float()
    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    try:
        with torch.no_grad():
            module(*(feeds[n].float() for n in item.input_names))
    finally:
        for h in handles:
            h.remove()
    return sorted(hits.items(), key=lambda kv: -kv[1])


def per_block_scan(
    items: dict[str, ExportItem],
    sessions: dict[str, Session],
    block_files: list[Path],
    ckset: CheckpointSet,
    dtype: torch.dtype,
) -> tuple[list[dict[str, Any]], int | None]:
    """Compiled chain vs eager chain after every block; the first block whose output leaves tolerance.

    With one graph per block every prefix is observable in a single pass, so this walks the chain
    once (cheaper than bisecting over prefixes, which re-runs them) and reports every block."""
    inp, block, _ = items["dit-input"], items["dit-block"], items["dit-output"]
    feeds = {**inp.sample, **block.sample}
    eager_acts = dict(zip(inp.output_names, inp.reference(inp.sample), strict=True))
    compiled_acts = sessions["dit-input"].run({n: inp.sample[n] for n in inp.input_names})
    rows, first_bad = [], None
    tolerance = TOLERANCES[str(dtype).removeprefix("torch.")]
    # Eager reads the checkpoint (ltx-core's LoRA fusion); the compiled chain reads the artifact's files.
    reference_weights = dit_blocks.stream_block_weights(ckset, len(block_files), dtype)
    for (i, source), path in zip(reference_weights, block_files, strict=True):
        weights = {dit_blocks.WEIGHT_PREFIX + k: v for k, v in load_file(str(path)).items()}
        eager_in = {**feeds, **eager_acts, **{dit_blocks.WEIGHT_PREFIX + k: v for k, v in source.items()}}
        compiled_in = {**feeds, **compiled_acts, **weights}
        eager_out = block.reference({n: eager_in[n] for n in block.input_names})
        out = sessions["dit-block"].run({n: compiled_in[n] for n in block.input_names})
        eager_acts["video_x"], eager_acts["audio_x"] = eager_out
        compiled_acts = {**compiled_acts, "video_x": out["video_x_out"], "audio_x": out["audio_x_out"]}
        video = compare(eager_acts["video_x"], compiled_acts["video_x"])
        audio = compare(eager_acts["audio_x"], compiled_acts["audio_x"])
        ok = video.passes(tolerance) and audio.passes(tolerance)
        rows.append({"block": i, "video": video.to_dict(), "audio": audio.to_dict(), "passed": ok})
        if not ok and first_bad is None:
            first_bad = i
    return rows, first_bad


def verify_artifact(
    folder: Path,
    *,
    backend: str = "ort",
    ep: str = "cpu",
    ckset: CheckpointSet | None = None,
    inputs: Path | None = None,
    per_block: bool = False,
) -> list[GraphResult]:
    manifest = Manifest.read(folder)
    if manifest.kind != "onnx":
        raise UserError(f"{folder}: pass the exported artifact folder (the one ltx-export wrote), not {manifest.kind}")
    request = manifest.request
    dtype = GRAPH_DTYPES[request["dtype"]]
    source_set = checkpoint_set_from_manifest(manifest, ckset)
    options = ExportOptions(dit_layout=request.get("dit_layout") or "auto", ulysses=request.get("ulysses", 1))
    if source_set is None:
        raise UserError(f"{folder}: exported with --random-weights; verify it with --checkpoint-path, or re-export")
    items = {i.name: i for i in build_items(manifest.component, source_set, built_profile(manifest), dtype, options)}
    used, sessions = _sessions(folder, backend, ep)
    segments = dit_split.segment_names(list(sessions))
    if segments:  # the split layout: its segments with ltx-core's cores between them, as one block graph
        block = items["dit-block"]
        sessions["dit-block"] = dit_split.SegmentChain([sessions.pop(n) for n in segments], block.split.block,
                                                       block.output_names)  # fmt: skip
    given = load_file(str(inputs)) if inputs else {}
    results = []
    for name, session in sessions.items():
        item = items[name]
        feeds = {n: given.get(n, item.sample[n]) for n in item.input_names}
        got = session.run(feeds)
        refs = item.reference(feeds)
        outputs = {n: compare(ref, got[n], peak=item.peak) for n, ref in zip(item.output_names, refs, strict=True)}
        tol = TOLERANCES[request["dtype"]]
        result = GraphResult(
            str(folder), name, used, request["dtype"], outputs, all(c.passes(tol) for c in outputs.values())
        )
        if request["dtype"] == "float16":
            result.overflow = overflow_scan(item, feeds)
        results.append(result)
    if per_block and manifest.component == "dit":
        if "dit-block" not in sessions:
            raise UserError(f"{folder}: --per-block needs a DiT exported as blocks (--dit-layout blocks)")
        files = weight_files(folder)
        if not files:
            raise UserError(f"{folder}: no block_XX.safetensors beside the block graph (a --random-weights export)")
        rows, first_bad = per_block_scan(items, sessions, files, source_set, dtype)
        block_result = next(r for r in results if r.graph == "dit-block")
        block_result.per_block, block_result.first_bad_block = rows, first_bad
    for session in sessions.values():
        session.close()
    return results


# ------------------------------------------------------------------------------------------------
# LoRA checks


def lora_report(lora: LoraSpec, checkpoint: Path, device: torch.device) -> dict[str, Any]:
    """Tensor count, rank and alpha, the base weights it touches, and merge on `device` vs CPU."""
    with safetensors.safe_open(str(lora.path), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    ranks = sorted({shapes[k][0] for k in keys if k.endswith(".lora_A.weight")})
    alphas = sorted({v for k, v in metadata.items() if "alpha" in k.lower()})
    alpha_tensors = [k for k in keys if k.endswith(".alpha")]
    targets = sorted(
        LTXV_LORA_COMFY_RENAMING_MAP.apply_to_key(k).removesuffix(".lora_A.weight") + ".weight"
        for k in keys
        if k.endswith(".lora_A.weight")
    )
    kinds: dict[str, int] = {}
    for t in targets:
        kind = ".".join(p for p in t.split(".")[2:] if not p.isdigit())
        kinds[kind] = kinds.get(kind, 0) + 1
    # Merge one touched weight with ltx-core's apply_loras on the device and on CPU; compare.
    sample = targets[0]
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        base = f.get_tensor("model.diffusion_model." + sample)
    lora_sd = load_file(str(lora.path))
    stem = sample.removesuffix(".weight")
    pair = {f"{stem}.lora_A.weight": lora_sd[f"diffusion_model.{stem}.lora_A.weight"],
            f"{stem}.lora_B.weight": lora_sd[f"diffusion_model.{stem}.lora_B.weight"]}  # fmt: skip

    def merge(on: torch.device) -> torch.Tensor:
        model = StateDict({sample: base.to(on)}, on, base.nbytes, {base.dtype})
        loras = [LoraStateDictWithStrength(StateDict(pair, torch.device("cpu"), 0, set()), lora.strength)]
        return apply_loras(model, loras, dtype=torch.float32).sd[sample].cpu()

    on_device, on_cpu = merge(device), merge(torch.device("cpu"))
    return {
        "lora": str(lora.path),
        "strength": lora.strength,
        "tensors": len(keys),
        "ranks": ranks,
        "alpha": alphas or (["per-tensor .alpha"] if alpha_tensors else ["none (ltx-core fuses B@A*strength)"]),
        "touches": len(targets),
        "touched_kinds": kinds,
        "merge_device": str(device),
        "merge_vs_cpu_max_abs": float((on_device - on_cpu).abs().max()),
        "sample_weight": sample,
    }


# ------------------------------------------------------------------------------------------------
# Reports


def markdown(results: list[GraphResult], loras: list[dict[str, Any]]) -> str:
    lines = [
        "| artifact | graph | backend | dtype | output | cosine | max abs | mean abs | rel L2 | PSNR dB | NaN/Inf "
        "| pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, c in r.outputs.items():
            psnr = "-" if c.psnr_db is None else f"{c.psnr_db:.1f}"
            lines.append(
                f"| {Path(r.artifact).name} | {r.graph} | {r.backend} | {r.dtype} | {name} | {c.cosine:.6f} | "
                f"{c.max_abs:.3e} | {c.mean_abs:.3e} | {c.rel_l2:.3e} | {psnr} | {c.nan}/{c.inf} | "
                f"{'yes' if r.passed else '**no**'} |"
            )
    for r in results:
        if r.overflow:
            lines.append(f"\nfloat16 overflow in eager intermediates of {r.graph} (|x| > 65504):")
            lines += [f"- `{m}`: max |x| = {v:.3g}" for m, v in r.overflow[:10]]
        if r.per_block:
            lines.append(f"\nper-block scan of {r.graph}: first block out of tolerance: {r.first_bad_block}")
            lines += [
                f"- block {b['block']}: video cos {b['video']['cosine']:.6f} rel L2 {b['video']['rel_l2']:.2e}, "
                f"audio cos {b['audio']['cosine']:.6f}{'' if b['passed'] else '  <- out of tolerance'}"
                for b in r.per_block
            ]
    for lora in loras:
        lines.append(
            f"\nLoRA {Path(lora['lora']).name} (strength {lora['strength']}): {lora['tensors']} tensors, rank "
            f"{lora['ranks']}, alpha {lora['alpha']}, touches {lora['touches']} weights "
            f"({', '.join(f'{k} x{v}' for k, v in lora['touched_kinds'].items())}); merge on {lora['merge_device']} "
            f"vs CPU: max abs {lora['merge_vs_cpu_max_abs']:.3e}"
        )
    return "\n".join(lines)


def _quantization_main(args: argparse.Namespace) -> int:
    from ltx_ascend.checkpoints.presets import config_22b
    from ltx_ascend.shapes import shape_profile
    from ltx_ascend.tools.quant_report import MIN_COSINE, format_rows, quantization_report

    if args.quantization != "w8a8":
        raise UserError(f"--quantization {args.quantization}: ltx-verify reports w8a8 only")
    if args.blocks < 1:
        raise UserError(f"--blocks {args.blocks}: must be >= 1")
    profile = shape_profile(args.shape, stage=args.stage, text_tokens=1024)
    torch.manual_seed(0)
    rows = quantization_report(
        config_22b(),
        profile,
        blocks=args.blocks,
        skip=tuple(args.quantization_skip),
        smooth_alpha=args.smooth_alpha,
        outlier_channels=args.outlier_channels,
    )
    title = (
        f"W8A8 vs float32, LTX-2.3 block at the real width, random weights, {profile.video_tokens} video tokens"
        f"{f', {args.outlier_channels} outlier channels x50' if args.outlier_channels else ''}"
        f"{f', SmoothQuant alpha {args.smooth_alpha}' if args.smooth_alpha is not None else ''}"
    )
    text = format_rows(rows, title)
    print(text)
    if args.report:
        atomic_write_text(args.report, text + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps({"w8a8_blocks": rows}, indent=2) + "\n")
    return 0 if all(r["cosine"] >= MIN_COSINE for r in rows) else 1


def parse_lora_arg(path: str, strength: str) -> LoraSpec:
    """`--lora PATH STRENGTH`: a finite number, checked (with the file) before any artifact is run."""
    from ltx_ascend.validation import finite_number

    value = finite_number(strength, f"--lora {path}", example="0.8")
    read_safetensors_metadata(path, "LoRA")
    return LoraSpec(Path(path), value)


def _rehash_main(folders: list[Path]) -> int:
    """`ltx-verify --rehash DIR...`: one line per artifact folder; exit 2 if any file differs."""
    if not folders:
        raise UserError("--rehash: pass the artifact folders or stores to re-hash (e.g. artifacts/)")
    rows = [row for folder in folders for row in rehash_tree(folder)]
    for row in rows:
        status = "ok" if row.error is None else "DIFFERS"
        print(f"{status:<8} {row.folder}  {row.files} files, {row.bytes / 2**20:.1f} MiB" if row.error is None
              else f"{status:<8} {row.error}")  # fmt: skip
    bad = [row for row in rows if row.error is not None]
    if bad:
        raise UserError(
            f"{len(bad)} of {len(rows)} artifact folders do not match their manifests (listed above): rebuild them "
            "with --force"
        )
    print(f"{len(rows)} artifact folders re-hashed: every file matches its manifest")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="ltx-verify", description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path, metavar="ARTIFACT_DIR")
    parser.add_argument("--backend", choices=("ort", "om", "onnx"), default="ort", help="compiled engine to check")
    parser.add_argument("--ep", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--checkpoint-path", type=Path, help="verify against these weights (default: the manifest's)")
    parser.add_argument("--inputs", default="random", help="random (seeded samples) or a .safetensors of named feeds")
    parser.add_argument("--per-block", action="store_true", help="walk a block-layout DiT to the first bad block")
    parser.add_argument("--lora", nargs=2, action="append", default=[], metavar=("PATH", "STRENGTH"),
                        help="report a LoRA: rank, alpha, touched weights, device-vs-CPU merge")  # fmt: skip
    parser.add_argument(
        "--rehash",
        action="store_true",
        help="only re-hash every file of every artifact under each ARTIFACT_DIR (a folder or a whole store) "
        "against its manifest, trusting no size+mtime cache; exit 2 if any differs",
    )
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    quant = parser.add_argument_group("--quantization w8a8: per-block cosine of W8A8 vs float at the real width")
    quant.add_argument("--quantization", help="w8a8: random-weight LTX-2.3 blocks, quantized vs float (no artifacts)")
    quant.add_argument("--shape", default="41x1024x1536", help="pixel shape of the token profile")
    quant.add_argument("--stage", type=int, choices=(1, 2), default=1, help="token profile stage (1: half size)")
    quant.add_argument("--blocks", type=int, default=1, help="how many blocks (one seed each)")
    quant.add_argument("--quantization-skip", action="append", default=[], metavar="PATTERN")
    quant.add_argument("--smooth-alpha", type=float, help="SmoothQuant strength, calibrated on the sample")
    quant.add_argument("--outlier-channels", type=int, default=0, help="scale this many hidden channels (outliers)")
    dev.add_device_args(parser)
    args = parser.parse_args(argv)
    if args.quantization is not None:
        return _quantization_main(args)
    if args.rehash:
        return _rehash_main(args.artifacts)
    if not args.artifacts and not args.lora:
        raise UserError("nothing to verify: pass ARTIFACT_DIR... and/or --lora PATH STRENGTH")
    loras_given = [parse_lora_arg(path, strength) for path, strength in args.lora]
    if loras_given and not args.checkpoint_path:
        raise UserError("--lora needs --checkpoint-path (the base weights it merges into)")
    inputs = None if args.inputs == "random" else Path(args.inputs)
    if inputs is not None and not inputs.is_file():
        raise UserError(f"--inputs {inputs}: not found (use random, or a .safetensors of named feeds)")
    override = None
    if args.checkpoint_path:
        read_model_config(args.checkpoint_path)
        override = CheckpointSet(args.checkpoint_path)
    results = []
    for folder in args.artifacts:
        results += verify_artifact(
            folder, backend=args.backend, ep=args.ep, ckset=override, inputs=inputs, per_block=args.per_block
        )
    device = dev.policy_from_args(args).device
    loras = []
    for lora in loras_given:
        loras.append(lora_report(lora, args.checkpoint_path, device))
    report = markdown(results, loras)
    print(report)
    if args.report:
        atomic_write_text(args.report, report + "\n")
    if args.json:
        body = {
            "graphs": [
                {
                    **{k: v for k, v in r.__dict__.items() if k != "outputs"},
                    "outputs": {n: c.to_dict() for n, c in r.outputs.items()},
                }
                for r in results
            ],
            "loras": loras,
        }
        atomic_write_text(args.json, json.dumps(body, indent=2) + "\n")
    return 0 if all(r.passed for r in results) else 1
