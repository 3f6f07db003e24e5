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
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from ltx_core.components.guiders import MultiModalGuiderParams

from ltx_ascend.atomic import check_writable_dir
from ltx_ascend.checkpoints.args import add_checkpoint_args, checkpoint_set_from_args
from ltx_ascend.checkpoints.loader import LoraSpec, read_model_config, validate_set
from ltx_ascend.checkpoints.tiny import ensure_tiny_set
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.pipelines import params as P
from ltx_ascend.pipelines.context import ImageInput, Request, RunContext
from ltx_ascend.pipelines.media import check_output_path, write_mp4, write_raw
from ltx_ascend.pipelines.parallel import BroadcastPrompts, Parallel
from ltx_ascend.pipelines.stack import (
    OFFLOAD_CHOICES,
    WHOLE_CANNOT_STREAM,
    BackendChoice,
    ModelStack,
    check_quantization,
)
from ltx_ascend.pipelines.stages import PIPELINES
from ltx_ascend.pipelines.step_cache import StepCacheSpec, parse_spec
from ltx_ascend.pipelines.step_cache_search import DEFAULT_SPEC_FILE, search_step_cache
from ltx_ascend.pipelines.text import PromptEncoder
from ltx_ascend.pipelines.timing import Timings
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.runtime.artifacts import add_fallback_arg
from ltx_ascend.shapes import check_pixel_shape
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
DEFAULT_PROMPT = (
    "A red fox runs through fresh snow at dawn, the camera tracking low beside it; wind and soft footsteps."
)
TINY_DISTILLED_LORA_STRENGTH = 0.8


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


def _guider(args: argparse.Namespace, prefix: str, cross: str, base: MultiModalGuiderParams) -> MultiModalGuiderParams:
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return MultiModalGuiderParams(
        cfg_scale=pick(getattr(args, f"{prefix}_cfg_guidance_scale"), base.cfg_scale),
        stg_scale=pick(getattr(args, f"{prefix}_stg_guidance_scale"), base.stg_scale),
        rescale_scale=pick(getattr(args, f"{prefix}_rescale_scale"), base.rescale_scale),
        modality_scale=pick(getattr(args, f"{cross}_guidance_scale"), base.modality_scale),
        skip_step=pick(getattr(args, f"{prefix}_skip_step"), base.skip_step),
        stg_blocks=pick(getattr(args, f"{prefix}_stg_blocks"), base.stg_blocks),
    )


def request_from_args(args: argparse.Namespace, defaults: P.PipelineDefaults) -> Request:
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Request(
        prompt=args.prompt or DEFAULT_PROMPT,
        negative_prompt=args.negative_prompt,
        seed=pick(args.seed, defaults.seed),
        height=pick(args.height, defaults.height),
        width=pick(args.width, defaults.width),
        num_frames=pick(args.num_frames, defaults.num_frames),
        frame_rate=pick(args.frame_rate, defaults.frame_rate),
        num_inference_steps=pick(args.num_inference_steps, defaults.num_inference_steps),
        video_guider=_guider(args, "video", "a2v", defaults.video_guider),
        audio_guider=_guider(args, "audio", "v2a", defaults.audio_guider),
        images=list(args.images),
        distilled_lora=tuple(args.distilled_lora or ()),
    )


NEGATIVE_INDEX_NOTE = (
    "note: --image {path} {given}: a negative frame index counts from the end, so it is frame {frame} of "
    "{frames}; ltx-pipelines 1.0.0 passes {given} to ltx-core literally, which places that keyframe before "
    "the first frame"
)


