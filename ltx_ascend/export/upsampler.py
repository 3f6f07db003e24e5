"""The spatial x2 latent upsampler as a graph: ltx-core's `upsample_video`, normalization folded in.

ltx-pipelines never call `LatentUpsampler.forward` alone: between stage 1 and stage 2 they call
`upsample_video(latent, video_encoder, upsampler)`, which un-normalizes the stage-1 latent with
the VAE's per-channel statistics, upsamples it, and normalizes it again. The graph is that whole
function, so it takes and returns normalized latents (what the DiT produces and consumes) and the
host does no per-channel arithmetic. `upsample_video` reads only `video_encoder.per_channel_statistics`,
so the graph holds just those two vectors, read from the checkpoint under the keys ltx-core's
encoder builder reads them from, not the whole encoder.
"""

from __future__ import annotations

import safetensors
import torch
from ltx_core.model.upsampler import LatentUpsampler, upsample_video
from ltx_core.model.video_vae import VAE_ENCODER_COMFY_KEYS_FILTER
from ltx_core.model.video_vae.ops import PerChannelStatistics

from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.errors import UserError
from ltx_ascend.export.items import ExportItem
from ltx_ascend.shapes import LATENT_CHANNELS, ShapeProfile, shape_profile

STATS_PREFIX = "per_channel_statistics."


def load_latent_statistics(ckset: CheckpointSet, dtype: torch.dtype) -> PerChannelStatistics:
    """The VAE's per-channel latent statistics as the video encoder holds them (same keys, same dtype)."""
    stats = PerChannelStatistics(latent_channels=LATENT_CHANNELS)
    wanted = {STATS_PREFIX + name for name in stats.state_dict()}
    found: dict[str, torch.Tensor] = {}
    with safetensors.safe_open(str(ckset.checkpoint), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            mapped = VAE_ENCODER_COMFY_KEYS_FILTER.apply_to_key(key)
            if mapped in wanted:
                found[mapped.removeprefix(STATS_PREFIX)] = f.get_tensor(key)
    missing = sorted(wanted - {STATS_PREFIX + k for k in found})
    if missing:
        raise UserError(
            f"{ckset.checkpoint} has no VAE latent statistics ({', '.join(missing)}): "
            "is this an LTX-2.3 file of the released layout?"
        )
    stats.load_state_dict(found)
    return stats.to(dtype=dtype).eval()


class LatentStatistics(torch.nn.Module):
    """Stands in for the video encoder in `upsample_video`, which reads only its statistics."""

    def __init__(self, per_channel_statistics: PerChannelStatistics) -> None:
        super().__init__()
        self.per_channel_statistics = per_channel_statistics


class SpatialUpsamplerGraph(torch.nn.Module):
    """`upsample_video(latent)`: normalized stage-1 latent -> normalized latent at twice the height and width."""

    input_names = ("latent",)
    output_names = ("latent_x2",)

    def __init__(self, upsampler: LatentUpsampler, statistics: LatentStatistics) -> None:
        super().__init__()
        self.upsampler = upsampler
        self.statistics = statistics

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor]:
        return (upsample_video(latent, self.statistics, self.upsampler),)


def stage_profiles(profile: ShapeProfile) -> tuple[ShapeProfile, ShapeProfile | None]:
    """(stage-1 profile, stage-2 profile) of the two-stage pipeline `profile` belongs to.

    The upsampler reads the stage-1 latent and writes the stage-2 one; either stage's profile names
    the same pipeline. A one-stage profile (stage None) is taken as the input size, with no stage 2."""
    if profile.stage is None:
        return profile, None
    scale = 2 if profile.stage == 1 else 1  # a stage-1 profile holds half the pipeline's height and width
    common = {
        "batch": profile.batch,
        "fps": profile.fps,
        "text_tokens": profile.text_tokens,
        "conditioning_tokens": profile.conditioning_tokens,
    }
    shape = (profile.frames, profile.height * scale, profile.width * scale)
    return shape_profile(shape, stage=1, **common), shape_profile(shape, stage=2, **common)


def build_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """The upsampler graph with its input at the stage-1 latent shape (a stage-2 profile is mapped to stage 1)."""
    stage1, stage2 = stage_profiles(profile)
    upsampler = load_component("spatial_upsampler", ckset, dtype=dtype)
    if upsampler.temporal_upsample or not upsampler.spatial_upsample or upsampler.spatial_scale != 2.0:
        raise NotImplementedError(
            f"only the spatial x2 upsampler is exported (this one: spatial_scale={upsampler.spatial_scale}, "
            f"temporal_upsample={upsampler.temporal_upsample})"
        )
    statistics = LatentStatistics(load_latent_statistics(ckset, dtype))
    latent = torch.randn(*stage1.video_latent_shape, generator=torch.Generator().manual_seed(2)).to(dtype)

    def reference(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        # As ltx-pipelines call it between the stages: upsample_video(latent, video_encoder, upsampler).
        with torch.no_grad():
            return (upsample_video(feeds["latent"], statistics, upsampler),)

    notes = {
        "input_latent_shape": list(stage1.video_latent_shape),
        "input_profile": stage1.key,
        "normalization": "folded in: upsample_video's un_normalize -> LatentUpsampler -> normalize",
    }
    if stage2 is not None:
        notes |= {"output_latent_shape": list(stage2.video_latent_shape), "output_profile": stage2.key}
    return [
        ExportItem(
            component="spatial_upsampler",
            module=SpatialUpsamplerGraph(upsampler, statistics).eval(),
            input_names=SpatialUpsamplerGraph.input_names,
            output_names=SpatialUpsamplerGraph.output_names,
            sample={"latent": latent},
            reference=reference,
            notes=notes,
        )
    ]
