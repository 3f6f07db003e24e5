"""Two-stage text/image-to-video: guided sampling at half size, x2 latent upsampling, then a
distilled-LoRA refinement at full size (Lightricks' TI2VidTwoStagesPipeline, on our sessions)."""

from __future__ import annotations

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.schedulers import LTX2Scheduler

from ltx_ascend.pipelines import sampling
from ltx_ascend.pipelines.conditioning import ConditioningsFor, image_conditionings
from ltx_ascend.pipelines.context import Output, RunContext
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.params import STAGE_2_DISTILLED_SIGMA_VALUES

TWO_STAGE = True


def run(ctx: RunContext, conditionings_for: ConditioningsFor = image_conditionings) -> Output:
    """`conditionings_for(ctx, images, shape, stage)` turns --image inputs into conditioning items:
    first frame replaces latent 0, others are keyframes (keyframe_interpolation: all keyframes)."""
    req, stack, device = ctx.request, ctx.stack, ctx.device
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    # Stage 1: half size, every guidance pass of a step in one transformer call.
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = conditionings_for(ctx, req.images, req.pixel_shape(stage=1), stage=1)
    sigmas = LTX2Scheduler().execute(steps=req.num_inference_steps).to(dtype=torch.float32, device=device)
    video, audio = sampling.sampling_stage(
        ctx,
        "stage 1",
        1,
        conditionings,
        noiser,
        sigmas,
        sampling.guided(positive, negative, req.video_guider, req.audio_guider),
        passes=sampling.passes_per_step(req.video_guider, req.audio_guider),
    )

    # Stage 2: upsample x2, refine with the distilled LoRA on the distilled sigma tail.
    with ctx.timings.stage("upsample"):
        upscaled = stack.upsampler(req.profile(stage=1))(video.latent[:1])
    conditionings = conditionings_for(ctx, req.images, req.pixel_shape(stage=2), stage=2)
    video, audio = sampling.sampling_stage(
        ctx,
        "stage 2",
        2,
        conditionings,
        noiser,
        torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, device=device),
        lambda runner: sampling.simple_denoise(runner, positive),
        loras=req.distilled_lora,
        initial_video=upscaled,
        initial_audio=audio.latent,
    )
    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)
