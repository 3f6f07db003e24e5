"""The split layout: the block graph cut at its attention cores into segments, run with the cores between.

Ulysses sequence parallel needs all-to-alls around four attention cores of every block, which no ONNX or
.om graph can hold, so the exporter (export/dit_split.py) cuts the block graph there. Each segment reads
named tensors: block inputs, the cores' outputs (`<core>.out`) and values an earlier segment computed
(`carry.<n>`); it writes the cores' `<core>.q/.k/.v` and what later segments read. The segments run on
one rank's token shard (`shard_feeds`) at a static shape; `run_segments` runs the cores between them:
with a plain core the chain is the block, with the Ulysses core it is the sequence-parallel block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from ltx_core.model.transformer.attention import AttentionFunction
from ltx_core.model.transformer.transformer import BasicAVTransformerBlock

# The attention modules whose cores Ulysses wraps: (module name, query modality, key/value modality).
# The text cross-attentions (attn2, audio_attn2) need nothing: every rank holds the whole prompt.
CORES = (
    ("attn1", "video", "video"),
    ("audio_attn1", "audio", "audio"),
    ("audio_to_video_attn", "video", "audio"),
    ("video_to_audio_attn", "audio", "video"),
)
SEGMENT_VARIANT = "segment"  # graph names dit-segment0, dit-segment1, ...


# DiT feeds with a token axis, and where it is: latents/timesteps [B, T, ...], RoPE [B, H, T, d] or [B, T, D].
TOKEN_FEEDS = {
    "video": ("video_latent", "video_timesteps"),
    "audio": ("audio_latent", "audio_timesteps"),
}
ROPE_FEEDS = {m: tuple(f"{m}_{f}" for f in ("pe_cos", "pe_sin", "cross_pe_cos", "cross_pe_sin")) for m in TOKEN_FEEDS}


def shard_feeds(feeds: Mapping[str, torch.Tensor], u: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s tokens of every per-token DiT feed; the rest (text, sigma, masks) as they are."""
    out = dict(feeds)
    for m, names in TOKEN_FEEDS.items():
        for name in names:
            out[name] = shard_tokens(feeds[name], 1, u, rank)
        for name in ROPE_FEEDS[m]:
            out[name] = shard_tokens(feeds[name], -2, u, rank)
    return out


def shard_tokens(t: torch.Tensor, dim: int, u: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s ceil(T / U) tokens along `dim`, the last shard padded with zeros at the end."""
    n = t.shape[dim]
    per = math.ceil(n / u)
    if per * u != n:
        t = torch.nn.functional.pad(t, [0, 0] * (t.ndim - 1 - dim % t.ndim) + [0, per * u - n])
    return t.narrow(dim, rank * per, per).contiguous()


def segment_prefix(kind: str = "") -> str:
    """Graph names of one block graph's segments: `dit-segment<i>`, or `dit-<kind>-segment<i>` for
    another block graph of the layout (the per-sample AdaLN one: `dit-block-sample-adaln-segment<i>`)."""
    return f"dit-{kind}-{SEGMENT_VARIANT}" if kind else f"dit-{SEGMENT_VARIANT}"


class Segment(Protocol):
    """What runs one segment: a runtime Session, or anything with its names and `run`."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


Attend = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def segment_names(names: Sequence[str], kind: str = "") -> list[str]:
    """The segment graphs among `names` (graph or session names), in order; `kind` as `segment_prefix`."""
    prefix = segment_prefix(kind)
    found = {int(n.removeprefix(prefix)): n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()}
    return [found[i] for i in sorted(found)]


def run_segments(segments: Sequence[Segment], attend: Attend, values: Mapping[str, torch.Tensor]) -> dict:
    """Every value of one block call: `values` (its inputs by name), each segment's outputs, and
    between segments `attend(core, q, k, v)` for the cores whose q/k/v the segment wrote."""
    values = dict(values)
    for segment in segments:
        values |= segment.run({n: values[n] for n in segment.input_names})
        for name in segment.output_names:
            if name.endswith(".q"):
                core = name.removesuffix(".q")
                values[f"{core}.out"] = attend(core, values[name], values[f"{core}.k"], values[f"{core}.v"])
    return values


class SegmentChain:
    """The segments and ltx-core's cores between them, behind one Segment interface (one block call)."""

    def __init__(self, segments: Sequence[Segment], block: BasicAVTransformerBlock, output_names: Sequence[str]):
        self.segments, self.attend = list(segments), plain_attend(block)
        made = {n for s in self.segments for n in s.output_names}
        made |= {n.removesuffix(".q") + ".out" for n in made if n.endswith(".q")}
        self.input_names = list(dict.fromkeys(n for s in self.segments for n in s.input_names if n not in made))
        self.output_names = list(output_names)

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            values = run_segments(self.segments, self.attend, feeds)
        return {n: values[n] for n in self.output_names}

    def close(self) -> None:
        for segment in self.segments:
            segment.close()


def plain_attend(block: BasicAVTransformerBlock) -> Attend:
    """ltx-core's own core over the tokens at hand (one device, or a check of the cut)."""
    return lambda core, q, k, v: AttentionFunction.DEFAULT(q, k, v, getattr(block, core).heads, None)
