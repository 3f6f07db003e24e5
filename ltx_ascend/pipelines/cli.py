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

from ltx_ascend import validation as V
from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.args import add_checkpoint_args
from ltx_ascend.checkpoints.loader import read_model_config
from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.pipelines import params as P
from ltx_ascend.pipelines.context import ImageInput, Output, Request
from ltx_ascend.pipelines.engine import TINY_DISTILLED_LORA_STRENGTH, Engine, Prepared, Result
from ltx_ascend.pipelines.engine import decode_profile as decode_profile
from ltx_ascend.pipelines.engine import preflight as preflight
from ltx_ascend.pipelines.lookups import lookups, misses
from ltx_ascend.pipelines.media import check_output_path, write_raw
from ltx_ascend.pipelines.parallel import Parallel
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
from ltx_ascend.pipelines.settings import default_backend as default_backend
from ltx_ascend.pipelines.stack import OFFLOAD_CHOICES, BackendChoice, ModelStack
from ltx_ascend.pipelines.stages import PIPELINES, pipeline_spec
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
        _add_request_args(p, module)
        _add_output_args(p)
        run = p.add_argument_group("runtime")
        _add_backend_args(run)
        if module.SPEC.add_arguments is not None:
            module.SPEC.add_arguments(p.add_argument_group(f"{name}"))
        _add_run_mode_args(run)
        _add_step_cache_args(p)
        _add_memory_args(run)
    return parser


def _add_request_args(p: argparse.ArgumentParser, module: ModuleType) -> None:
    """What is generated: checkpoints, prompt, size, steps, condition images and guidance."""
    add_checkpoint_args(p, required=False)
    if module.SPEC.distilled:
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


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """Where the video, the raw frames and the timing table go."""
    out = p.add_argument_group("output")
    out.add_argument("--output-path", type=Path, default=Path("output.mp4"))
    out.add_argument("--raw-output", type=Path, help="also write frames + waveform as .safetensors")
    out.add_argument("--timings-json", type=Path, help="write the per-stage timing table as JSON")


def _add_backend_args(run: argparse._ArgumentGroup) -> None:
    """Which compiled artifacts run, and on what: store, backend, provider, SoC, quantization, variant."""
    run.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact store (default artifacts/)")
    run.add_argument("--backend", default=None, help="om|ort|onnx|eager, or per component: dit=ort,vocoder=eager "
                     "(default: om on an Ascend host, eager where not prepared; else ort)")  # fmt: skip
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


def _add_run_mode_args(run: argparse._ArgumentGroup) -> None:
    """How the run goes: build what is missing, fall back, only check, which device, over how many ranks."""
    run.add_argument(
        "--build-missing",
        action="store_true",
        help="export (and compile for ort) any artifact the run needs and lacks (implied for the tiny set)",
    )
    add_fallback_arg(run)
    run.add_argument(
        "--check",
        action="store_true",
        help="only prove the run would find every compiled artifact it looks up: loads no model, writes "
        "nothing; exit 2 naming each miss and the ltx-prepare command that builds it",
    )
    dev.add_device_args(run)
    run.add_argument(
        "--parallel",
        type=distributed.Layout.parse,
        default=None,
        metavar="cfg=C,ulysses=U",
        help="under torchrun (C x U = --nproc-per-node): guidance passes over C ranks, tokens over U",
    )


def _add_step_cache_args(p: argparse.ArgumentParser) -> None:
    """The step cache's policy, and its calibration search."""
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


