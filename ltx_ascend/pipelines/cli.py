"""`ltx-run PIPELINE`: Lightricks' LTX-2.3 pipelines on compiled graphs (om / ort) or eager.

Every flag of ltx-pipelines 1.0.0 keeps its name (`python -m ltx_pipelines.X ...` becomes
`ltx-run X ...`); ours are --artifacts, --backend, --fallback, --device, --dtype, --raw-output,
--timings-json, --step-cache / --step-cache-search and --parallel. With no checkpoint flags it runs
on the tiny set under artifacts/, building it and its ONNX Runtime graphs on first use. Under
torchrun with --parallel, every rank runs the pipeline on its own device; rank 0 alone writes the
outputs and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.args import add_checkpoint_args
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.pipelines import params as P
from ltx_ascend.pipelines.context import ImageInput, Output, Request
from ltx_ascend.pipelines.engine import TINY_DISTILLED_LORA_STRENGTH, Engine, Prepared, Result
from ltx_ascend.pipelines.engine import decode_profile as decode_profile
from ltx_ascend.pipelines.engine import preflight as preflight
from ltx_ascend.pipelines.media import check_output_path, write_raw
from ltx_ascend.pipelines.request import (
    DEFAULT_PROMPT,
    GUIDANCE_KEYS,
    NEGATIVE_INDEX_NOTE,
    SIDES,
    GenerationRequest,
    check_request,
    option_defaults,
    resolve_request,
)
from ltx_ascend.pipelines.request import check_image as _check_image
from ltx_ascend.pipelines.settings import RunSettings
from ltx_ascend.pipelines.stack import OFFLOAD_CHOICES, BackendChoice
from ltx_ascend.pipelines.stages import PIPELINES
from ltx_ascend.pipelines.step_cache import StepCacheSpec
from ltx_ascend.pipelines.step_cache_search import DEFAULT_SPEC_FILE, search_step_cache
from ltx_ascend.pipelines.timing import Timings
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.runtime.artifacts import add_fallback_arg
from ltx_ascend.store import Variant

__all__ = ["DEFAULT_PROMPT", "NEGATIVE_INDEX_NOTE", "TINY_DISTILLED_LORA_STRENGTH", "_check_image", "main"]


def pipeline_modules() -> dict:
    """The pipelines this build has (a module that does not import is left out of --help)."""
    modules = {}
    for name, path in PIPELINES.items():
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:
                raise
    return modules


def _float_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


class _ImageAction(argparse.Action):
    """`--image PATH FRAME_IDX STRENGTH [CRF]`, repeatable."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (3, 4):
            raise UserError(f"{option_string} takes PATH FRAME_IDX STRENGTH [CRF], got {' '.join(values)}")
        try:
            crf = int(values[3]) if len(values) == 4 else P.DEFAULT_IMAGE_CRF
            image = ImageInput(values[0], int(values[1]), float(values[2]), crf)
        except ValueError:
            raise UserError(
                f"{option_string} {' '.join(values)}: FRAME_IDX and CRF are integers, STRENGTH a number"
            ) from None
        items = list(getattr(namespace, self.dest) or [])
        items.append(image)
        setattr(namespace, self.dest, items)


