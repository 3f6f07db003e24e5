"""The compiled video decoder, decoding exactly the way eager ltx-core does.

ltx-core's `decode_video` decodes through `VideoDecoder.tiled_decode` (`TilingConfig.default()`):
it splits the latent into overlapping tiles, decodes each, and blends them on the host. A
static-shape graph serves one tile shape, so the exporter writes one graph per tile shape that
`tiled_decode` feeds (or the whole latent when it fits one tile). `GraphTiledDecoder` runs
ltx-core's own tiling and blending code with each tile's `forward` answered by the graph of that
tile's shape: the compiled and eager paths tile, overlap and blend identically at every size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from ltx_core.model.video_vae import VideoDecoder

from ltx_ascend.errors import UserError
from ltx_ascend.runtime.session import Session


class GraphTiledDecoder:
    """Stands in for ltx-core's `VideoDecoder` inside `decode_video`: ltx-core's tiling methods,
    our graphs per tile. The decoder graphs take no timestep and inject no noise (checked at export)."""

    # ltx-core's own tiling and blending, bound to this object (they read only the scale factors).
    tiled_decode = VideoDecoder.tiled_decode
    _prepare_tiles = VideoDecoder._prepare_tiles
    _group_tiles_by_temporal_slice = VideoDecoder._group_tiles_by_temporal_slice
    _accumulate_temporal_group_into_buffer = VideoDecoder._accumulate_temporal_group_into_buffer

    def __init__(self, sessions: Mapping[str, Session], scale_factors, device: torch.device, dtype: torch.dtype):
        self.video_downscale_factors = scale_factors
        self.device, self.dtype = device, dtype
        self.by_shape: dict[tuple[int, ...], Session] = {}
        for session in sessions.values():
            (latent,) = session.inputs
            self.by_shape[tuple(latent.shape)] = session
        self.tile_calls = 0

    def forward(self, latent: torch.Tensor, timestep=None, generator=None) -> torch.Tensor:
        del timestep, generator  # the graphs are deterministic and unconditioned (export checks it)
        session = self.by_shape.get(tuple(latent.shape))
        if session is None:
            shapes = ", ".join("x".join(map(str, s)) for s in self.by_shape)
            raise UserError(
                f"video_decoder: no compiled graph for a {'x'.join(map(str, latent.shape))} latent tile "
                f"(compiled: {shapes}): re-export the video decoder at this shape"
            )
        self.tile_calls += 1
        return session.run({"latent": latent.to(self.device, self.dtype).contiguous()})["video"]

    __call__ = forward