def _add_memory_args(run: argparse._ArgumentGroup) -> None:
    """Where the models live: the DiT's layout, offload, placement, and block streaming or its memory cap.
    Added after the step cache group so that the usage line keeps its order."""
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
    run.add_argument(
        "--placement",
        metavar="COMPONENT=PLACE,...",
        help="where models live between uses: device, host (parked, moved in per use) or rebuild, per component "
        "(e.g. text_encoder=host); default: the memory policy's choice from the device's memory",
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


def generation_request(args: argparse.Namespace) -> GenerationRequest:
    """The request-level flags of a parsed command line (None where a flag was not given)."""
    guidance = {}
    for side, cross in SIDES.items():
        given = {key: getattr(args, flag.format(p=side, x=cross), None) for key, (flag, _) in GUIDANCE_KEYS.items()}
        guidance[side] = {k: v for k, v in given.items() if v is not None}
    spec = pipeline_spec(args.pipeline)
    return GenerationRequest(
        prompt=args.prompt,  # None (no --prompt) is the demo prompt; an explicit "" is a prompt
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
        extra={name: getattr(args, name) for name in option_defaults(spec) if name != "negative_prompt"},
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
    argv: tuple[str, ...] = ()  # as given (the ltx-prepare command a miss names is made from it)


# argparse dests whose flag is not `--` + the dest with dashes.
FLAG_NAMES = {"images": "--image", "lora": "--lora", "distilled_lora": "--distilled-lora"}


def input_files(args: argparse.Namespace) -> dict[str, object]:
    """Every file the run reads (flag -> path or paths): no output may be one of them."""
    videos = [v.path for v in getattr(args, "video_conditioning", None) or ()]
    mask = getattr(args, "conditioning_attention_mask", None)
    cache = args.step_cache[1:] if args.step_cache.startswith("@") else None
    return {
        "--checkpoint-path": args.checkpoint_path,
        "--distilled-checkpoint-path": getattr(args, "distilled_checkpoint_path", None),
        "--spatial-upsampler-path": args.spatial_upsampler_path,
        "--gemma-root": V.files_under(args.gemma_root),
        "--lora": [lora.path for lora in args.lora or ()],
        "--distilled-lora": [lora.path for lora in args.distilled_lora or ()],
        "--loras": list(getattr(args, "loras", None) or ()),  # retake's LoRAs (paths, strength 1)
        "--image": [image.path for image in args.images],
        "--audio-path": getattr(args, "audio_path", None),
        "--video-path": getattr(args, "video_path", None),
        "--video-conditioning": videos,
        "--conditioning-attention-mask": None if mask is None else mask.path,
        "--step-cache": cache,
    }


def output_files(args: argparse.Namespace) -> dict[str, Path | None]:
    """Every file the run writes (flag -> path)."""
    return {
        "--output-path": args.output_path,
        "--raw-output": args.raw_output,
        "--timings-json": args.timings_json,
        "--step-cache-out": args.step_cache_out if args.step_cache_search is not None else None,
    }


def parse_and_check(argv: list[str] | None) -> Checked:
    """Parse an `ltx-run` command line and check every input before anything loads or is written:
    the run-level flags once (`RunSettings`), the request through `Engine.validate`'s checks, then
    ltx-run's own output flags."""
    args = build_parser().parse_args(argv)
    if args.enhance_prompt:
        raise UserError("--enhance-prompt is not supported by ltx-run (Gemma runs eager only); drop the flag")
    V.check_finite(V.flag_values(vars(args), FLAG_NAMES))
    for flag in ("prompt", "negative_prompt"):
        if getattr(args, flag) is not None:
            V.utf8_text(getattr(args, flag), f"--{flag.replace('_', '-')}")
    V.check_distinct_outputs(output_files(args), input_files(args))
    settings = RunSettings.from_args(args)
    engine = Engine(settings, log=print)
    prepared = engine.prepare(generation_request(args))
    check_cli_flags(args)
    args.lora = list(prepared.loras)  # what the pipeline's check added (retake --loras, ic_lora's tiny LoRA)
    if prepared.spec.distilled and args.checkpoint_path is None:
        args.checkpoint_path = args.distilled_checkpoint_path
    checked = Checked(
        args,
        importlib.import_module(PIPELINES[prepared.pipeline]),
        prepared.internal,
        prepared.two_stage,
        settings.tiny,
        settings.backends,
        settings.step_cache_spec,
        settings,
        engine,
        prepared,
        tuple(sys.argv[1:] if argv is None else argv),
    )
    checked.engine.prepare_hint = prepare_command(checked)
    return checked


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


def run_setup(checked: Checked, layout: distributed.Layout, *, connect: bool = True, write_tiny: bool = True):
    """(checkpoint set, device policy, Parallel or None) of a checked command line, through its engine.
    `connect=False` (ltx-prepare, --check) describes rank 0 of the layout without opening a process
    group; with `write_tiny=False` a tiny set not yet written is refused instead of written."""
    args, engine = checked.args, checked.engine
    if checked.tiny and not write_tiny and not TinySet(args.artifacts / "tiny").is_complete():
        where = args.artifacts / "tiny"
        raise UserError(f"no tiny set under {where} yet (writing nothing here): {prepare_command(checked)}")
    ckset, checked.request = engine._checkpoints(checked.prepared)  # the tiny set's files and LoRA filled in
    args.checkpoint_path, args.gemma_root = ckset.checkpoint, ckset.gemma_root
    args.spatial_upsampler_path = ckset.spatial_upsampler
    checked.step_cache.check(read_model_config(ckset.checkpoint)["transformer"]["num_layers"])
    policy, parallel = engine.policy, None
    if layout.size > 1:
        if connect:
            engine._world(ckset)
            policy, parallel = engine.policy, engine.parallel
        else:
            transformer = read_model_config(ckset.checkpoint)["transformer"]
            heads = {"video": transformer["num_attention_heads"], "audio": transformer["audio_num_attention_heads"]}
            distributed.check_heads(layout, heads)
            parallel = Parallel(distributed.World(layout, 0, 0, policy.device))
    return ckset, policy, parallel


def make_stack(checked: Checked, ckset, policy, parallel, spec: StepCacheSpec, timings: Timings | None) -> ModelStack:
    """A ModelStack set up as the run's (for --check and ltx-prepare's lookups)."""
    s = checked.settings
    return ModelStack(
        ckset=ckset,
        policy=policy,
        backends=checked.backends,
        artifacts=s.artifacts,
        fallback=s.fallback,
        build_missing=s.builds and not checked.args.check,
        ep=s.ep,
        soc=s.soc,
        step_cache=spec,
        timings=timings,
        dit_layout=s.dit_layout,
        streaming_prefetch=s.streaming_prefetch_count,
        max_device_memory_gb=s.max_device_memory,
        offload=s.offload,
        parallel=parallel,
        quantization=s.quantization,
        quantization_skip=s.quantization_skip,
        variant=s.variant_spec,
        prepare_hint=prepare_command(checked),
    )


# ltx-run flags that change no artifact a run looks up: left out of the ltx-prepare command it suggests.
_RUN_ONLY = {
    "--prompt": 1, "--negative-prompt": 1, "--seed": 1, "--num-inference-steps": 1, "--output-path": 1,
    "--raw-output": 1, "--timings-json": 1, "--prompt-cache": 1, "--build-missing": 0, "--fallback": 1,
    "--check": 0, "--offload": 1, "--step-cache-search": 1, "--step-cache-out": 1, "--enhance-prompt": 0,
    "--height": 1, "--width": 1, "--num-frames": 1,
}  # fmt: skip


def prepare_command(checked: Checked) -> str:
    """The `ltx-prepare` command that builds every artifact this run looks up: its pipeline at its
    shape, with the flags that decide what is looked up (checkpoints, backend, dtype, layout...)."""
    import shlex

    argv, kept, i = list(checked.argv), [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in _RUN_ONLY:
            i += 1 + (_RUN_ONLY[flag] if "=" not in argv[i] else 0)
            continue
        kept.append(argv[i])
        i += 1
    req = checked.request
    shape = f"{req.num_frames}x{req.height}x{req.width}"
    return shlex.join(["ltx-prepare", kept[0] if kept else checked.args.pipeline, "--shapes", shape, *kept[1:]])


def _check_only(checked: Checked) -> int:
    """`ltx-run ... --check`: the lookups of this run, each with what it found; exit 2 on any miss."""
    ckset, policy, parallel = run_setup(checked, checked.settings.layout, connect=False, write_tiny=False)
    stack = make_stack(checked, ckset, policy, parallel, checked.step_cache, None)
    stack.prepare_hint = None  # named once, at the end
    found = lookups(checked.module, checked.request, stack)
    for lookup in found:
        print(("  ok    " if lookup.ok else "  MISS  ") + lookup.describe())
    missing = misses(found)
    if missing:
        names = ", ".join(f"{m.component} at {m.shape}" for m in missing)
        raise UserError(f"{len(missing)} of {len(found)} lookups miss ({names}): {prepare_command(checked)}")
    compiled = sum(1 for lookup in found if lookup.compiled)
    print(f"check: a run of {checked.args.pipeline} finds all {compiled} compiled artifacts it looks up")
    return 0


def _main(checked: Checked) -> int:
    """The run itself, on the API: `Engine.run` the prepared request, then write what ltx-run writes."""
    args, engine, prepared, req = checked.args, checked.engine, checked.prepared, checked.request
    if args.check:
        return _check_only(checked)
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
