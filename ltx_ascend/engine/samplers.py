"""The step loops a sampling stage runs on a `DenoiseFn`: Euler here, res_2s in `res2s.py`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
from ltx_core.types import LatentState
from tqdm import tqdm

# (video state, audio state, sigmas, step) -> denoised (video, audio) latents
DenoiseFn = Callable[[LatentState, LatentState, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


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