def _add_guidance(parser: argparse.ArgumentParser, prefix: str, cross: str) -> None:
    group = parser.add_argument_group(f"{prefix} guidance (defaults: LTX-2.3)")
    group.add_argument(f"--{prefix}-cfg-guidance-scale", type=float)
    group.add_argument(f"--{prefix}-stg-guidance-scale", type=float)
    group.add_argument(f"--{prefix}-rescale-scale", type=float)
    group.add_argument(f"--{cross}-guidance-scale", type=float, help="modality (A-V cross-attention) guidance")
    group.add_argument(f"--{prefix}-skip-step", type=int)
    group.add_argument(f"--{prefix}-stg-blocks", type=int, nargs="*")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ltx-run", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="pipeline", required=True, metavar="PIPELINE")
    for name, module in pipeline_modules().items():
        p = sub.add_parser(name, help=(module.__doc__ or name).splitlines()[0])
        add_checkpoint_args(p, required=False)
        if getattr(module, "DISTILLED", False):
            p.add_argument("--distilled-checkpoint-path", type=Path, help="distilled LTX-2.3 checkpoint")
        p.add_argument("--prompt", default=None, help="text prompt (default: a demo prompt)")
        p.add_argument("--negative-prompt", default=P.DEFAULT_NEGATIVE_PROMPT)
        p.add_argument("--seed", type=int)
        p.add_argument("--height", type=int, help="output height (two-stage: stage 1 runs at half)")
        p.add_argument("--width", type=int)
        p.add_argument("--num-frames", type=int, help="8k+1")
        p.add_argument("--frame-rate", type=float)
        p.add_argument("--num-inference-steps", type=int)
        p.add_argument(
            "--image",
            nargs="+",
            action=_ImageAction,
            dest="images",
            default=[],
            metavar="PATH IDX STRENGTH [CRF]",
            help="condition frame IDX on an image (repeatable)",
        )
        p.add_argument("--enhance-prompt", action="store_true", help="not supported: the LLM runs eager only")
        _add_guidance(p, "video", "a2v")
        _add_guidance(p, "audio", "v2a")
        out = p.add_argument_group("output")
        out.add_argument("--output-path", type=Path, default=Path("output.mp4"))
        out.add_argument("--raw-output", type=Path, help="also write frames + waveform as .safetensors")
        out.add_argument("--timings-json", type=Path, help="write the per-stage timing table as JSON")
        run = p.add_argument_group("runtime")
        run.add_argument(
            "--artifacts", type=Path, default=Path("artifacts"), help="artifact store (default artifacts/)"
        )
        run.add_argument("--backend", default=None, help="om|ort|onnx|eager, or per component: dit=ort,vocoder=eager")
        run.add_argument("--ep", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime execution provider")
        run.add_argument("--soc", help="Ascend SoC of the om artifacts (default: any)")
        run.add_argument(
            "--quantization",
            default="",
            help="w8a8: int8 DiT linears on every backend; fp8-cast|fp8-scaled-mm: ltx-core's FP8 (CUDA eager)",
        )
        run.add_argument(
            "--quantization-skip", action="append", default=[], metavar="PATTERN", help="w8a8: keep these linears float"
        )
        run.add_argument(
            "--variant",
            type=Variant.parse,
            metavar="LABEL",
            help="compiled graph variant to run: portable, npu-ops, ort-fused (+w8a8); default: the backend's "
            "preference (om: npu-ops, then portable; ort: ort-fused, then portable)",
        )
        run.add_argument("--prompt-cache", type=Path, help="prompt-embedding cache (default ARTIFACTS/prompt-cache)")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p.add_argument_group(f"{name}"))
        run.add_argument(
            "--build-missing",
            action="store_true",
            help="export (and compile for ort) any artifact the run needs and lacks (implied for the tiny set)",
        )
        add_fallback_arg(run)
        dev.add_device_args(run)
        run.add_argument(
            "--parallel",
            type=distributed.Layout.parse,
            default=None,
            metavar="cfg=C,ulysses=U",
            help="under torchrun (C x U = --nproc-per-node): guidance passes over C ranks, tokens over U",
        )
        cache = p.add_argument_group("step cache (skip DiT blocks that repeat between steps)")
        cache.add_argument(
            "--step-cache",
            default="off",
            metavar="SPEC",
            help="off (default) | block:start=S,end=E,interval=I,blocks=A-B | auto[:threshold=T,warmup=W] "
            "(+ stages=1|2|1+2), or @FILE written by --step-cache-search",
        )
        cache.add_argument(
            "--step-cache-search",
            type=float,
            metavar="TARGET_PSNR",
            help="calibrate: run once uncached, then search the --step-cache policy's parameters (default auto) "
            "for the most skipped DiT blocks whose frames stay >= TARGET_PSNR dB from it; writes the SPEC file",
        )
        cache.add_argument(
            "--step-cache-out",
            type=Path,
            default=Path(DEFAULT_SPEC_FILE),
            help=f"where --step-cache-search writes the chosen SPEC (default {DEFAULT_SPEC_FILE})",
        )
        run.add_argument(
            "--dit-layout",
            choices=("auto", "whole", "blocks"),
            default="auto",
            help="compiled DiT form: one graph, or input/block/output graphs with weights bound per block "
            "(auto: ltx-export's choice; streaming needs blocks)",
        )
        run.add_argument(
            "--offload",
            choices=OFFLOAD_CHOICES,
            default="none",
            help="text-encoder: return Gemma's device memory right after the prompt stage; all: also keep the "
            "VAE, upsampler and vocoder in host memory, each on the device only while it runs",
        )
        memory = run.add_mutually_exclusive_group()
        memory.add_argument(
            "--streaming-prefetch-count",
            type=int,
            metavar="N",
            help="stream the DiT's block weights from host memory, N blocks ahead of the running one "
            "(at most N + 1 blocks on the device; default: every block resident)",
        )
        memory.add_argument(
            "--max-device-memory",
            type=float,
            metavar="GB",
            help="keep the DiT within GB of device memory: streams with the smallest prefetch count that fits",
        )
    return parser


