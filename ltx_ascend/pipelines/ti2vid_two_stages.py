"""Two-stage text/image-to-video: guided sampling at half size, x2 latent upsampling, then a
distilled-LoRA refinement at full size (Lightricks' TI2VidTwoStagesPipeline, on our sessions)."""

from __future__ import annotations

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.schedulers import LTX2Scheduler

from ltx_ascend.pipelines import sampling
from ltx_ascend.pipelines.conditioning import image_conditionings
from ltx_ascend.pipelines.context import Output, RunContext
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.params import STAGE_2_DISTILLED_SIGMA_VALUES

TWO_STAGE = True


def run(ctx: RunContext) -> Output:
    req, stack, device, dtype = ctx.request, ctx.stack, ctx.device, ctx.dtype
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)
    stepper = EulerDiffusionStep()

    with ctx.timings.stage("prompt"):
        positive, negative = ctx.prompts.encode([req.prompt, req.negative_prompt])

    # Stage 1: half size, every guidance pass of a step in one transformer call.
    shape1 = req.pixel_shape(stage=1)
    passes = sampling.passes_per_step(req.video_guider, req.audio_guider)
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, shape1, stage=1)
    with ctx.timings.stage("stage 1") as record:
        sigmas = LTX2Scheduler().execute(steps=req.num_inference_steps).to(dtype=torch.float32, device=device)
        vtools, atools = sampling.video_tools(shape1), sampling.audio_tools(shape1)
        video = sampling.noised_state(vtools, conditionings, noiser, dtype, device)
        audio = sampling.noised_state(atools, [], noiser, dtype, device)
        # Keyframe images append tokens: the DiT graph is looked up at the conditioned token count.
        tokens = sampling.conditioning_tokens(vtools, video)
        runner = stack.dit(req.profile(stage=1, batch=passes, conditioning_tokens=tokens))
        denoise = sampling.guided_denoise(
            runner,
            positive,
            negative,
            create_multimodal_guider_factory(params=req.video_guider, negative_context=negative.video),
            create_multimodal_guider_factory(params=req.audio_guider, negative_context=negative.audio),
        )
        video, audio = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 1", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        del runner, denoise
        stack.free()

    # Stage 2: upsample x2, refine with the distilled LoRA on the distilled sigma tail.
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
        tokens = sampling.conditioning_tokens(vtools, video)
        runner = stack.dit(req.profile(stage=2, conditioning_tokens=tokens), loras=req.distilled_lora)
        denoise = sampling.simple_denoise(runner, positive)
        video, audio = sampling.euler_loop(
            sigmas, video, audio, stepper, denoise, desc="stage 2", on_step=record.steps.append
        )
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        del runner, denoise
        stack.free()

    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)
