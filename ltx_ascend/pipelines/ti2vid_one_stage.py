"""One-stage text/image-to-video: guided sampling at the output size, no upsampler or distilled LoRA.

Lightricks' TI2VidOneStagePipeline on our sessions: LTX2Scheduler sigmas, Euler steps with CFG,
STG and modality guidance, all passes of a step in one DiT call where the graph's batch holds them.
"""

from __future__ import annotations

from dataclasses import replace

from ltx_core.components.noisers import GaussianNoiser

from ltx_ascend.engine import params as P
from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import image_conditionings
from ltx_ascend.engine.context import Output, Request, RunContext
from ltx_ascend.engine.stages import PipelineSpec, StageSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.decode import decode

TWO_STAGE = False
STAGES = (StageSpec("denoise", None, "ltx2", guidance="guided"),)
NEEDS_DISTILLED_LORA = False
# ltx-pipelines' one-stage parser defaults to the LTX-2.3 settings at stage-1 size (512x768).
DEFAULTS = replace(P.LTX_2_3, height=P.LTX_2_3.height // 2, width=P.LTX_2_3.width // 2)
# Tiny set: the tiny two-stage pipelines' stage-1 size, as the real defaults are.
TINY_DEFAULTS = replace(P.TINY, height=P.TINY.height // 2, width=P.TINY.width // 2)


def check(args, request: Request) -> None:
    if request.distilled_lora:
        raise UserError("ti2vid_one_stage runs no distilled stage: drop --distilled-lora (use --lora for LoRAs)")


def run(ctx: RunContext) -> Output:
    req = ctx.request
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    with ctx.timings.stage("conditioning"):
        conditionings = image_conditionings(ctx, req.images, req.pixel_shape(), stage=None)
    video, audio = sampling.sampling_stage(ctx, STAGES[0], conditionings, noiser, positive, negative)
    return decode(ctx, video.latent, audio.latent, req.profile(), generator)


SPEC = PipelineSpec(
    "ti2vid_one_stage",
    STAGES,
    run,
    defaults=DEFAULTS,
    tiny_defaults=TINY_DEFAULTS,
    needs_distilled_lora=NEEDS_DISTILLED_LORA,
    check=check,
)
