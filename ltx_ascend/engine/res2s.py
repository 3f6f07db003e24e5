"""The res_2s second-order sampler (exponential Runge-Kutta with SDE noise), as ltx-pipelines 1.0.0
runs it in `res2s_audio_video_denoising_loop` (utils/samplers.py, utils/res2s.py), on our
`DenoiseFn` and ltx-core's `Res2sDiffusionStep`.

Each step evaluates the denoiser at the current point and at a noised midpoint (c2 = 0.5) and
combines both with the phi-function weights; the anchor point is refined by fixed-point
("bong") iteration when the step is small. The accumulators run in the device policy's
high-precision dtype (float64 on CPU/CUDA, as the reference; float32 on NPU, which has no
float64); the step sizes h and the RK weights are host-side Python floats, as in the reference.
The SDE noise comes from two generators of their own (seeds -1 and -1 + 10000 by default,
independent of the pipeline seed), exactly as the reference draws it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
from ltx_core.components.diffusion_steps import Res2sDiffusionStep
from ltx_core.types import LatentState
from tqdm import tqdm

from ltx_ascend.engine.samplers import DenoiseFn, post_process

C2 = 0.5  # midpoint substep; the substep sigma sqrt(sigma * sigma_next) assumes it
DEFAULT_NOISE_SEED = -1
SUBSTEP_SEED_OFFSET = 10000
FINAL_SIGMA = 0.0011  # replaces a trailing 0 so that log(sigma_next / sigma) stays finite
BONG_MAX_H = 0.5
BONG_MIN_SIGMA = 0.03
BONG_ITERATIONS = 100


def phi(j: int, neg_h: float) -> float:
    """phi_j(z) = (e^z - sum_{k<j} z^k / k!) / z^j at z = -h; 1 / j! as z -> 0."""
    if abs(neg_h) < 1e-10:
        return 1.0 / math.factorial(j)
    remainder = sum(neg_h**k / math.factorial(k) for k in range(j))
    return (math.exp(neg_h) - remainder) / (neg_h**j)


def coefficients(h: float, c2: float = C2) -> tuple[float, float, float]:
    """(a21, b1, b2) of res_2s for a log-space step h = log(sigma / sigma_next)."""
    a21 = c2 * phi(1, -h * c2)
    b2 = phi(2, -h) / c2
    b1 = phi(1, -h) - b2
    return a21, b1, b2


def sde_noise(like: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Unit Gaussian noise, normalised globally, then over the last two dims (the reference's
    `_get_new_noise`), drawn on the generator's device in `dtype`."""
    noise = torch.randn(like.shape, generator=generator, dtype=dtype, device=generator.device)
    noise = (noise - noise.mean()) / noise.std()
    return noise.sub_(noise.mean(dim=(-2, -1), keepdim=True)).div_(noise.std(dim=(-2, -1), keepdim=True))


def _inject(
    state: LatentState,
    sample: torch.Tensor,
    denoised: torch.Tensor,
    sigmas: torch.Tensor,
    step: int,
    *,
    generator: torch.Generator,
    stepper: Res2sDiffusionStep,
    high_precision: torch.dtype,
    legacy_mode: bool,
) -> torch.Tensor:
    """One SDE step from `sample` towards `denoised` with fresh noise (the reference's `_inject_sde_noise`)."""
    noise = sde_noise(state.latent, generator, high_precision)
    if not legacy_mode:
        mask = state.denoise_mask.to(high_precision)
        sigmas = torch.stack([mask * sigmas[step].to(high_precision), mask * sigmas[step + 1].to(high_precision)])
        step = 0
    x_next = stepper.step(sample=sample, denoised_sample=denoised, sigmas=sigmas, step_index=step, noise=noise)
    if legacy_mode:
        x_next = post_process(x_next, state.denoise_mask, state.clean_latent)
    return x_next


def res2s_loop(
    sigmas: torch.Tensor,
    video: LatentState,
    audio: LatentState,
    denoise: DenoiseFn,
    *,
    high_precision: torch.dtype,
    model_dtype: torch.dtype,
    noise_seed: int = DEFAULT_NOISE_SEED,
    noise_seed_substep: int | None = None,
    bongmath: bool = True,
    bongmath_max_iter: int = BONG_ITERATIONS,
    legacy_mode: bool = True,
    desc: str = "res2s",
    on_step: Callable[[float], None] | None = None,
) -> tuple[LatentState, LatentState]:
    """Joint audio-video res_2s sampling over `sigmas`; returns the final (video, audio) states."""
    device = video.latent.device
    if noise_seed_substep is None:
        noise_seed_substep = noise_seed + SUBSTEP_SEED_OFFSET
    inject = partial(_inject, stepper=Res2sDiffusionStep(), high_precision=high_precision, legacy_mode=legacy_mode)
    step_noise = partial(inject, generator=torch.Generator(device=device).manual_seed(noise_seed))
    substep_noise = partial(inject, generator=torch.Generator(device=device).manual_seed(noise_seed_substep))

    n_full_steps = len(sigmas) - 1
    sigmas, hs = _log_step_sizes(sigmas)
    bong_iterations = bongmath_max_iter if bongmath else 0
    for step in tqdm(range(n_full_steps), desc=desc, leave=False):
        start = time.perf_counter()
        video, audio = _res2s_step(video, audio, denoise, sigmas, step, hs[step].item(), step_noise, substep_noise,
                                   high_precision, model_dtype, bong_iterations)  # fmt: skip
        if on_step:
            on_step(time.perf_counter() - start)

    # A schedule ending at 0: one last denoiser call at FINAL_SIGMA removes the rest of the noise.
    if sigmas[-1] == 0:
        d_v, d_a = denoise(video, audio, sigmas, n_full_steps)
        video = replace(video, latent=post_process(d_v, video.denoise_mask, video.clean_latent).to(model_dtype))
        audio = replace(audio, latent=post_process(d_a, audio.denoise_mask, audio.clean_latent).to(model_dtype))
    return video, audio


