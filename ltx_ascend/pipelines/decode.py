"""Latents to frames and waveform, timed as one 'decode' stage."""

from __future__ import annotations

import torch

from ltx_ascend.pipelines.context import Output, RunContext
from ltx_ascend.pipelines.media import collect_frames
from ltx_ascend.shapes import ShapeProfile


def decode(
    ctx: RunContext,
    video_latent: torch.Tensor,
    audio_latent: torch.Tensor | None,
    profile: ShapeProfile,
    generator: torch.Generator,
) -> Output:
    if not ctx.main:  # only rank 0 writes the video, so only rank 0 decodes it
        return Output(frames=torch.zeros(0, 0, 0, 3, dtype=torch.uint8), audio=None)
    with ctx.timings.stage("decode"):
        frames = collect_frames(ctx.stack.video_decoder(profile)(video_latent, generator))
        audio = ctx.stack.audio(profile)(audio_latent) if audio_latent is not None else None
    return Output(frames=frames, audio=audio)
