"""Two-stage distilled text/image-to-video: the distilled checkpoint samples 8 steps at half size
without guidance, x2 latent upsampling, then 3 refinement steps at full size with the same
transformer (Lightricks' DistilledPipeline, on our sessions)."""

from __future__ import annotations

import argparse

from ltx_core.components.noisers import GaussianNoiser

from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import image_conditionings
from ltx_ascend.engine.context import Output, Request, RunContext
from ltx_ascend.engine.stages import STAGE_1_DISTILLED, STAGE_2_DISTILLED, PipelineSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.decode import decode

TWO_STAGE = True
# Stage 1: half size, the 8-step distilled schedule, one conditional pass a step; stage 2: the tail.
STAGES = (STAGE_1_DISTILLED, STAGE_2_DISTILLED)
DISTILLED = True  # --distilled-checkpoint-path; with no checkpoint flags the tiny checkpoint stands in
NEEDS_DISTILLED_LORA = False  # both stages run the distilled checkpoint as it is

# Flags of the guided pipelines that the distilled one has no use for (no CFG, fixed sigma tables).
_GUIDANCE_FLAGS = (
    *(f"{m}_{name}" for m in ("video", "audio") for name in ("cfg_guidance_scale", "stg_guidance_scale")),
    *(f"{m}_{name}" for m in ("video", "audio") for name in ("rescale_scale", "skip_step", "stg_blocks")),
    "a2v_guidance_scale",
    "v2a_guidance_scale",
)


def check(args: argparse.Namespace, request: Request) -> None:
    if args.distilled_lora:
        raise UserError("distilled takes no --distilled-lora: the distilled checkpoint refines stage 2 by itself")
    both = args.distilled_checkpoint_path, args.checkpoint_path
    if all(p is not None for p in both) and both[0].resolve() != both[1].resolve():
        raise UserError(
            "distilled: pass the checkpoint once, as --distilled-checkpoint-path (not also --checkpoint-path)"
        )
    given = [name for name in _GUIDANCE_FLAGS if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag}: distilled samples without guidance (no CFG/STG); drop the guidance flags")
    check_strengths(request)


def check_strengths(request: Request) -> None:
    for image in request.images:
        if not 0.0 <= image.strength <= 1.0:
            raise UserError(f"--image {image.path} {image.frame_idx} {image.strength}: STRENGTH must be in [0, 1]")


def run(ctx: RunContext) -> Output:
    req = ctx.request
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        (positive,) = ctx.prompts.encode([req.prompt])

    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, req.pixel_shape(stage=1), stage=1)
    video, audio = sampling.sampling_stage(ctx, STAGES[0], conditionings, noiser, positive)
    # Stage 2 refines with the same (distilled) transformer: no LoRA.
    video, audio = sampling.upsample_then_refine(ctx, STAGES[1], video, audio, noiser, positive, image_conditionings)
    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)


SPEC = PipelineSpec(
    "distilled",
    STAGES,
    run,
    two_stage=TWO_STAGE,
    distilled=DISTILLED,
    needs_distilled_lora=NEEDS_DISTILLED_LORA,
    check=check,
)
