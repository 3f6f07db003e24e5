"""The video VAE as graphs: the encoder (video or image -> normalized latent) and the decoder.

Both are ltx-core modules called with one tensor, so the graph form is the module itself behind
a tuple-returning wrapper; the TorchScript exporter traces them to ops that are all in ATC's
registry, with no patch. The released LTX-2.3 decoder has `timestep_conditioning: false` and no
`inject_noise` block, so decoding is deterministic and takes the latent alone; a config with
either would need noise and timestep inputs, and we refuse it rather than bake one draw in.

Decoding long or large videos goes through ltx-core's `VideoDecoder.tiled_decode`, which feeds
the decoder one latent tile at a time (`TilingConfig.default()`: 512 px spatial tiles with 64 px
overlap, 64-frame temporal tiles with 24 frames overlap) and blends the decoded tiles on the host.
A static-shape graph serves only tiles of its own shape, and `tiled_decode` feeds tiles of up to
three lengths per axis: the first temporal tile is `64 / 8` latent frames, later ones one frame
longer (causal overlap), the last whatever remains; spatially the last tile on an axis is the
remainder. `decoder_tile_latent_shapes` lists what it feeds, computed by ltx-core's own
`VideoDecoder._prepare_tiles` over the shape alone, and `build_decoder_items` exports one graph
per distinct tile shape (variant `tile` for the first tile's shape, `tile-FxHxW` in latent
units for the others), and no untiled graph then: the runtime runs ltx-core's tiled decode with
every tile on its graph (`engine/graph_decoder.py`), so compiled and eager decode alike.
"""

from __future__ import annotations

import types
from collections import Counter

import torch
from ltx_core.model.video_vae import TilingConfig, VideoDecoder, VideoEncoder
from ltx_core.types import VIDEO_SCALE_FACTORS

from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.export.items import ExportItem
from ltx_ascend.shapes import ShapeProfile, shape_profile

VIDEO_PEAK = 2.0  # decoded video is in [-1, 1]
# The tiling ltx-pipelines decode with (every pipeline's `tiling_config = TilingConfig.default()`).
DECODER_TILING = TilingConfig.default()

Shape5D = tuple[int, int, int, int, int]


class VideoEncoderGraph(torch.nn.Module):
    """`VideoEncoder.forward(video)` -> (normalized latent means,)."""

    input_names = ("video",)
    output_names = ("latent",)

    def __init__(self, encoder: VideoEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.encoder(video),)


class VideoDecoderGraph(torch.nn.Module):
    """`VideoDecoder.forward(latent)` -> (video in [-1, 1],), for a decoder without noise or timestep."""

    input_names = ("latent",)
    output_names = ("video",)

    def __init__(self, decoder: VideoDecoder) -> None:
        super().__init__()
        check_deterministic_decoder(decoder)
        self.decoder = decoder

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.decoder(latent),)


def noise_source(decoder: VideoDecoder) -> str | None:
    """What makes the decoder's forward draw noise from the generator, or None (LTX-2.3's released VAE)."""
    if decoder.timestep_conditioning:
        return "timestep_conditioning=True (noise + decode timestep inputs)"
    noisy = [name for name, m in decoder.named_modules() if getattr(m, "inject_noise", False)]
    return f"blocks with inject_noise=True (first: {noisy[0]})" if noisy else None


def check_deterministic_decoder(decoder: VideoDecoder) -> None:
    """Refuse decoders whose forward draws noise: the graph has no noise or timestep input."""
    reason = noise_source(decoder)
    if reason is not None:
        raise NotImplementedError(
            f"video_decoder with {reason} is not exported; LTX-2.3's released VAE config has "
            "timestep_conditioning: false and no inject_noise block"
        )


