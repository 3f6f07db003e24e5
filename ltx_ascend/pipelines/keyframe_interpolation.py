"""Keyframe interpolation: every --image becomes a guiding keyframe (tokens appended to the video
sequence at its frame index); guided sampling at half size, x2 latent upsampling, then a
distilled-LoRA refinement at full size (Lightricks' KeyframeInterpolationPipeline, on our sessions)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.conditioning import ConditioningItem, VideoConditionByKeyframeIndex
from ltx_core.types import VideoPixelShape

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines import sampling
from ltx_ascend.pipelines.context import ImageInput, Output, Request, RunContext
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.distilled import check_strengths
from ltx_ascend.pipelines.media import load_image
from ltx_ascend.pipelines.params import STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_ascend.shapes import shape_profile

TWO_STAGE = True


def check(args: argparse.Namespace, request: Request) -> None:
    if not request.images:
        raise UserError("keyframe_interpolation needs at least one --image PATH FRAME_IDX STRENGTH keyframe")
    check_strengths(request)


def keyframe_conditionings(
    ctx: RunContext, images: Sequence[ImageInput], shape: VideoPixelShape
) -> list[ConditioningItem]:
    """Every image, frame 0 included, as keyframe tokens appended to the sequence (ltx-pipelines'
    `image_conditionings_by_adding_guiding_latent`); no attention mask, as there."""
    if not images:
        return []
    encoder = ctx.stack.video_encoder(shape_profile((1, shape.height, shape.width)))
    items: list[ConditioningItem] = []
    for image in images:
        pixels = load_image(image.path, shape.height, shape.width, image.crf, ctx.dtype, ctx.device)
        items.append(
            VideoConditionByKeyframeIndex(keyframes=encoder(pixels), frame_idx=image.frame_idx, strength=image.strength)
        )
    del encoder
    return items


def run(ctx: RunContext) -> Output:
    req, stack, device = ctx.request, ctx.stack, ctx.device
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    # Stage 1: half size, every guidance pass of a step in one transformer call.
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = keyframe_conditionings(ctx, req.images, req.pixel_shape(stage=1))
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

    # Stage 2: upsample x2, keyframes again at full size, refine with the distilled LoRA.
    with ctx.timings.stage("upsample"):
        upscaled = stack.upsampler(req.profile(stage=1))(video.latent[:1])
    conditionings = keyframe_conditionings(ctx, req.images, req.pixel_shape(stage=2))
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