def generation_request(args: argparse.Namespace) -> GenerationRequest:
    """The request-level flags of a parsed command line (None where a flag was not given)."""
    guidance = {}
    for side, cross in SIDES.items():
        given = {key: getattr(args, flag.format(p=side, x=cross), None) for key, (flag, _) in GUIDANCE_KEYS.items()}
        guidance[side] = {k: v for k, v in given.items() if v is not None}
    module = importlib.import_module(PIPELINES[args.pipeline])
    return GenerationRequest(
        prompt=args.prompt or None,  # ltx-run: an empty --prompt is the demo prompt, as it always was
        pipeline=args.pipeline,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        frame_rate=args.frame_rate,
        num_inference_steps=args.num_inference_steps,
        video_guidance=guidance["video"],
        audio_guidance=guidance["audio"],
        images=tuple(args.images),
        extra={name: getattr(args, name) for name in option_defaults(module) if name != "negative_prompt"},
    )


def request_from_args(args: argparse.Namespace, defaults: P.PipelineDefaults) -> Request:
    """The pipelines' Request for a parsed command line at `defaults` (no checks)."""
    return resolve_request(generation_request(args), defaults, tuple(args.distilled_lora or ()), args.negative_prompt)


def check_inputs(args: argparse.Namespace, req: Request, two_stage: bool) -> None:
    """Everything that can be checked before a model loads: the request (`request.check_request`, the
    one validation `Engine.validate` runs) and ltx-run's own flags (outputs)."""
    check_request(req, two_stage)
    check_cli_flags(args)


def check_cli_flags(args: argparse.Namespace) -> None:
    """The flags only ltx-run has: where it writes, --enhance-prompt, --step-cache-search."""
    if args.enhance_prompt:
        raise UserError("--enhance-prompt is not supported by ltx-run (Gemma runs eager only); drop the flag")
    check_output_path(args.output_path, ".mp4", "--output-path")
    if args.raw_output is not None:
        check_output_path(args.raw_output, ".safetensors", "--raw-output")
    if args.timings_json is not None:
        check_output_path(args.timings_json, None, "--timings-json")
    if args.step_cache_search is not None and not args.step_cache_search > 0:
        raise UserError(f"--step-cache-search {args.step_cache_search}: the target PSNR must be > 0 dB (e.g. 35)")
    if args.step_cache_search is not None:
        check_writable_dir(args.step_cache_out.parent, "--step-cache-out")