def video_sample(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic video in [-1, 1]."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2.0 - 1.0


def latent_sample(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic normalized latent, ~N(0, 1) like the DiT's output."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _pixel_shape(profile: ShapeProfile) -> tuple[int, int, int, int, int]:
    return (profile.batch, 3, profile.frames, profile.height, profile.width)


def _encoder_item(encoder: VideoEncoder, profile: ShapeProfile, dtype: torch.dtype, variant: str) -> ExportItem:
    video = video_sample(_pixel_shape(profile), seed=0).to(dtype)

    def reference(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        with torch.no_grad():
            return (encoder(feeds["video"]),)

    return ExportItem(
        component="video_encoder",
        module=VideoEncoderGraph(encoder).eval(),
        input_names=VideoEncoderGraph.input_names,
        output_names=VideoEncoderGraph.output_names,
        sample={"video": video},
        reference=reference,
        variant=variant,
        notes={"pixel_shape": list(_pixel_shape(profile)), "latent_shape": list(profile.video_latent_shape)},
    )


def build_encoder_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """The encoder at the stage's video shape (video conditioning, IC-LoRA references) and, when the
    stage has more than one frame, at one frame (`image`: what image conditioning encodes; ltx-pipelines
    call `video_encoder(image)` with a [B, 3, 1, H, W] image at the stage's size)."""
    encoder = load_component("video_encoder", ckset, dtype=dtype)
    items = [_encoder_item(encoder, profile, dtype, variant="")]
    if profile.frames > 1:
        image = shape_profile((1, profile.height, profile.width), batch=profile.batch, fps=profile.fps)
        items.append(_encoder_item(encoder, image, dtype, variant="image"))
    return items


def _tiling_notes(tiling: TilingConfig) -> dict[str, int | None]:
    spatial, temporal = tiling.spatial_config, tiling.temporal_config
    return {
        "spatial_tile_px": spatial.tile_size_in_pixels if spatial else None,
        "spatial_overlap_px": spatial.tile_overlap_in_pixels if spatial else None,
        "temporal_tile_frames": temporal.tile_size_in_frames if temporal else None,
        "temporal_overlap_frames": temporal.tile_overlap_in_frames if temporal else None,
    }


def decoder_tiles(latent_shape: Shape5D, tiling: TilingConfig = DECODER_TILING) -> list:
    """ltx-core's tiles (`Tile`: in_coords, out_coords, blend_mask) for this latent, in the order
    `VideoDecoder.tiled_decode` decodes them.

    Calls ltx-core's own `VideoDecoder._prepare_tiles` (it reads only the latent's shape and the
    decoder's fixed x8/x32/x32 scale factors), on a `meta` tensor: no weights, no data.
    """
    decoder_like = types.SimpleNamespace(video_downscale_factors=VIDEO_SCALE_FACTORS)
    return VideoDecoder._prepare_tiles(decoder_like, torch.empty(latent_shape, device="meta"), tiling)


def decoder_tiles_latent_shapes(latent_shape: Shape5D, tiling: TilingConfig = DECODER_TILING) -> list[Shape5D]:
    """The latent shape of every tile `VideoDecoder.tiled_decode` feeds the decoder, in its order."""
    latent = torch.empty(latent_shape, device="meta")
    return [tuple(latent[tile.in_coords].shape) for tile in decoder_tiles(latent_shape, tiling)]


def decoder_tile_latent_shapes(profile: ShapeProfile, tiling: TilingConfig = DECODER_TILING) -> dict[Shape5D, int]:
    """Distinct tile shapes `tiled_decode` feeds for this profile -> how many tiles have it (first tile first).

    A video smaller than a tile on every axis gives one tile: the profile's full latent shape."""
    return dict(Counter(decoder_tiles_latent_shapes(profile.video_latent_shape, tiling)))


def decoder_tile_latent_shape(profile: ShapeProfile, tiling: TilingConfig = DECODER_TILING) -> Shape5D:
    """The shape of the first (corner) tile: tile size on every axis, clamped to the latent's size."""
    return next(iter(decoder_tile_latent_shapes(profile, tiling)))


def tile_variant(shape: Shape5D, first: bool) -> str:
    return "tile" if first else f"tile-{shape[2]}x{shape[3]}x{shape[4]}"


def _decoder_item(decoder: VideoDecoder, shape: Shape5D, dtype: torch.dtype, variant: str, notes: dict) -> ExportItem:
    latent = latent_sample(shape, seed=1).to(dtype)

    def reference(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        # What ltx-core's decode_video (untiled) and tiled_decode (per tile) call: timestep and generator None.
        with torch.no_grad():
            return (decoder(feeds["latent"]),)

    return ExportItem(
        component="video_decoder",
        module=VideoDecoderGraph(decoder).eval(),
        input_names=VideoDecoderGraph.input_names,
        output_names=VideoDecoderGraph.output_names,
        sample={"latent": latent},
        reference=reference,
        variant=variant,
        peak=VIDEO_PEAK,
        notes=notes,
    )


def build_decoder_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """What ltx-core's tiled decoding (`DECODER_TILING`) runs for this profile: the whole latent when it
    fits one tile, else one graph per distinct tile shape (never an untiled graph nothing would run)."""
    decoder = load_component("video_decoder", ckset, dtype=dtype)
    check_deterministic_decoder(decoder)
    full = profile.video_latent_shape
    tiling = _tiling_notes(DECODER_TILING)
    tile_shapes = decoder_tile_latent_shapes(profile)
    if list(tile_shapes) == [full]:
        notes = {"latent_shape": list(full), "pixel_shape": list(_pixel_shape(profile)), "tiling": tiling}
        return [_decoder_item(decoder, full, dtype, "", notes)]
    all_shapes = [[list(s), n] for s, n in tile_shapes.items()]
    items = []
    for i, (shape, count) in enumerate(tile_shapes.items()):
        notes = {
            "tile_latent_shape": list(shape),
            "tiles_with_this_shape": count,
            "tiles_total": sum(tile_shapes.values()),
            "all_tile_shapes": all_shapes,
            "full_latent_shape": list(full),
            "tiling": tiling,
        }
        items.append(_decoder_item(decoder, shape, dtype, tile_variant(shape, first=i == 0), notes))
    return items
