"""Sampling on ltx-core's tools, noiser, steppers and guiders: `sampling_stage` runs every stage of
every pipeline from its declaration (`stages.StageSpec`), `upsample_then_refine` is every two-stage
pipeline's stage 2.

The only thing not ltx-core's is the transformer call: a `DiTRunner` that runs all guidance
passes of a step on a compiled graph (batched where the graph's batch allows).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep
from ltx_core.components.guiders import MultiModalGuider, create_multimodal_guider_factory
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.conditioning import ConditioningItem
from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType
from ltx_core.model.transformer.modality import Modality
from ltx_core.tools import AudioLatentTools, LatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, LatentState, VideoLatentShape, VideoPixelShape

from ltx_ascend.engine import res2s
from ltx_ascend.engine.conditioning import ConditioningsFor
from ltx_ascend.engine.dit_runner import DiTRunner, Pass
from ltx_ascend.engine.samplers import DenoiseFn, euler_loop
from ltx_ascend.engine.stages import FIXED_AUDIO_GUIDER, StageSpec
from ltx_ascend.engine.text import PromptEmbeddings
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import LATENT_CHANNELS
from ltx_ascend.validation import check_finite_tensor


def video_tools(shape: VideoPixelShape) -> VideoLatentTools:
    latent = VideoLatentShape.from_pixel_shape(shape, latent_channels=LATENT_CHANNELS)
    return VideoLatentTools(VideoLatentPatchifier(patch_size=1), latent, shape.fps)


def audio_tools(shape: VideoPixelShape) -> AudioLatentTools:
    return AudioLatentTools(AudioPatchifier(patch_size=1), AudioLatentShape.from_video_pixel_shape(shape))


def noised_state(
    tools: LatentTools,
    conditionings: Sequence[ConditioningItem],
    noiser: GaussianNoiser,
    dtype: torch.dtype,
    device: torch.device,
    noise_scale: float = 1.0,
    initial_latent: torch.Tensor | None = None,
) -> LatentState:
    """Empty (or initial) state, conditionings applied, then noise: ltx-pipelines' order."""
    state = tools.create_initial_state(device, dtype, initial_latent)
    for item in conditionings:
        state = item.apply_to(latent_state=state, latent_tools=tools)
    return noiser(state, noise_scale)


def modality(state: LatentState, context: torch.Tensor, sigma: torch.Tensor) -> Modality:
    return Modality(
        latent=state.latent,
        sigma=sigma,
        timesteps=state.denoise_mask * sigma,
        positions=state.positions,
        context=context,
        attention_mask=state.attention_mask,
    )


def simple_denoise(runner: DiTRunner, prompt: PromptEmbeddings) -> DenoiseFn:
    """One conditional pass per step (distilled / stage-2 sampling)."""

    def fn(video: LatentState, audio: LatentState, sigmas: torch.Tensor, step: int):
        sigma = sigmas[step]
        ((v, a),) = runner(
            modality(video, prompt.video, sigma),
            modality(audio, prompt.audio, sigma),
            [Pass(PerturbationConfig.empty(), prompt.video, prompt.audio)],
        )
        return v, a

    return fn


