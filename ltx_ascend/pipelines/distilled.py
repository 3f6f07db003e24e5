"""Two-stage distilled text/image-to-video: the distilled checkpoint samples 8 steps at half size
without guidance, x2 latent upsampling, then 3 refinement steps at full size with the same
transformer (Lightricks' DistilledPipeline, on our sessions)."""

from __future__ import annotations

import argparse

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.types import LatentState

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines import sampling
from ltx_ascend.pipelines.conditioning import image_conditionings
from ltx_ascend.pipelines.context import Output, Request, RunContext
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.params import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

TWO_STAGE = True
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


def require_full_attention(state: LatentState, stage: str) -> None:
    """Our DiT graphs take no self-attention mask: a conditioning that sets one cannot run on them.
    ltx-core's plain keyframe/latent items leave it None."""
    if state.attention_mask is not None:
        raise UserError(f"{stage}: this conditioning sets a self-attention mask, which ltx-run's DiT does not support")


def run(ctx: RunContext) -> Output:
    req, stack, device, dtype = ctx.request, ctx.stack, ctx.device, ctx.dtype
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)
    stepper = EulerDiffusionStep()

    with ctx.timings.stage("prompt"):
        (positive,) = ctx.prompts.encode([req.prompt])

    # Stage 1: half size, the 8-step distilled schedule, one conditional pass per step.
    shape1 = req.pixel_shape(stage=1)
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, shape1, stage=1)
    with ctx.timings.stage("stage 1") as record:
        sigmas = torch.tensor(DISTILLED_SIGMA_VALUES, device=device)
        vtools, atools = sampling.video_tools(shape1), sampling.audio_tools(shape1)
        video = sampling.noised_state(vtools, conditionings, noiser, dtype, device)
        audio = sampling.noised_state(atools, [], noiser, dtype, device)
        require_full_attention(video, "stage 1")
        tokens = sampling.conditioning_tokens(vtools, video)  # keyframe images (frame > 0) append tokens
        runner = stack.dit(req.profile(stage=1, conditioning_tokens=tokens))
        denoise = sampling.simple_denoise(runner, positive)
        video, audio = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 1", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        del runner, denoise
        stack.free()

    # Stage 2: upsample x2, refine on the distilled sigma tail with the same (distilled) transformer.
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
        audio = sampling.noised_state(
            atools, [], noiser, dtype, device, noise_scale=sigmas[0], initial_latent=audio.latent
        )
        require_full_attention(video, "stage 2")
        runner = stack.dit(req.profile(stage=2, conditioning_tokens=sampling.conditioning_tokens(vtools, video)))
        denoise = sampling.simple_denoise(runner, positive)
        video, audio = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 2", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        del runner, denoise
        stack.free()

    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)
