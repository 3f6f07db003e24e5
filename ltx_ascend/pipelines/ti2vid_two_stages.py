"""Two-stage text/image-to-video: guided sampling at half size, x2 latent upsampling, then a
distilled-LoRA refinement at full size (Lightricks' TI2VidTwoStagesPipeline, on our sessions)."""

from __future__ import annotations

from ltx_core.components.noisers import GaussianNoiser

from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import ConditioningsFor, image_conditionings
from ltx_ascend.engine.context import Output, RunContext
from ltx_ascend.engine.stages import STAGE_2_DISTILLED, PipelineSpec, StageSpec
from ltx_ascend.pipelines.decode import decode

TWO_STAGE = True
# Stage 1: half size, every guidance pass of a step in one transformer call; stage 2: the distilled
# LoRA on the distilled sigma tail.
STAGES = (StageSpec("stage 1", 1, "ltx2", guidance="guided"), STAGE_2_DISTILLED)


def run(ctx: RunContext, conditionings_for: ConditioningsFor = image_conditionings) -> Output:
    """`conditionings_for(ctx, images, shape, stage)` turns --image inputs into conditioning items:
    first frame replaces latent 0, others are keyframes (keyframe_interpolation: all keyframes)."""
    req = ctx.request
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = conditionings_for(ctx, req.images, req.pixel_shape(stage=1), stage=1)
    video, audio = sampling.sampling_stage(ctx, STAGES[0], conditionings, noiser, positive, negative)
    video, audio = sampling.upsample_then_refine(
        ctx, STAGES[1], video, audio, noiser, positive, conditionings_for, loras=req.distilled_lora
    )
    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)


SPEC = PipelineSpec("ti2vid_two_stages", STAGES, run, two_stage=TWO_STAGE)
