"""What a DiT step does differently on several devices: guidance passes split over the `cfg`
groups, tokens split over the `ulysses` ranks of a group.

Pass parallel: a guided step's passes (conditional, negative, STG, isolation) are dealt out in
contiguous chunks of ceil(n / C); each rank runs its chunk on its own graph and the X0
predictions are all-gathered, so every rank continues the sampling loop with all of them.

Ulysses: each rank holds T / U tokens of video and of audio (padded at the end to a multiple of U),
with the per-token inputs (latent, timesteps, RoPE tables) split the same way, so everything
per-token (AdaLN, projections, feed-forward, text cross-attention) runs on the shard as it would on
the whole. Around each self-attention core an all-to-all turns the token split into a head split
(every rank attends over all tokens with H / U heads) and back. An audio-video cross-attention
does the same with its queries and keys from different modalities, or, when the keys are the
few (audio keys for video queries), all-gathers the keys and values instead: whichever sends
fewer bytes; both after RoPE. Padding never reaches a real
token: the attention cores see exactly the T real tokens. ltx-core's attention modules are not
copied: the wrappers replace `Attention.attention_function` of one block module at run time.
Compiled backends run the same wrapper between the segments of the block graph split at those
cores (`attend`, dit_graph/segments.py): one Ulysses implementation for eager, ORT and om.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from ltx_core.model.transformer.attention import AttentionFunction
from ltx_core.model.transformer.transformer import BasicAVTransformerBlock

from ltx_ascend.dit_graph import segments
from ltx_ascend.runtime import distributed as D


class Parallel:
    """One rank's share of a DiT step; `DiTRunner` calls it at its pass and sequence seams."""

    def __init__(self, world: D.World) -> None:
        self.world = world
        self.cfg = world.layout.cfg
        self.ulysses = world.layout.ulysses
        self.lengths: dict[str, int] = {}  # real token count per modality, set by `shard_feeds`

    # -- guidance passes ---------------------------------------------------------------------

    def chunk(self, n: int) -> int:
        """Passes per rank for a step of `n` passes (the graph batch a rank needs)."""
        return math.ceil(n / self.cfg)

    def my_passes(self, passes: Sequence) -> list:
        k = self.chunk(len(passes))
        return list(passes[self.world.cfg_rank * k : (self.world.cfg_rank + 1) * k])

    def first_pass(self, n: int) -> int:
        """Index, in the step's pass list, of this rank's first pass (keys of per-pass state)."""
        return self.world.cfg_rank * self.chunk(n)

    def gather_passes(
        self, mine: list[tuple[torch.Tensor, torch.Tensor]], n: int, video_like: torch.Tensor, audio_like: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All ranks' (video, audio) X0 per pass, in pass order. A rank with fewer (or no) passes
        sends zeros in their place, shaped like `*_like`."""
        if self.cfg == 1:
            return mine
        k = self.chunk(n)

        def stacked(index: int, like: torch.Tensor) -> torch.Tensor:
            rows = [r[index] for r in mine] + [torch.zeros_like(like)] * (k - len(mine))
            return torch.cat(rows)

        video = D.all_gather_cat(stacked(0, video_like), self.world.cfg_group, dim=0)
        audio = D.all_gather_cat(stacked(1, audio_like), self.world.cfg_group, dim=0)
        return [(video[i : i + 1], audio[i : i + 1]) for i in range(n)]

    # -- sequence (Ulysses) ------------------------------------------------------------------

    def shard_feeds(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's tokens of every per-token feed; the rest (text, sigma, masks) as they are."""
        if self.ulysses == 1:
            return feeds
        for m, names in segments.TOKEN_FEEDS.items():
            self.lengths[m] = feeds[names[0]].shape[1]
        return segments.shard_feeds(feeds, self.ulysses, self.world.ulysses_rank)

    def gather_tokens(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The full [B, T, C] outputs from every rank's shard, padding dropped."""
        if self.ulysses == 1:
            return video, audio
        group = self.world.ulysses_group
        return (
            D.all_gather_cat(video, group, dim=1)[:, : self.lengths["video"]],
            D.all_gather_cat(audio, group, dim=1)[:, : self.lengths["audio"]],
        )

    def install(self, block: BasicAVTransformerBlock) -> None:
        """Wrap the attention cores of ltx-core's block module (every block's weights run through it)."""
        if self.ulysses == 1:
            return
        for name, q, kv in segments.CORES:
            attn = getattr(block, name)
            attn.attention_function = UlyssesAttention(attn.attention_function, self, q, kv)

    def attend(self, block: BasicAVTransformerBlock, core=None) -> segments.Attend:
        """The cores between the split block graph's segments (dit_graph/segments.py): the same
        `UlyssesAttention` around `core` (the device's fused attention, `device.attention_core`;
        ltx-core's own core when not given)."""
        inner = core or AttentionFunction.DEFAULT
        if self.ulysses == 1:
            return lambda name, q, k, v: inner(q, k, v, getattr(block, name).heads, None)
        cores = {name: UlyssesAttention(inner, self, q, kv) for name, q, kv in segments.CORES}
        return lambda core, q, k, v: cores[core](q, k, v, getattr(block, core).heads)


def _seq_to_heads(x: torch.Tensor, heads: int, u: int, group) -> torch.Tensor:
    """[S, B, T/U, H*d] (S stacked tensors) -> [S, B, T, H/U*d]: tokens gathered, heads split."""
    s, b, t, hd = x.shape
    d = hd // heads
    x = x.view(s, b, t, u, heads // u, d).permute(3, 0, 1, 2, 4, 5)  # [U (to rank), S, B, t, h, d]
    x = D.all_to_all(x, group)  # [U (from rank), S, B, t, h, d]
    return x.permute(1, 2, 0, 3, 4, 5).reshape(s, b, u * t, hd // u)


def _heads_to_seq(x: torch.Tensor, heads: int, u: int, group) -> torch.Tensor:
    """[B, T, H/U*d] -> [B, T/U, H*d]: the inverse of `_seq_to_heads`."""
    b, t, hd_u = x.shape
    x = x.view(b, u, t // u, hd_u).permute(1, 0, 2, 3)  # [U (to rank: token chunk), B, t, h*d]
    x = D.all_to_all(x, group)  # [U (from rank: head group), B, t, h*d]
    return x.permute(1, 2, 0, 3).reshape(b, t // u, u * hd_u)


def gather_kv_is_cheaper(q_tokens: int, kv_tokens: int, u: int) -> bool:
    """Per rank, all-gathering K and V sends 2 Tk/U (U-1) rows; all-to-all of q, k, v and the
    output sends (2 Tq + 2 Tk)/U (U-1)/U rows: gather when Tk (U-1) < Tq."""
    return kv_tokens * (u - 1) < q_tokens


class UlyssesAttention:
    """ltx-core's attention core over all tokens with this rank's heads (self- or A-V cross-attention)."""

    def __init__(self, inner, parallel: Parallel, q_modality: str, kv_modality: str) -> None:
        self.inner, self.parallel = inner, parallel
        self.q_modality, self.kv_modality = q_modality, kv_modality

    def __call__(self, q, k, v, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise RuntimeError("sequence-parallel attention takes no mask (the runner refuses masked states)")
        u, group = self.parallel.ulysses, self.parallel.world.ulysses_group
        nq, nk = self.parallel.lengths[self.q_modality], self.parallel.lengths[self.kv_modality]
        if self.q_modality != self.kv_modality and gather_kv_is_cheaper(nq, nk, u):
            kv = D.all_gather_cat(torch.stack((k, v)), group, dim=2)[:, :, :nk]
            return self.inner(q, kv[0], kv[1], heads, None)
        if self.q_modality == self.kv_modality:
            q, k, v = _seq_to_heads(torch.stack((q, k, v)), heads, u, group).unbind(0)
        else:
            q = _seq_to_heads(q[None], heads, u, group)[0]
            k, v = _seq_to_heads(torch.stack((k, v)), heads, u, group).unbind(0)
        out = self.inner(q[:, :nq], k[:, :nk], v[:, :nk], heads // u, None)
        out = F.pad(out, (0, 0, 0, q.shape[1] - nq))
        return _heads_to_seq(out, heads, u, group)


class BroadcastPrompts:
    """Gemma once: rank 0 encodes (or reads its prompt cache) and broadcasts the embeddings."""

    def __init__(self, encoder, world: D.World) -> None:
        self.encoder, self.world = encoder, world

    def __getattr__(self, name: str):  # hits, text_encoder_built, ... of the wrapped encoder
        return getattr(self.encoder, name)

    def encode(self, prompts: Sequence[str]) -> list:
        from ltx_ascend.engine.text import PromptEmbeddings

        mine = None
        if self.world.is_main:
            mine = [t for e in self.encoder.encode(prompts) for t in (e.video, e.audio)]
        tensors = D.broadcast_tensors(mine, self.world.device)
        return [PromptEmbeddings(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]