def guided_denoise(
    runner: DiTRunner,
    positive: PromptEmbeddings,
    negative: PromptEmbeddings,
    video_guider_factory,
    audio_guider_factory,
) -> DenoiseFn:
    """CFG, STG and modality isolation as ltx-pipelines' multimodal guider runs them, with every
    pass of a step sent to the transformer together."""
    last: list[torch.Tensor | None] = [None, None]

    def fn(video: LatentState, audio: LatentState, sigmas: torch.Tensor, step: int):
        sigma_value = float(sigmas[step])
        vg: MultiModalGuider = video_guider_factory.build_from_sigma(sigma_value)
        ag: MultiModalGuider = audio_guider_factory.build_from_sigma(sigma_value)
        if vg.should_skip_step(step) and ag.should_skip_step(step):
            return last[0], last[1]
        sigma = sigmas[step]
        passes = [Pass(PerturbationConfig.empty(), positive.video, positive.audio)]
        kinds = ["cond"]
        if vg.do_unconditional_generation() or ag.do_unconditional_generation():
            passes.append(Pass(PerturbationConfig.empty(), negative.video, negative.audio, "uncond"))
            kinds.append("uncond")
        if vg.do_perturbed_generation() or ag.do_perturbed_generation():
            perturbations = []
            if vg.do_perturbed_generation():
                perturbations.append(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, vg.params.stg_blocks))
            if ag.do_perturbed_generation():
                perturbations.append(Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, ag.params.stg_blocks))
            passes.append(Pass(PerturbationConfig(perturbations), positive.video, positive.audio, "ptb"))
            kinds.append("ptb")
        if vg.do_isolated_modality_generation() or ag.do_isolated_modality_generation():
            isolate = [
                Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
            ]
            passes.append(Pass(PerturbationConfig(isolate), positive.video, positive.audio, "mod"))
            kinds.append("mod")
        results = runner(modality(video, positive.video, sigma), modality(audio, positive.audio, sigma), passes)
        outs = dict(zip(kinds, results, strict=True))
        zero = (0.0, 0.0)
        v = vg.calculate(outs["cond"][0], *(outs.get(k, zero)[0] for k in ("uncond", "ptb", "mod")))
        a = ag.calculate(outs["cond"][1], *(outs.get(k, zero)[1] for k in ("uncond", "ptb", "mod")))
        if vg.should_skip_step(step):
            v = last[0]
        if ag.should_skip_step(step):
            a = last[1]
        last[0], last[1] = v, a
        return v, a

    return fn


def conditioning_tokens(tools: LatentTools, state: LatentState) -> int:
    """Tokens that conditioning items appended after the latent grid (keyframes, references): the
    `conditioning_tokens` a DiT profile for this state needs. Reads the built state, never counts by hand."""
    return state.latent.shape[1] - tools.patchifier.get_token_count(tools.target_shape)


def stage_denoise(
    spec: StageSpec, runner: DiTRunner, req, positive: PromptEmbeddings, negative: PromptEmbeddings | None
) -> DenoiseFn:
    """The denoiser of a stage's declared guidance, on `runner`."""
    if spec.guidance == "none":
        return simple_denoise(runner, positive)
    if spec.guidance == "guided":
        return guided_denoise(
            runner,
            positive,
            negative,
            create_multimodal_guider_factory(params=req.video_guider, negative_context=negative.video),
            create_multimodal_guider_factory(params=req.audio_guider, negative_context=negative.audio),
        )
    # "video": the audio guider has no negative context, so ltx-pipelines' unconditional pass keeps the
    # positive audio context (the audio tokens are the same fixed input in every pass).
    return guided_denoise(
        runner,
        positive,
        PromptEmbeddings(video=negative.video, audio=positive.audio),
        create_multimodal_guider_factory(params=req.video_guider, negative_context=negative.video),
        create_multimodal_guider_factory(params=FIXED_AUDIO_GUIDER),
    )


def _loop(spec: StageSpec, ctx, stack):
    """The step loop of the stage's sampler: Euler, or res_2s in the device policy's high precision."""
    if spec.sampler == "res2s":
        return functools.partial(
            res2s.res2s_loop, high_precision=stack.policy.high_precision_dtype, model_dtype=ctx.dtype
        )
    return functools.partial(euler_loop, stepper=EulerDiffusionStep())


def _open_dit(stack, req, spec: StageSpec, passes: int, loras: tuple, vtools, video: LatentState, masked: str | None):
    """The DiT for this state: the compiled graph at its conditioned token count, or, for a state that
    carries a real self-attention mask (no compiled graph takes one), ltx-core's transformer eager
    when the pipeline says why (`masked`), else a one-line refusal."""
    mask = video.attention_mask
    if mask is not None and bool((mask == 1).all()):  # all-ones: the same as full attention
        video = replace(video, attention_mask=None)
    if video.attention_mask is None:
        tokens = conditioning_tokens(vtools, video)
        profile = req.profile(stage=spec.stage, batch=passes, conditioning_tokens=tokens)
        return stack.dit(profile, loras=loras), video
    if masked is None:
        raise UserError(f"{spec.name}: this conditioning sets a self-attention mask, which the DiT graphs do not take")
    return stack.dit_attention_masked(loras, reason=masked, stage=spec.stage), video


