"""Conditioning items from user inputs, built with ltx-core's conditioning classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ltx_core.conditioning import ConditioningItem, VideoConditionByKeyframeIndex, VideoConditionByLatentIndex
from ltx_core.types import VideoPixelShape

from ltx_ascend.engine.context import ImageInput, RunContext
from ltx_ascend.media import load_image
from ltx_ascend.shapes import shape_profile

# (ctx, images, pixel shape, stage) -> conditioning items: how a pipeline turns --image inputs into items.
ConditioningsFor = Callable[[RunContext, Sequence[ImageInput], VideoPixelShape, int | None], list[ConditioningItem]]


def image_conditionings(
    ctx: RunContext, images: Sequence[ImageInput], shape: VideoPixelShape, *, stage: int | None
) -> list[ConditioningItem]:
    """First-frame images replace latent 0; images at other frames become keyframe tokens
    (ltx-pipelines' `combined_image_conditionings`)."""
    if not images:
        return []
    encoder = ctx.stack.video_encoder(shape_profile((1, shape.height, shape.width)))
    items: list[ConditioningItem] = []
    for image in images:
        pixels = load_image(image.path, shape.height, shape.width, image.crf, ctx.dtype, ctx.device)
        latent = encoder(pixels)
        if image.frame_idx == 0:
            items.append(VideoConditionByLatentIndex(latent=latent, strength=image.strength, latent_idx=0))
        else:
            items.append(
                VideoConditionByKeyframeIndex(keyframes=latent, frame_idx=image.frame_idx, strength=image.strength)
            )
    del encoder
    return items
