"""ltx-run's flags -> a checked request: the one argv validation ltx-run, ltx-prepare and
ltx-serve share (HTTP requests meet the same `check_request`). The command itself is
ltx_ascend/tools/run.py."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ltx_ascend import validation as V
from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.args import add_checkpoint_args
from ltx_ascend.checkpoints.loader import read_model_config
from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.engine import params as P
from ltx_ascend.engine.context import ImageInput, Request
from ltx_ascend.engine.parallel import Parallel
from ltx_ascend.engine.request import (
    GUIDANCE_KEYS,
    SIDES,
    GenerationRequest,
    check_request,
    option_defaults,
    resolve_request,
)
from ltx_ascend.engine.resident import Engine, Prepared
from ltx_ascend.engine.settings import RunSettings
from ltx_ascend.engine.stack import OFFLOAD_CHOICES, BackendChoice, ModelStack
from ltx_ascend.engine.stages import PIPELINES, pipeline_spec
from ltx_ascend.engine.step_cache import StepCacheSpec
from ltx_ascend.engine.step_cache_search import DEFAULT_SPEC_FILE
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import OneLineParser, UserError
from ltx_ascend.media import check_output_path
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.runtime.artifacts import add_fallback_arg
from ltx_ascend.store import Variant


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
    """A ModelStack set up as the run's, for lookups (--check, ltx-prepare): nothing built under --check."""
    build_missing = checked.settings.builds and not checked.args.check
    return checked.engine._stack(
        ckset, spec, timings, policy=policy, parallel=parallel, build_missing=build_missing, backends=checked.backends
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
