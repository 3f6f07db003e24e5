"""Retake: regenerate the time window [--start-time, --end-time) of a source video (and of its audio)
from a prompt, keeping everything outside the window (Lightricks' RetakePipeline, on our sessions).

The output has the source's size, frame count and frame rate; its video and audio tokens outside
the window keep a zero denoise mask, so they come back as the source encoded and decoded."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.patchifiers import get_pixel_coords
from ltx_core.tools import LatentTools
from ltx_core.types import Audio, AudioLatentShape, LatentState, SpatioTemporalScaleFactors

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine import params as P
from ltx_ascend.engine import sampling
from ltx_ascend.engine.context import Output, RunContext
from ltx_ascend.engine.stages import PipelineSpec, StageSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.audio_input import decode_audio
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.video_input import load_video, probe_video
from ltx_ascend.shapes import check_pixel_shape

log = logging.getLogger(__name__)

TWO_STAGE = False
# One guided stage at the source's size over the whole clip; the window's denoise mask keeps the rest.
STAGES = (StageSpec("denoise", None, "ltx2", guidance="guided"),)
NEEDS_DISTILLED_LORA = False
# ltx-pipelines' retake CLI: seed 42, 40 steps (RetakePipeline's default), an empty negative prompt,
# the checkpoint's guidance (LTX-2.3). The size, frame count and frame rate are the source video's.
RETAKE_SEED = 42
RETAKE_STEPS = 40
RETAKE_NEGATIVE_PROMPT = ""
DEFAULTS = replace(P.LTX_2_3, seed=RETAKE_SEED, num_inference_steps=RETAKE_STEPS)
TINY_DEFAULTS = replace(P.TINY, seed=RETAKE_SEED)


@dataclass(frozen=True)
class TemporalRegionMask:
    """ltx-pipelines' retake conditioning item: denoise mask 1 on the tokens whose time span overlaps
    [start_time, end_time) seconds, 0 elsewhere (video: latent frames' pixel-frame spans / fps; audio:
    the patchifier's own seconds). Sets no attention mask."""

    start_time: float
    end_time: float
    fps: float

    def apply_to(self, latent_state: LatentState, latent_tools: LatentTools) -> LatentState:
        coords = latent_tools.patchifier.get_patch_grid_bounds(
            latent_tools.target_shape, device=latent_state.denoise_mask.device
        )
        if coords.shape[1] == 1:  # audio: bounds already in seconds
            t_start, t_end = coords[:, 0, :, 0], coords[:, 0, :, 1]
        else:  # video: latent-frame bounds -> pixel-frame bounds -> seconds
            scale_factors = getattr(latent_tools, "scale_factors", SpatioTemporalScaleFactors.default())
            pixel = get_pixel_coords(coords, scale_factors, causal_fix=getattr(latent_tools, "causal_fix", True))
            t_start, t_end = (pixel[0, 0] / self.fps).unbind(dim=-1)
        in_region = (t_end > self.start_time) & (t_start < self.end_time)
        state = latent_state.clone()
        mask = in_region.to(state.denoise_mask.dtype)
        if state.denoise_mask.dim() == 3:
            mask = mask.unsqueeze(-1)
        state.denoise_mask.copy_(mask)
        return state


def add_arguments(group) -> None:
    group.add_argument("--video-path", help="source video (8k+1 frames, sides multiples of 32) (required)")
    group.add_argument("--start-time", type=float, help="start of the window to regenerate, seconds (required)")
    group.add_argument("--end-time", type=float, help="end of the window to regenerate, seconds (required)")
    # ltx-pipelines' retake CLI spells its LoRAs `--loras PATH [PATH ...]` (each at strength 1.0).
    group.add_argument("--loras", nargs="*", default=[], metavar="PATH", help="LoRAs fused at strength 1.0")
    # ltx-pipelines' retake CLI passes no negative prompt: RetakePipeline's default, the empty prompt.
    group.set_defaults(negative_prompt=RETAKE_NEGATIVE_PROMPT)


def check(args, request) -> None:
    """The source video decodes, has 8k+1 frames and sides that are multiples of 32, and the window
    lies inside it; the request takes the source's size, frame count and frame rate."""
    if args.video_path is None:
        raise UserError("retake needs --video-path FILE: the video to retake")
    if args.start_time is None or args.end_time is None:
        raise UserError("retake needs --start-time and --end-time: the window to regenerate, in seconds")
    if request.images:
        raise UserError("retake takes no --image: it conditions on the source video")
    args.lora = [*(args.lora or []), *(LoraSpec(Path(p), P.DEFAULT_LORA_STRENGTH) for p in args.loras or [])]
    info = probe_video(args.video_path)
    try:
        check_pixel_shape(info.frames, info.height, info.width)
    except UserError as exc:
        raise UserError(f"--video-path {args.video_path}: {exc}") from None
    for flag, given, actual in (
        ("--num-frames", args.num_frames, info.frames),
        ("--height", args.height, info.height),
        ("--width", args.width, info.width),
        ("--frame-rate", args.frame_rate, info.fps),
    ):
        if given is not None and not math.isclose(given, actual, rel_tol=1e-6):
            raise UserError(f"{flag} {given:g}: retake keeps the source video's {actual:g}; drop the flag")
    start, end, duration = args.start_time, args.end_time, info.duration_s
    if not start < end:
        raise UserError(f"--start-time {start:g} must be less than --end-time {end:g}")
    if start < 0 or end > duration + 1e-6:
        raise UserError(
            f"--start-time {start:g} --end-time {end:g}: the window must lie inside the video [0, {duration:.3f}] s"
        )
    request.num_frames, request.height, request.width = info.frames, info.height, info.width
    request.frame_rate = info.fps
    audio = decode_audio(args.video_path, flag="--video-path", required=False)
    request.extra.update(video_path=args.video_path, start_time=start, end_time=end, audio=audio)


def _fit_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim or zero-pad the encoded audio along time to the video's audio latent length."""
    if latent.shape[2] > frames:
        return latent[:, :, :frames]
    if latent.shape[2] < frames:
        pad = latent.new_zeros(*latent.shape[:2], frames - latent.shape[2], latent.shape[3])
        return torch.cat([latent, pad], dim=2)
    return latent


def run(ctx: RunContext) -> Output:
    req, stack, device, dtype = ctx.request, ctx.stack, ctx.device, ctx.dtype
    if req.seed < 0:  # as ltx-pipelines: a negative seed draws one
        req.seed = int(torch.randint(0, 2**31, (1,), device=device).item())
        log.info("seed %d", req.seed)
    start, end = req.extra["start_time"], req.extra["end_time"]
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)
    shape = req.pixel_shape()

    with ctx.timings.stage("source encode"):
        pixels = load_video(req.extra["video_path"], shape.height, shape.width, shape.frames, dtype, device)
        video_latent = stack.video_encoder(req.profile())(pixels)
        del pixels
        audio_latent, audio_conditionings = None, []
        source_audio: Audio | None = req.extra["audio"]
        if source_audio is not None:
            # ltx-pipelines casts the waveform to the compute dtype before the mel spectrogram.
            wave = Audio(waveform=source_audio.waveform.to(dtype), sampling_rate=source_audio.sampling_rate)
            audio_latent = _fit_frames(
                stack.audio_encoder(req.profile())(wave), AudioLatentShape.from_video_pixel_shape(shape).frames
            )
            audio_conditionings = [TemporalRegionMask(start, end, shape.fps)]
        stack.free()

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    # The source, noised inside the window only (the window's mask), at full scale from sigma 1.
    window = [TemporalRegionMask(start, end, shape.fps)]
    video, audio = sampling.sampling_stage(
        ctx,
        STAGES[0],
        window,
        noiser,
        positive,
        negative,
        initial_video=video_latent,
        initial_audio=audio_latent,
        audio_conditionings=audio_conditionings,
        noise_scale=1.0,
    )

    return decode(ctx, video.latent, audio.latent, req.profile(), generator)


SPEC = PipelineSpec(
    "retake",
    STAGES,
    run,
    defaults=DEFAULTS,
    tiny_defaults=TINY_DEFAULTS,
    needs_distilled_lora=NEEDS_DISTILLED_LORA,
    add_arguments=add_arguments,
    check=check,
)
