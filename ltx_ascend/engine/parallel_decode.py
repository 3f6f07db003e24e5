"""The video decode's tiles spread over the ranks, blended on rank 0 as one process blends them.

ltx-core's `VideoDecoder.tiled_decode` cuts the latent into overlapping tiles (`_prepare_tiles`),
decodes them one at a time in that order (`self.forward(latent[tile.in_coords], ...)`) and blends
each into its temporal buffer. With N ranks, rank r decodes the tiles i with i % N == r on its own
decoder (ltx-core's module, or `GraphTiledDecoder`'s per-tile-shape graphs) and sends each to rank
0, which runs ltx-core's own `tiled_decode` bound to `RankTiles`: call i of its `forward` is
answered by rank 0's own decode of tile i or by the tile rank i % N sent. Same tiles, same
decoder, same blend in the same order: the frames equal one process's decode bit for bit. Rank 0
takes the tiles in the order the blend asks for them, so it holds one received tile at a time
while the other ranks decode ahead (each send waits for its receive).

Every rank decodes its tiles from its own copy of the final latent: the sampling loop leaves the
same latent on every rank (each continues it from the same gathered predictions).
A decoder that draws noise (timestep conditioning or noise injection: none in LTX-2.3's released
VAE) consumes the generator tile after tile, so it is not spread: rank 0 decodes alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from ltx_core.model.video_vae import TilingConfig, VideoDecoder

from ltx_ascend.export.video_vae import DECODER_TILING, decoder_tiles
from ltx_ascend.runtime import distributed as D


def decoding_ranks(world: D.World | None, latent_shape: tuple[int, ...], tiling: TilingConfig = DECODER_TILING) -> int:
    """How many ranks take part in decoding this latent: one tile per rank at most, rank 0 alone
    for a single process or a latent that fits one tile (the decode is then one decoder call)."""
    if world is None or world.size == 1:
        return 1
    return min(world.size, len(decoder_tiles(tuple(latent_shape), tiling)))


class RankTiles:
    """Stands in for the video decoder inside ltx-core's `decode_video`, on every decoding rank.
    Rank 0 yields the frames; the other ranks decode and send their tiles and yield nothing."""

    # ltx-core's tiling and blending, bound to this object: their `self.forward` calls come here.
    _blend = VideoDecoder.tiled_decode
    _prepare_tiles = VideoDecoder._prepare_tiles
    _group_tiles_by_temporal_slice = VideoDecoder._group_tiles_by_temporal_slice
    _accumulate_temporal_group_into_buffer = VideoDecoder._accumulate_temporal_group_into_buffer

    def __init__(self, decoder, rank: int, ranks: int) -> None:
        self.decoder = decoder  # VideoDecoder or GraphTiledDecoder: forward(latent, timestep, generator)
        self.video_downscale_factors = decoder.video_downscale_factors
        self.rank, self.ranks = rank, ranks
        self.tiles: list = []
        self.latent: torch.Tensor | None = None
        self.calls = 0
        self.decoded = 0  # tiles this rank decoded itself

    def tiled_decode(
        self,
        latent: torch.Tensor,
        tiling_config: TilingConfig | None = None,
        timestep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        self.tiles, self.latent, self.calls = self._prepare_tiles(latent, tiling_config), latent, 0
        if self.rank == 0:
            yield from self._blend(latent, tiling_config, timestep, generator)
            if self.calls != len(self.tiles):
                raise RuntimeError(f"tiled_decode asked for {self.calls} tiles, {len(self.tiles)} were planned")
            return
        for index in range(self.rank, len(self.tiles), self.ranks):
            D.send_tensor(self.decode_tile(index, timestep, generator), 0)

    def decode_tile(self, index: int, timestep, generator) -> torch.Tensor:
        self.decoded += 1
        return self.decoder.forward(self.latent[self.tiles[index].in_coords], timestep, generator)

    def forward(self, latent: torch.Tensor, timestep=None, generator=None) -> torch.Tensor:
        """Call i of ltx-core's blend (rank 0): tile i, decoded here or received from its rank."""
        index, self.calls = self.calls, self.calls + 1
        if index >= len(self.tiles) or latent.shape != self.latent[self.tiles[index].in_coords].shape:
            raise RuntimeError(f"tiled_decode call {index} asked for a {tuple(latent.shape)} tile, not the planned one")
        owner = index % self.ranks
        if owner == 0:
            return self.decode_tile(index, timestep, generator)
        return D.recv_tensor(owner, latent.device)

    __call__ = forward
