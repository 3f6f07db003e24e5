"""Keyframe interpolation: every --image becomes a guiding keyframe (tokens appended to the video
sequence at its frame index); guided sampling at half size, x2 latent upsampling, then a
distilled-LoRA refinement at full size (Lightricks' KeyframeInterpolationPipeline, on our sessions)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ltx_core.conditioning import ConditioningItem, VideoConditionByKeyframeIndex
from ltx_core.types import VideoPixelShape

from ltx_ascend.engine.context import ImageInput, Output, Request, RunContext
from ltx_ascend.engine.stages import PipelineSpec
from ltx_ascend.errors import UserError
from ltx_ascend.media import load_image
from ltx_ascend.pipelines import ti2vid_two_stages
from ltx_ascend.pipelines.distilled import check_strengths
from ltx_ascend.shapes import shape_profile

TWO_STAGE = True
STAGES = ti2vid_two_stages.STAGES  # it runs ti2vid_two_stages with other conditioning items


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
    """ti2vid_two_stages with every image a keyframe (the reference's two pipelines differ only there)."""
    return ti2vid_two_stages.run(ctx, lambda c, images, shape, stage: keyframe_conditionings(c, images, shape))


SPEC = PipelineSpec("keyframe_interpolation", STAGES, run, two_stage=TWO_STAGE, check=check)
