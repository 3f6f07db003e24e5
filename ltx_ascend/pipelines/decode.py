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
    with ctx.timings.stage("decode"):
        frames = collect_frames(ctx.stack.video_decoder(profile)(video_latent, generator))
        audio = ctx.stack.audio(profile)(audio_latent) if audio_latent is not None else None
    return Output(frames=frames, audio=audio)
