"""Sampling building blocks shared by the pipelines, on ltx-core's tools, noiser, steppers and guiders.

The only thing not ltx-core's is the transformer call: a `DiTRunner` that runs all guidance
passes of a step on a compiled graph (batched where the graph's batch allows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from ltx_core.components.guiders import MultiModalGuider
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.conditioning import ConditioningItem
from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType
from ltx_core.model.transformer.modality import Modality
from ltx_core.tools import AudioLatentTools, LatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, LatentState, VideoLatentShape, VideoPixelShape
from tqdm import tqdm

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.dit_runner import DiTRunner, Pass
from ltx_ascend.pipelines.text import PromptEmbeddings
from ltx_ascend.shapes import LATENT_CHANNELS

DenoiseFn = Callable[[LatentState, LatentState, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


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


def post_process(denoised: torch.Tensor, mask: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Keep conditioned tokens clean: blend the prediction with the clean latent by the mask."""
    return (denoised * mask + clean.float() * (1 - mask)).to(denoised.dtype)


def euler_loop(
    sigmas: torch.Tensor,
    video: LatentState,
    audio: LatentState,
    stepper,
    denoise: DenoiseFn,
    *,
    desc: str,
    on_step: Callable[[float], None] | None = None,
) -> tuple[LatentState, LatentState]:
    import time

    for step in tqdm(range(len(sigmas) - 1), desc=desc, leave=False):
        start = time.perf_counter()
        v, a = denoise(video, audio, sigmas, step)
        v = post_process(v, video.denoise_mask, video.clean_latent)
        a = post_process(a, audio.denoise_mask, audio.clean_latent)
        video = replace(video, latent=stepper.step(video.latent, v, sigmas, step))
        audio = replace(audio, latent=stepper.step(audio.latent, a, sigmas, step))
        if on_step:
            on_step(time.perf_counter() - start)
    return video, audio


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


def passes_per_step(video_params, audio_params) -> int:
    """How many transformer passes a guided step runs (what a batched DiT graph should hold)."""
    cfg = video_params.cfg_scale != 1.0 or audio_params.cfg_scale != 1.0
    stg = video_params.stg_scale != 0.0 or audio_params.stg_scale != 0.0
    mod = video_params.modality_scale != 1.0 or audio_params.modality_scale != 1.0
    return 1 + int(cfg) + int(stg) + int(mod)


def conditioning_tokens(tools: LatentTools, state: LatentState) -> int:
    """Tokens that conditioning items appended after the latent grid (keyframes, references): the
    `conditioning_tokens` a DiT profile for this state needs. Reads the built state, never counts by hand."""
    return state.latent.shape[1] - tools.patchifier.get_token_count(tools.target_shape)


def guided(positive: PromptEmbeddings, negative: PromptEmbeddings, video_params, audio_params):
    """`make_denoise` for `sampling_stage`: CFG / STG / modality guidance with these parameters."""
    from ltx_core.components.guiders import create_multimodal_guider_factory

    def make(runner: DiTRunner) -> DenoiseFn:
        return guided_denoise(
            runner,
            positive,
            negative,
            create_multimodal_guider_factory(params=video_params, negative_context=negative.video),
            create_multimodal_guider_factory(params=audio_params, negative_context=negative.audio),
        )

    return make


def _euler(sigmas, video, audio, denoise, *, desc, on_step):
    from ltx_core.components.diffusion_steps import EulerDiffusionStep

    return euler_loop(sigmas, video, audio, EulerDiffusionStep(), denoise, desc=desc, on_step=on_step)


def sampling_stage(
    ctx,
    name: str,
    stage: int | None,
    conditionings: Sequence[ConditioningItem],
    noiser: GaussianNoiser,
    sigmas: torch.Tensor,
    make_denoise: Callable[[DiTRunner], DenoiseFn],
    *,
    passes: int = 1,
    loras: tuple = (),
    initial_video: torch.Tensor | None = None,
    initial_audio: torch.Tensor | None = None,
    loop: Callable | None = None,
    stack=None,
) -> tuple[LatentState, LatentState]:
    """One sampling stage as the reference pipelines run it: noise video then audio (the seeded
    generator's draw order), ask for the DiT graph at the conditioned token count, run `loop`
    (Euler by default; res2s passes its own), then drop the conditioning tokens and unpatchify.
    `initial_*` (stage 2) scale the noise by sigmas[0]."""
    req, device, dtype = ctx.request, ctx.device, ctx.dtype
    stack = stack or ctx.stack
    shape = req.pixel_shape(stage=stage)
    noise_scale = sigmas[0] if initial_video is not None else 1.0
    with ctx.timings.stage(name) as record:
        vtools, atools = video_tools(shape), audio_tools(shape)
        video = noised_state(vtools, conditionings, noiser, dtype, device, noise_scale, initial_video)
        audio = noised_state(atools, [], noiser, dtype, device, noise_scale, initial_audio)
        if video.attention_mask is not None:  # ltx-core's latent and keyframe items leave it None
            raise UserError(f"{name}: this conditioning sets a self-attention mask, which the DiT graphs do not take")
        tokens = conditioning_tokens(vtools, video)
        runner = stack.dit(req.profile(stage=stage, batch=passes, conditioning_tokens=tokens), loras=loras)
        denoise = make_denoise(runner)
        video, audio = (loop or _euler)(sigmas, video, audio, denoise, desc=name, on_step=record.steps.append)
        video = vtools.unpatchify(vtools.clear_conditioning(video))
        audio = atools.unpatchify(atools.clear_conditioning(audio))
        del runner, denoise
        stack.free()
    return video, audio
