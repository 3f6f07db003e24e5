"""Latents to frames and waveform, timed as one 'decode' stage."""

from __future__ import annotations

import torch

from ltx_ascend.engine.context import Output, RunContext
from ltx_ascend.engine.parallel_decode import decoding_ranks
from ltx_ascend.media import collect_frames
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.validation import check_finite_tensor


def decode(
    ctx: RunContext,
    video_latent: torch.Tensor,
    audio_latent: torch.Tensor | None,
    profile: ShapeProfile,
    generator: torch.Generator,
) -> Output:
    """On several ranks the video's tiles are spread over them (parallel_decode) and rank 0 blends
    them; the audio decoder and vocoder (a few hundred latent frames at most) run on rank 0 alone."""
    nothing = Output(frames=torch.zeros(0, 0, 0, 3, dtype=torch.uint8), audio=None)
    parallel = ctx.stack.parallel
    world = parallel.world if parallel is not None else None
    ranks = decoding_ranks(world, video_latent.shape)
    if world is not None and world.rank >= ranks:  # only rank 0 writes, and there are not tiles for all
        return nothing
    check_finite_tensor(video_latent, "decode (video latent in)")
    check_finite_tensor(audio_latent, "decode (audio latent in)")
    with ctx.timings.stage("decode"):
        chunks = ctx.stack.video_decoder(profile, ranks)(video_latent, generator)
        if not ctx.main:
            for _ in chunks:  # this rank's tiles go to rank 0; it yields no frames
                pass
            return nothing
        frames = collect_frames(chunks)
        audio = ctx.stack.audio(profile)(audio_latent) if audio_latent is not None else None
    if audio is not None:  # here, not in the AAC encoder at the very end
        check_finite_tensor(audio.waveform, "decode (audio waveform)")
    return Output(frames=frames, audio=audio)
