"""Two-stage audio-to-video: the video follows an input audio track, which stays frozen while the
video is sampled at half size, upsampled x2 and refined with the distilled LoRA; the output mp4
carries the input audio (Lightricks' A2VidPipelineTwoStage, on our sessions)."""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuiderParams, create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.types import Audio, AudioLatentShape, LatentState

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines import sampling
from ltx_ascend.pipelines.audio_input import decode_audio, duration_s
from ltx_ascend.pipelines.conditioning import image_conditionings
from ltx_ascend.pipelines.context import Output, RunContext
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.params import STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_ascend.pipelines.text import PromptEmbeddings

TWO_STAGE = True
DECODES_AUDIO = False  # the output carries the input audio: no audio decoder or vocoder runs
# The audio is not sampled: ltx-pipelines guides it with MultiModalGuiderParams() (no CFG/STG/modality
# passes), and the --audio-*/--v2a-* guidance flags do not apply.
AUDIO_GUIDER = MultiModalGuiderParams()
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
        print(f"note: a2vid_two_stage keeps the input audio fixed; ignoring {' '.join(given)}", file=sys.stderr)
    request.extra["audio"] = audio


def _frozen_audio(atools, latent: torch.Tensor, noiser: GaussianNoiser, dtype, device) -> LatentState:
    """ltx-pipelines' `denoise_video_only` audio state: the encoded audio, noised at scale 0 (the
    generator still draws its noise), then a zero denoise mask: every audio token stays clean."""
    state = sampling.noised_state(atools, [], noiser, dtype, device, noise_scale=0.0, initial_latent=latent)
    return replace(state, denoise_mask=torch.zeros_like(state.denoise_mask))


def run(ctx: RunContext) -> Output:
    req, stack, device, dtype = ctx.request, ctx.stack, ctx.device, ctx.dtype
    audio_in: Audio = req.extra["audio"]
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)
    stepper = EulerDiffusionStep()

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])
    # The audio guider has no negative context: ltx-pipelines' unconditional pass then keeps the
    # positive audio context (the audio tokens are the same clean input in every pass).
    negative = PromptEmbeddings(video=negative.video, audio=positive.audio)

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

    # Stage 1: half size; the video is guided (all passes of a step in one call), the audio frozen.
    shape1 = req.pixel_shape(stage=1)
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, shape1, stage=1)
    with ctx.timings.stage("stage 1") as record:
        sigmas = LTX2Scheduler().execute(steps=req.num_inference_steps).to(dtype=torch.float32, device=device)
        vtools, atools = sampling.video_tools(shape1), sampling.audio_tools(shape1)
        video = sampling.noised_state(vtools, conditionings, noiser, dtype, device)
        audio = _frozen_audio(atools, audio_latent, noiser, dtype, device)
        passes = sampling.passes_per_step(req.video_guider, AUDIO_GUIDER)
        extra = sampling.conditioning_tokens(vtools, video)
        runner = stack.dit(req.profile(stage=1, batch=passes, conditioning_tokens=extra))
        denoise = sampling.guided_denoise(
            runner,
            positive,
            negative,
            create_multimodal_guider_factory(params=req.video_guider, negative_context=negative.video),
            create_multimodal_guider_factory(params=AUDIO_GUIDER),
        )
        video, _ = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 1", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        del runner, denoise
        stack.free()

    # Stage 2: upsample x2, refine the video with the distilled LoRA; the audio stays frozen.
    with ctx.timings.stage("upsample"):
        upscaled = stack.upsampler(req.profile(stage=1))(video.latent[:1])
    shape2 = req.pixel_shape(stage=2)
    conditionings = image_conditionings(ctx, req.images, shape2, stage=2)
    with ctx.timings.stage("stage 2") as record:
        sigmas = torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, device=device)
        vtools, atools = sampling.video_tools(shape2), sampling.audio_tools(shape2)
        video = sampling.noised_state(
            vtools, conditionings, noiser, dtype, device, noise_scale=sigmas[0], initial_latent=upscaled
        )
        audio = _frozen_audio(atools, audio_latent, noiser, dtype, device)
        extra = sampling.conditioning_tokens(vtools, video)
        runner = stack.dit(req.profile(stage=2, conditioning_tokens=extra), loras=req.distilled_lora)
        denoise = sampling.simple_denoise(runner, positive)
        video, _ = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 2", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        del runner, denoise
        stack.free()

    frames_out = decode(ctx, video.latent, None, req.profile(stage=2), generator).frames
    # As ltx-pipelines: the output carries the input audio itself, not the audio VAE's reconstruction.
    return Output(
        frames=frames_out, audio=Audio(waveform=audio_in.waveform.squeeze(0), sampling_rate=audio_in.sampling_rate)
    )