def sampling_stage(
    ctx,
    spec: StageSpec,
    conditionings: Sequence[ConditioningItem],
    noiser: GaussianNoiser,
    positive: PromptEmbeddings,
    negative: PromptEmbeddings | None = None,
    *,
    loras: tuple = (),
    initial_video: torch.Tensor | None = None,
    initial_audio: torch.Tensor | None = None,
    audio_conditionings: Sequence[ConditioningItem] = (),
    noise_scale: float | None = None,
    attention_masked: str | None = None,
    stack=None,
) -> tuple[LatentState, LatentState]:
    """Run one declared stage as the reference pipelines run it: noise video then audio (the seeded
    generator's draw order), open the DiT graph at the conditioned token count and the declared
    guidance's pass count, run the declared sampler over the declared schedule, then drop the
    conditioning tokens and unpatchify.

    Hooks for what the pipelines add: `initial_*` start from a latent (stage 2, retake's source);
    the noise is then scaled by sigmas[0] unless `noise_scale` says otherwise; `audio_conditionings`
    act on the audio state (retake's time window, a2vid's fixed audio); `attention_masked` names why
    the video state may carry a self-attention mask (IC-LoRA), which then runs the DiT eager."""
    req, device, dtype = ctx.request, ctx.device, ctx.dtype
    stack = stack or ctx.stack
    shape = req.pixel_shape(stage=spec.stage)
    planned = spec.plan(req.num_inference_steps, req.video_guider, req.audio_guider)
    passes = planned.passes
    with ctx.timings.stage(spec.name, planned) as record:
        sigmas = spec.sigmas(req.num_inference_steps, shape, device)
        if noise_scale is None:
            noise_scale = sigmas[0] if initial_video is not None else 1.0
        vtools, atools = video_tools(shape), audio_tools(shape)
        video = noised_state(vtools, conditionings, noiser, dtype, device, noise_scale, initial_video)
        audio = noised_state(atools, audio_conditionings, noiser, dtype, device, noise_scale, initial_audio)
        runner, video = _open_dit(stack, req, spec, passes, loras, vtools, video, attention_masked)
        denoise = stage_denoise(spec, runner, req, positive, negative)
        def on_step(seconds: float) -> None:
            record.steps.append(seconds)
            ctx.step_done(spec.name, len(record.steps), planned.steps)  # may raise Cancelled

        video, audio = _loop(spec, ctx, stack)(sigmas, video, audio, denoise=denoise, desc=spec.name, on_step=on_step)
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        check_finite_tensor(video.latent, f"{spec.name} (video latent)")  # where it appears, named
        check_finite_tensor(audio.latent, f"{spec.name} (audio latent)")
        del runner, denoise
        stack.free()
    return video, audio


def upsample_then_refine(
    ctx,
    spec: StageSpec,
    video: LatentState,
    audio: LatentState,
    noiser: GaussianNoiser,
    positive: PromptEmbeddings,
    conditionings_for: ConditioningsFor,
    **stage_options,
) -> tuple[LatentState, LatentState]:
    """Stage 2 of every two-stage pipeline: ltx-core's x2 latent upsampler on stage 1's video, the
    images conditioned again at full size, then `spec` (the distilled tail, one pass a step) from
    the upsampled video and stage 1's audio, noised to the first sigma. `stage_options` go to
    `sampling_stage` (loras, the stack, a2vid's fixed audio)."""
    req = ctx.request
    with ctx.timings.stage("upsample"):
        upscaled = ctx.stack.upsampler(req.profile(stage=1))(video.latent[:1])
    check_finite_tensor(upscaled, "upsample (video latent)")
    conditionings = conditionings_for(ctx, req.images, req.pixel_shape(stage=2), stage=2)
    stage_options.setdefault("initial_audio", audio.latent)
    return sampling_stage(ctx, spec, conditionings, noiser, positive, initial_video=upscaled, **stage_options)