def _log_step_sizes(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedule with a trailing 0 replaced by FINAL_SIGMA, 0 (so every log step stays finite), and the
    step sizes h = log(sigma / sigma_next) on the host in float64 (the coefficients are Python floats anyway)."""
    if sigmas[-1] == 0:
        sigmas = torch.cat([sigmas[:-1], torch.tensor([FINAL_SIGMA, 0.0], device=sigmas.device)], dim=0)
    hs = -torch.log(sigmas[1:].cpu().double() / sigmas[:-1].cpu().double())
    return sigmas, hs


def _res2s_step(
    video: LatentState,
    audio: LatentState,
    denoise: DenoiseFn,
    sigmas: torch.Tensor,
    step: int,
    h: float,
    step_noise: Callable[..., torch.Tensor],
    substep_noise: Callable[..., torch.Tensor],
    high_precision: torch.dtype,
    model_dtype: torch.dtype,
    bong_iterations: int,
) -> tuple[LatentState, LatentState]:
    """One res_2s step: the denoiser at the current point and at the noised midpoint, combined with the
    phi-function weights, then SDE noise at the step level. The noise draws keep the reference's order
    (substep video, substep audio, step video, step audio)."""

    def hp(x: torch.Tensor) -> torch.Tensor:
        return x.to(high_precision)

    sigma, sigma_next = hp(sigmas[step]), hp(sigmas[step + 1])
    anchor_v, anchor_a = hp(video.latent.clone()), hp(audio.latent.clone())

    # Stage 1: the denoiser at the current point.
    d1_v, d1_a = denoise(video, audio, sigmas, step)
    d1_v = post_process(d1_v, video.denoise_mask, video.clean_latent)
    d1_a = post_process(d1_a, audio.denoise_mask, audio.clean_latent)

    a21, b1, b2 = coefficients(h, C2)
    sub_sigma = torch.sqrt(sigma * sigma_next)  # the c2 = 0.5 substep

    # The midpoint from a21, with SDE noise.
    eps1_v, eps1_a = hp(d1_v) - anchor_v, hp(d1_a) - anchor_a
    mid_v = anchor_v + h * a21 * eps1_v
    mid_a = anchor_a + h * a21 * eps1_a
    mid_sigmas = torch.stack([sigma, sub_sigma])
    mid_v = substep_noise(video, sample=anchor_v, denoised=mid_v, sigmas=mid_sigmas, step=0)
    mid_a = substep_noise(audio, sample=anchor_a, denoised=mid_a, sigmas=mid_sigmas, step=0)

    # Bong iteration: move the anchor so that the noised midpoint is consistent with it.
    if bong_iterations and h < BONG_MAX_H and sigma > BONG_MIN_SIGMA:
        for _ in range(bong_iterations):
            anchor_v = mid_v - h * a21 * eps1_v
            eps1_v = hp(d1_v) - anchor_v
            anchor_a = mid_a - h * a21 * eps1_a
            eps1_a = hp(d1_a) - anchor_a

    # Stage 2: the denoiser at the midpoint.
    d2_v, d2_a = denoise(
        replace(video, latent=mid_v.to(model_dtype)),
        replace(audio, latent=mid_a.to(model_dtype)),
        torch.stack([sub_sigma]).to(sigmas.device),
        0,
    )
    d2_v = post_process(d2_v, video.denoise_mask, video.clean_latent)
    d2_a = post_process(d2_a, audio.denoise_mask, audio.clean_latent)

    # Final combination, then SDE noise at the step level.
    eps2_v, eps2_a = hp(d2_v) - anchor_v, hp(d2_a) - anchor_a
    next_v = anchor_v + h * (b1 * eps1_v + b2 * eps2_v)
    next_a = anchor_a + h * (b1 * eps1_a + b2 * eps2_a)
    next_v = step_noise(video, sample=anchor_v, denoised=next_v, sigmas=sigmas, step=step)
    next_a = step_noise(audio, sample=anchor_a, denoised=next_a, sigmas=sigmas, step=step)
    return replace(video, latent=next_v.to(model_dtype)), replace(audio, latent=next_a.to(model_dtype))
