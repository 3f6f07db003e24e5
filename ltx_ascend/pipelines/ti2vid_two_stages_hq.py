"""Two-stage text/image-to-video with the second-order res_2s sampler (the HQ settings).

Lightricks' TI2VidTwoStagesHQPipeline on our sessions: guided res_2s sampling at half size, x2
latent upsampling, then res_2s refinement on the distilled sigma tail at full size. The distilled
LoRA is fused in both stages, at --distilled-lora-strength-stage-1 / -2 (the STRENGTH given with
--distilled-lora is not used, as in ltx-pipelines).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ltx_core.components.noisers import GaussianNoiser

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine import params as P
from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import image_conditionings
from ltx_ascend.engine.context import Output, Request, RunContext
from ltx_ascend.engine.stages import STAGE_2_DISTILLED, PipelineSpec, StageSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.decode import decode

TWO_STAGE = True
# Stage 1: half size, guided res_2s, the scheduler shifted for the stage-1 token count; stage 2:
# res_2s on the distilled sigma tail. The distilled LoRA is fused in both, at its per-stage strength.
STAGES = (
    StageSpec("stage 1", 1, "ltx2-stage-tokens", guidance="guided", sampler="res2s"),
    replace(STAGE_2_DISTILLED, sampler="res2s"),
)
DEFAULTS = P.LTX_2_3_HQ
# Tiny set: the tiny shape with the HQ step count and guidance (no STG, so no block to pick).
TINY_DEFAULTS = replace(
    P.TINY,
    num_inference_steps=P.LTX_2_3_HQ.num_inference_steps,
    video_guider=P.LTX_2_3_HQ.video_guider,
    audio_guider=P.LTX_2_3_HQ.audio_guider,
)
# ltx-pipelines' hq_2_stage_arg_parser defaults.
DISTILLED_LORA_STRENGTH_STAGE_1 = 0.25
DISTILLED_LORA_STRENGTH_STAGE_2 = 0.5


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--distilled-lora-strength-stage-1",
        type=float,
        default=DISTILLED_LORA_STRENGTH_STAGE_1,
        help=f"strength of the distilled LoRA in stage 1 (default {DISTILLED_LORA_STRENGTH_STAGE_1}); "
        "the STRENGTH given with --distilled-lora is not used",
    )
    group.add_argument(
        "--distilled-lora-strength-stage-2",
        type=float,
        default=DISTILLED_LORA_STRENGTH_STAGE_2,
        help=f"strength of the distilled LoRA in stage 2 (default {DISTILLED_LORA_STRENGTH_STAGE_2})",
    )


def check(args, request: Request) -> None:
    if request.num_inference_steps < 2:
        raise UserError(
            f"--num-inference-steps {request.num_inference_steps}: ti2vid_two_stages_hq needs >= 2 "
            "(ltx-core's LTX2Scheduler gives a NaN sigma for one step at a given latent size)"
        )
    if len(request.distilled_lora) > 1:
        raise UserError(
            f"ti2vid_two_stages_hq fuses one distilled LoRA, got {len(request.distilled_lora)} --distilled-lora "
            "flags (its strength per stage comes from --distilled-lora-strength-stage-1/2)"
        )
    request.extra["distilled_lora_strengths"] = (
        args.distilled_lora_strength_stage_1,
        args.distilled_lora_strength_stage_2,
    )


def _stage_lora(req: Request, stage: int) -> tuple[LoraSpec, ...]:
    """The one distilled LoRA at this stage's strength (the --distilled-lora strength is ignored, as
    ltx-pipelines ignores it)."""
    strengths = req.extra.get(
        "distilled_lora_strengths", (DISTILLED_LORA_STRENGTH_STAGE_1, DISTILLED_LORA_STRENGTH_STAGE_2)
    )
    return (LoraSpec(req.distilled_lora[0].path, strengths[stage - 1]),)


def run(ctx: RunContext) -> Output:
    req = ctx.request
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, req.pixel_shape(stage=1), stage=1)
    video, audio = sampling.sampling_stage(
        ctx, STAGES[0], conditionings, noiser, positive, negative, loras=_stage_lora(req, stage=1)
    )
    video, audio = sampling.upsample_then_refine(
        ctx, STAGES[1], video, audio, noiser, positive, image_conditionings, loras=_stage_lora(req, stage=2)
    )
    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)


SPEC = PipelineSpec(
    "ti2vid_two_stages_hq",
    STAGES,
    run,
    two_stage=TWO_STAGE,
    defaults=DEFAULTS,
    tiny_defaults=TINY_DEFAULTS,
    add_arguments=add_arguments,
    check=check,
)