def _check_image(image: ImageInput, num_frames: int) -> ImageInput:
    """The image exists, decodes, and its frame index is in range; a negative index counts from the
    end (Python style: -1 is the last frame), as the LTX-2.3 Ascend guide's keyframe command means it."""
    path = Path(image.path)
    if not path.is_file():
        raise UserError(f"--image {image.path}: file not found")
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for a file that is not an image
        raise UserError(f"--image {image.path}: cannot decode it as an image ({exc}); pass a PNG or JPEG") from None
    if not -num_frames <= image.frame_idx < num_frames:
        raise UserError(
            f"--image {image.path} {image.frame_idx}: frame index must be in [0, {num_frames - 1}] "
            f"(or [-{num_frames}, -1] counted from the end)"
        )
    if not math.isfinite(image.strength):
        raise UserError(f"--image {image.path}: STRENGTH {image.strength} must be a finite number, e.g. 1.0")
    if image.frame_idx < 0:
        frame = image.frame_idx + num_frames
        print(NEGATIVE_INDEX_NOTE.format(path=image.path, given=image.frame_idx, frame=frame, frames=num_frames))
        return replace(image, frame_idx=frame)
    return image


def check_inputs(args: argparse.Namespace, req: Request, two_stage: bool) -> None:
    """Everything that can be checked before a model loads."""
    check_pixel_shape(req.num_frames, req.height, req.width, two_stage=two_stage)
    if req.num_inference_steps < 1:
        raise UserError(f"--num-inference-steps {req.num_inference_steps}: must be >= 1")
    if not (math.isfinite(req.frame_rate) and req.frame_rate > 0):
        raise UserError(f"--frame-rate {req.frame_rate:g}: must be a positive number of frames per second, e.g. 24")
    if args.streaming_prefetch_count is not None and args.streaming_prefetch_count < 0:
        raise UserError(f"--streaming-prefetch-count {args.streaming_prefetch_count}: must be >= 0 (blocks ahead)")
    if args.max_device_memory is not None and args.max_device_memory <= 0:
        raise UserError(f"--max-device-memory {args.max_device_memory}: must be a positive number of GB")
    if args.dit_layout == "whole" and (args.streaming_prefetch_count is not None or args.max_device_memory):
        raise UserError(f"--dit-layout whole: {WHOLE_CANNOT_STREAM}")
    if args.enhance_prompt:
        raise UserError("--enhance-prompt is not supported by ltx-run (Gemma runs eager only); drop the flag")
    req.images = [_check_image(image, req.num_frames) for image in req.images]
    check_output_path(args.output_path, ".mp4", "--output-path")
    if args.raw_output is not None:
        check_output_path(args.raw_output, ".safetensors", "--raw-output")
    if args.timings_json is not None:
        check_output_path(args.timings_json, None, "--timings-json")


def decode_profile(module, args: argparse.Namespace, req: Request, two_stage: bool):
    """The shape profile the pipeline decodes at (ic_lora --skip-stage-2 decodes the stage-1 latent)."""
    if getattr(args, "skip_stage_2", False):
        return req.profile(stage=1)
    return req.profile(stage=2) if two_stage else req.profile()


def preflight(stack: ModelStack, module, args: argparse.Namespace, req: Request, two_stage: bool) -> None:
    """Before Gemma or any model loads: the compiled artifacts a run needs and will not build are there
    (under --fallback none), and every backend suits the dtype. The DiT's profile depends on the guidance
    passes and conditioning tokens the pipeline appends, so the DiT is checked when stage 1 starts."""
    stack.check_available("text_connectors", req.profile())
    if two_stage and not getattr(args, "skip_stage_2", False):
        stack.check_available("spatial_upsampler", req.profile(stage=1))
    profile = decode_profile(module, args, req, two_stage)
    stack.check_available("video_decoder", profile)
    if getattr(module, "DECODES_AUDIO", True):
        stack.check_available("audio_decoder", profile)
        stack.check_available("vocoder", profile)


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