@dataclass
class Checked:
    """A command line that passed every check that needs no model: what `main` runs from."""

    args: argparse.Namespace
    module: ModuleType
    request: Request
    two_stage: bool
    tiny: bool
    backends: BackendChoice
    step_cache: StepCacheSpec
    settings: RunSettings
    engine: Engine
    prepared: Prepared


def parse_and_check(argv: list[str] | None) -> Checked:
    """Parse an `ltx-run` command line and check every input before anything loads or is written:
    the run-level flags once (`RunSettings`), the request through `Engine.validate`'s checks, then
    ltx-run's own output flags."""
    args = build_parser().parse_args(argv)
    if args.enhance_prompt:
        raise UserError("--enhance-prompt is not supported by ltx-run (Gemma runs eager only); drop the flag")
    settings = RunSettings.from_args(args)
    engine = Engine(settings, log=print)
    prepared = engine.prepare(generation_request(args))
    check_cli_flags(args)
    args.lora = list(prepared.loras)  # what the pipeline's check added (retake --loras, ic_lora's tiny LoRA)
    if getattr(prepared.module, "DISTILLED", False) and args.checkpoint_path is None:
        args.checkpoint_path = args.distilled_checkpoint_path
    return Checked(
        args,
        prepared.module,
        prepared.internal,
        prepared.two_stage,
        settings.tiny,
        settings.backends,
        settings.step_cache_spec,
        settings,
        engine,
        prepared,
    )


class _NoProgress(io.TextIOBase):
    """stderr of ranks other than 0: warnings and errors pass, progress bars (carriage returns) do not."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if "\r" not in text:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    checked = parse_and_check(argv)
    args, layout = checked.args, checked.settings.layout
    launched = distributed.launched_ranks()
    if launched is not None and launched[1] > 1 and args.parallel is None:
        n = launched[1]
        raise UserError(f"torchrun started {n} ranks: pass --parallel cfg=C,ulysses=U with C x U = {n}")
    rank, _, _ = distributed.check_layout(layout)
    if layout.size > 1 and args.step_cache_search is not None:
        raise UserError("--step-cache-search calibrates on one device: run it without torchrun and --parallel")
    if rank == 0:
        return _main(checked)
    quiet = _NoProgress(sys.stderr)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(quiet):
        return _main(checked)  # rank 0 alone reports


def _main(checked: Checked) -> int:
    """The run itself, on the API: `Engine.run` the prepared request, then write what ltx-run writes."""
    args, engine, prepared, req = checked.args, checked.engine, checked.prepared, checked.request
    start = time.perf_counter()
    engine.load_for(prepared)  # the tiny set written, the checkpoint set checked, the process group open
    print(engine.describe(), flush=True)
    if args.step_cache_search is not None:
        step_cache = checked.step_cache
        policy = engine.policy
        search_step_cache(
            lambda spec: _outputs(engine.run(prepared, step_cache=spec)),
            template=step_cache if step_cache.active else StepCacheSpec(policy="auto"),
            target_psnr=args.step_cache_search,
            steps=req.num_inference_steps,
            out=args.step_cache_out,
            describe=f"{args.pipeline}, {req.num_inference_steps} steps, seed {req.seed}, {req.num_frames}x"
            f"{req.height}x{req.width}, {args.backend or 'ort'}, {str(policy.dtype).removeprefix('torch.')}",
        )
        print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return 0
    result = engine.run(prepared)
    if engine.parallel is not None and not engine.parallel.world.is_main:
        return 0
    timings = result.timings
    with timings.stage("write"):
        result.write_mp4(args.output_path)
        if args.raw_output is not None:
            write_raw(args.raw_output, result.frames, result.audio_object)
    print(f"\n{args.pipeline}: {tuple(result.frames.shape)} frames -> {args.output_path}")
    print(timings.table())
    if args.timings_json:
        timings.write_json(args.timings_json)
    print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _outputs(result: Result) -> tuple[Output, Timings]:
    """What --step-cache-search compares: the run's output and its timings."""
    return Output(result.frames, result.audio_object), result.timings
