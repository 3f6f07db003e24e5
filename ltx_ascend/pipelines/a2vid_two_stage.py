"""Two-stage audio-to-video: the video follows an input audio track, which stays frozen while the
video is sampled at half size, upsampled x2 and refined with the distilled LoRA; the output mp4
carries the input audio (Lightricks' A2VidPipelineTwoStage, on our sessions)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.types import Audio, AudioLatentShape, LatentState

from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import image_conditionings
from ltx_ascend.engine.context import Output, RunContext
from ltx_ascend.engine.stages import STAGE_2_DISTILLED, PipelineSpec, StageSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.audio_input import decode_audio, duration_s
from ltx_ascend.pipelines.decode import decode

log = logging.getLogger(__name__)

TWO_STAGE = True
DECODES_AUDIO = False  # the output carries the input audio: no audio decoder or vocoder runs
# Stage 1: half size, the video guided (all passes of a step in one call), the audio fixed: ltx-pipelines
# guides it with MultiModalGuiderParams() (no CFG/STG/modality passes), and the --audio-*/--v2a-*
# guidance flags do not apply. Stage 2: the distilled LoRA on the distilled tail, the audio still fixed.
STAGES = (StageSpec("stage 1", 1, "ltx2", guidance="video"), STAGE_2_DISTILLED)
_AUDIO_GUIDANCE_FLAGS = (
    "audio_cfg_guidance_scale",
    "audio_stg_guidance_scale",
    "audio_rescale_scale",
    "v2a_guidance_scale",
    "audio_skip_step",
    "audio_stg_blocks",
)


def add_arguments(group) -> None:
    group.add_argument("--audio-path", help="audio (or video) file whose audio track the video follows (required)")
    group.add_argument(
        "--audio-start-time", type=float, default=0.0, help="read the audio from this second on (default 0)"
    )
    group.add_argument(
        "--audio-max-duration",
        type=float,
        default=None,
        help="seconds of audio to read (default: the video's duration, num_frames / frame_rate)",
    )


def check(args, request) -> None:
    """The audio file decodes, is mono or stereo, and covers the video from --audio-start-time."""
    if args.audio_path is None:
        raise UserError("a2vid_two_stage needs --audio-path FILE: the audio the video is generated to")
    if args.audio_start_time < 0:
        raise UserError(f"--audio-start-time {args.audio_start_time:g}: must be >= 0")
    if args.audio_max_duration is not None and args.audio_max_duration <= 0:
        raise UserError(f"--audio-max-duration {args.audio_max_duration:g}: must be > 0")
    video_s = request.num_frames / request.frame_rate
    max_duration = args.audio_max_duration if args.audio_max_duration is not None else video_s
    audio = decode_audio(args.audio_path, start_time=args.audio_start_time, max_duration=max_duration)
    if audio.waveform.shape[-1] < round(video_s * audio.sampling_rate):
        raise UserError(
            f"--audio-path {args.audio_path}: {duration_s(audio):.3f} s of audio from {args.audio_start_time:g} s, "
            f"but the video lasts {video_s:.3f} s ({request.num_frames} frames at {request.frame_rate:g} fps): "
            "use longer audio, an earlier --audio-start-time or fewer --num-frames"
        )
    given = [f"--{name.replace('_', '-')}" for name in _AUDIO_GUIDANCE_FLAGS if getattr(args, name) is not None]
    if given:
        log.warning("note: a2vid_two_stage keeps the input audio fixed; ignoring %s", " ".join(given))
    request.extra["audio"] = audio


class FixedLatent:
    """ltx-pipelines' `denoise_video_only` audio: a conditioning item that zeroes the denoise mask, so
    every token keeps its initial latent (the encoded audio); the noiser still draws its noise."""

    def apply_to(self, latent_state: LatentState, latent_tools) -> LatentState:
        return replace(latent_state, denoise_mask=torch.zeros_like(latent_state.denoise_mask))


def run(ctx: RunContext) -> Output:
    req, stack = ctx.request, ctx.stack
    audio_in: Audio = req.extra["audio"]
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    with ctx.timings.stage("audio encode"):
        latent = stack.audio_encoder(req.profile(stage=1))(audio_in)  # float32, as ltx-pipelines
        frames = AudioLatentShape.from_duration(batch=1, duration=req.num_frames / req.frame_rate).frames
        if latent.shape[2] < frames:
            raise UserError(
                f"--audio-path: the audio encodes to {latent.shape[2]} latent frames, the video needs {frames}"
            )
        audio_latent = latent[:, :, :frames]
        del latent
        stack.free()
    fixed_audio = {"initial_audio": audio_latent, "audio_conditionings": [FixedLatent()]}

    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, req.pixel_shape(stage=1), stage=1)
    video, audio = sampling.sampling_stage(ctx, STAGES[0], conditionings, noiser, positive, negative, **fixed_audio)
    video, _ = sampling.upsample_then_refine(
        ctx, STAGES[1], video, audio, noiser, positive, image_conditionings, loras=req.distilled_lora, **fixed_audio
    )

    frames_out = decode(ctx, video.latent, None, req.profile(stage=2), generator).frames
    # As ltx-pipelines: the output carries the input audio itself, not the audio VAE's reconstruction.
    return Output(
        frames=frames_out, audio=Audio(waveform=audio_in.waveform.squeeze(0), sampling_rate=audio_in.sampling_rate)
    )


SPEC = PipelineSpec(
    "a2vid_two_stage",
    STAGES,
    run,
    two_stage=TWO_STAGE,
    decodes_audio=DECODES_AUDIO,
    add_arguments=add_arguments,
    check=check,
)