def parse_and_check(argv: list[str] | None) -> Checked:
    """Parse an `ltx-run` command line and check every input before anything loads or is written."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(PIPELINES[args.pipeline])
    two_stage = getattr(module, "TWO_STAGE", False)
    if getattr(module, "DISTILLED", False) and args.checkpoint_path is None:
        args.checkpoint_path = args.distilled_checkpoint_path
    tiny = args.checkpoint_path is None
    defaults = getattr(module, "TINY_DEFAULTS", P.TINY) if tiny else getattr(module, "DEFAULTS", P.LTX_2_3)
    req = request_from_args(args, defaults)
    check_inputs(args, req, two_stage)
    if hasattr(module, "check"):
        module.check(args, req)
    backends = BackendChoice.parse(args.backend or "ort")  # refused before the tiny set is written
    step_cache = parse_spec(args.step_cache)
    if args.step_cache_search is not None and not args.step_cache_search > 0:
        raise UserError(f"--step-cache-search {args.step_cache_search}: the target PSNR must be > 0 dB (e.g. 35)")
    if args.step_cache_search is not None:
        check_writable_dir(args.step_cache_out.parent, "--step-cache-out")
    if tiny or args.build_missing:
        check_writable_dir(args.artifacts, "--artifacts")
    check_writable_dir(args.prompt_cache or args.artifacts / "prompt-cache", "--prompt-cache")
    return Checked(args, module, req, two_stage, tiny, backends, step_cache)


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
    args = checked.args
    launched = distributed.launched_ranks()
    if launched is not None and launched[1] > 1 and args.parallel is None:
        n = launched[1]
        raise UserError(f"torchrun started {n} ranks: pass --parallel cfg=C,ulysses=U with C x U = {n}")
    layout = args.parallel or distributed.Layout()
    rank, _, _ = distributed.check_layout(layout)
    if layout.size > 1 and args.step_cache_search is not None:
        raise UserError("--step-cache-search calibrates on one device: run it without torchrun and --parallel")
    if layout.ulysses > 1 and checked.step_cache.policy == "auto":  # a block schedule is the same on every rank
        raise UserError(
            f"--step-cache auto with --parallel {layout}: each rank decides on its own tokens, so the ranks of a "
            "sequence could skip different blocks; use a block schedule (block:start=S,interval=I) or cfg=N alone"
        )
    if layout.ulysses > 1 and args.dit_layout == "whole":
        raise UserError(
            f"--dit-layout whole with --parallel {layout}: sequence parallel shards the DiT's blocks (compiled: the "
            "block graph split at attention); drop --dit-layout whole"
        )
    if rank == 0:
        return _main(checked, layout)
    quiet = _NoProgress(sys.stderr)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(quiet):
        return _main(checked, layout)  # rank 0 alone reports


def _main(checked: Checked, layout: distributed.Layout) -> int:
    args, module, req, two_stage = checked.args, checked.module, checked.request, checked.two_stage
    tiny, backends, step_cache = checked.tiny, checked.backends, checked.step_cache
    policy = dev.policy_from_args(args)
    dit_backend = BackendChoice.parse(args.backend or "ort").of("dit")
    if args.variant is not None:
        if dit_backend == "eager":
            raise UserError(f"--variant {args.variant.label} picks a compiled graph: pass --backend ort or om")
        if args.variant.quantization and args.quantization not in ("", args.variant.quantization):
            raise UserError(f"--variant {args.variant.label} and --quantization {args.quantization} disagree: drop one")
        args.quantization = args.quantization or args.variant.quantization
    check_quantization(args.quantization, dit_backend, policy.device)
    start = time.perf_counter()

    if tiny:
        print(f"no --checkpoint-path: using the tiny LTX-2.3 set under {args.artifacts / 'tiny'}", flush=True)
        tiny_set = ensure_tiny_set(args.artifacts / "tiny")
        args.checkpoint_path, args.gemma_root = tiny_set.checkpoint, args.gemma_root or tiny_set.gemma_root
        args.spatial_upsampler_path = args.spatial_upsampler_path or tiny_set.spatial_upsampler
        if getattr(module, "NEEDS_DISTILLED_LORA", two_stage) and not req.distilled_lora:
            req.distilled_lora = (LoraSpec(tiny_set.distilled_lora, TINY_DISTILLED_LORA_STRENGTH),)
    ckset = checkpoint_set_from_args(args)
    validate_set(ckset.with_loras([*ckset.loras, *req.distilled_lora]))
    if two_stage and ckset.spatial_upsampler is None:
        raise UserError(f"{args.pipeline} needs --spatial-upsampler-path (the x2 latent upsampler)")
    if getattr(module, "NEEDS_DISTILLED_LORA", two_stage) and not req.distilled_lora:
        raise UserError(f"{args.pipeline} needs --distilled-lora PATH STRENGTH for stage 2")
    step_cache.check(read_model_config(ckset.checkpoint)["transformer"]["num_layers"])
    parallel = None
    if layout.size > 1:
        transformer = read_model_config(ckset.checkpoint)["transformer"]
        heads = {"video": transformer["num_attention_heads"], "audio": transformer["audio_num_attention_heads"]}
        distributed.check_heads(layout, heads)
        world = distributed.init_world(layout, policy.device)
        policy = dev.policy_for(world.device, args.dtype)
        parallel = Parallel(world)

    def run_pipeline(spec: StepCacheSpec):
        """One run of the pipeline under step cache `spec`: (output, timings, stack)."""
        timings = Timings()
        stack = ModelStack(
            ckset=ckset,
            policy=policy,
            backends=backends,
            artifacts=args.artifacts,
            fallback=args.fallback,
            build_missing=tiny or args.build_missing,
            ep=args.ep,
            soc=args.soc,
            step_cache=spec,
            timings=timings,
            dit_layout=args.dit_layout,
            streaming_prefetch=args.streaming_prefetch_count,
            max_device_memory_gb=args.max_device_memory,
            offload=args.offload,
            parallel=parallel,
            quantization=args.quantization,
            quantization_skip=tuple(args.quantization_skip),
            variant=args.variant,
        )
        preflight(stack, module, args, req, two_stage)
        # Each run's prompt cache is keyed by what runs the connectors: eager, or the compiled graph's hashes.
        prompts = PromptEncoder(
            ckset,
            lambda: stack.text_connectors(req.profile()),
            args.prompt_cache or args.artifacts / "prompt-cache",
            policy.device,
            policy.dtype,
            producer=lambda: stack.producer("text_connectors", req.profile()),
            offload=args.offload != "none",
            device_log=stack.device_log,
        )
        if parallel is not None:
            prompts = BroadcastPrompts(prompts, parallel.world)
        main = parallel is None or parallel.world.is_main
        return module.run(RunContext(req, stack, prompts, timings, main=main)), timings, stack

    print(dev.describe(policy) + (f", ranks {layout.size} ({layout})" if parallel else ""), flush=True)
    if args.step_cache_search is not None:
        search_step_cache(
            lambda spec: run_pipeline(spec)[:2],
            template=step_cache if step_cache.active else StepCacheSpec(policy="auto"),
            target_psnr=args.step_cache_search,
            steps=req.num_inference_steps,
            out=args.step_cache_out,
            describe=f"{args.pipeline}, {req.num_inference_steps} steps, seed {req.seed}, {req.num_frames}x"
            f"{req.height}x{req.width}, {args.backend or 'ort'}, {str(policy.dtype).removeprefix('torch.')}",
        )
        print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return 0
    output, timings, stack = run_pipeline(step_cache)
    if parallel is not None and not parallel.world.is_main:
        return 0
    with timings.stage("write"):
        write_mp4(args.output_path, output.frames, req.frame_rate, output.audio)
        if args.raw_output is not None:
            write_raw(args.raw_output, output.frames, output.audio)
    print(f"\n{args.pipeline}: {tuple(output.frames.shape)} frames -> {args.output_path}")
    timings.backends = dict(stack.used)  # the table's last line names what ran, variants included
    print(timings.table())
    if args.timings_json:
        timings.write_json(args.timings_json)
    print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
