"""The text connectors as a graph: Gemma hidden states in, DiT contexts out.

ltx-core's `EmbeddingsProcessor.process_hidden_states` (feature extractor, video and audio
`Embeddings1DConnector`) runs after the Gemma LLM, which stays eager. The graph takes the LLM's
hidden states stacked as [B, T, D, L] (T = `profile.text_tokens`: ltx-core's tokenizer left-pads
every prompt to 1024; D = Gemma hidden size; L = layers + 1) and the binary attention mask as
float [B, T] (1.0 = token, 0.0 = padding), and returns `video_context` [B, T, Dv],
`audio_context` [B, T, Da] and `context_mask` [B, T] (ltx-core's binary output mask, as float).
One static graph serves every prompt length: the mask is data, nothing in the graph depends on it
by shape.

Tracing hazards and how each is handled:

- Padded tokens are swapped for learnable registers with boolean indexing
  (`hidden_states[:, mask.bool(), :]`, a data-dependent shape, batch 1 only in ltx-core). At
  export time `replace_padded_with_registers_static` replaces that one method with a static-shape
  Gather that is identical for left padding (see its docstring).
- RoPE positions are `torch.arange(T)`: they do not depend on data, so the tables are constants
  of the static shape and stay inside the graph (no RoPE inputs, unlike the DiT). ltx-core's
  float64 frequency grid (numpy) is cast to float32 before any torch op, so the exporter folds
  the positions x frequencies product into one float32 constant [1, T, inner_dim/2] and only
  Cos/Sin run in the graph (torch does not fold them). No float64 initializer, Constant or
  Cast appears (the lint rejects float64 initializers and tensors).
- `.bool()`, `torch.where`, `.to(int64)` in the feature extractor and the additive mask stay
  inside the graph (Cast/Where/Not/GreaterOrEqual, all in ATC's registry at opset 18); no bool or
  int64 crosses the boundary.
- `convert_to_additive_mask` multiplies by `finfo(dtype).max`: 0 or -max, finite in float32 (and
  only compared with -9000, never added to attention scores: after register replacement the
  connectors attend over every position with an all-zero mask).
- Split RoPE's in-place `addcmul_` is replaced by `export_patches()` (ltx_ascend.export.patches),
  which `export_onnx` applies.
- ltx-core's connectors are batch-1 code (RoPE tables of batch 1 reshape the split rotation), and
  its pipelines call them once per prompt; the graph does the same per batch row (unrolled).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence

import torch
from ltx_core.text_encoders.gemma import EmbeddingsProcessor
from ltx_core.text_encoders.gemma.embeddings_connector import Embeddings1DConnector

from ltx_ascend.checkpoints.gemma import gemma_config_for_connectors, gemma_feature_dims
from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.errors import UserError
from ltx_ascend.export.items import ExportItem, seeded
from ltx_ascend.shapes import ShapeProfile

TEXT_CONNECTOR_INPUTS = ("hidden_states", "attention_mask")
TEXT_CONNECTOR_OUTPUTS = ("video_context", "audio_context", "context_mask")
# ltx-core's register test on the additive mask (0 for tokens, -finfo.max for padding).
_REGISTER_THRESHOLD = -9000.0


def replace_padded_with_registers_static(
    connector: Embeddings1DConnector, hidden_states: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Embeddings1DConnector._replace_padded_with_learnable_registers` with static shapes.

    ltx-core gathers the valid tokens with a boolean index, pads the result with zeros at the end,
    then blends with the tiled registers through the flipped mask. With left padding the n valid
    tokens are the last n, so "valid tokens first, zeros after" is the sequence rotated left by
    T - n with positions >= n zeroed: a Gather with index (arange(T) + T - n) mod T. The blend is
    ltx-core's own. Identical values for every left-padded mask (n = 0..T), per batch row (ltx-core
    handles batch 1 only). Not valid for right or interleaved padding, which ltx-core's tokenizer
    never produces (`padding_side = "left"`).
    """
    registers_count = connector.num_learnable_registers
    batch, tokens, width = hidden_states.shape
    if tokens % registers_count:
        raise ValueError(f"{tokens} text tokens must be a multiple of num_learnable_registers {registers_count}")
    # torch.tile's exporter symbolic hides the shape behind an If; repeat is the same copy as a plain Tile.
    registers = connector.learnable_registers.repeat(tokens // registers_count, 1)
    valid = (attention_mask.reshape(batch, tokens, 1) >= _REGISTER_THRESHOLD).to(hidden_states.dtype)
    count = valid.sum(dim=1).to(torch.int64)  # [B, 1]: n valid tokens per row
    positions = torch.arange(tokens, device=hidden_states.device)[None, :]
    index = (positions + tokens - count) % tokens
    rotated = torch.gather(hidden_states, 1, index.unsqueeze(-1).expand(batch, tokens, width))
    adjusted = rotated * (positions < count).unsqueeze(-1).to(hidden_states.dtype)
    flipped = torch.flip(valid, dims=[1])
    hidden_states = flipped * adjusted + (1 - flipped) * registers.to(hidden_states.dtype)
    # ltx-core returns `full_like(attention_mask, 0.0)`. The additive mask is finite (0 or -finfo.max),
    # so `mask * 0` is the same zeros, computed from the input: the graph's `context_mask` output
    # (derived from it) then stays a node output instead of being folded into a nameless initializer.
    return hidden_states, attention_mask * 0.0


@contextlib.contextmanager
def _typed_binary_mask() -> Iterator[None]:
    """ltx-core's `_to_binary_mask` multiplies the context by an int64 mask; in a bfloat16 graph the
    TorchScript exporter promotes that product through complex128 (ORT and ATC reject it). Same
    values with the mask cast to the context's dtype first."""
    from ltx_core.text_encoders.gemma import embeddings_processor as ep

    def to_binary_mask(encoded: torch.Tensor, encoded_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        binary = (encoded_mask < 0.000001).reshape([encoded.shape[0], encoded.shape[1], 1])
        return encoded * binary.to(encoded.dtype), binary.to(torch.int64)

    original = ep._to_binary_mask
    ep._to_binary_mask = to_binary_mask
    try:
        yield
    finally:
        ep._to_binary_mask = original


@contextlib.contextmanager
def static_register_replacement(processor: EmbeddingsProcessor) -> Iterator[None]:
    """Use `replace_padded_with_registers_static` in this processor's connectors (instances only)."""
    connectors = [c for c in (processor.video_connector, processor.audio_connector) if c is not None]
    for connector in connectors:
        if connector.num_learnable_registers:
            connector._replace_padded_with_learnable_registers = types.MethodType(
                replace_padded_with_registers_static, connector
            )
    try:
        yield
    finally:
        for connector in connectors:
            connector.__dict__.pop("_replace_padded_with_learnable_registers", None)


class TextConnectorsGraph(torch.nn.Module):
    """`process_hidden_states(hidden_states, attention_mask, padding_side="left")` over tensor inputs."""

    input_names = TEXT_CONNECTOR_INPUTS
    output_names = TEXT_CONNECTOR_OUTPUTS

    def __init__(self, processor: EmbeddingsProcessor) -> None:
        super().__init__()
        if processor.audio_connector is None:
            raise NotImplementedError("the text connectors graph expects LTX-2.3's audio connector")
        self.processor = processor

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        with static_register_replacement(self.processor), _typed_binary_mask():
            # ltx-core's connectors are batch-1 code (their RoPE tables have batch 1 and the split
            # rotation reshapes with it), and its pipelines call them once per prompt: do the same per row.
            for b in range(hidden_states.shape[0]):
                rows.append(
                    self.processor.process_hidden_states(
                        hidden_states[b : b + 1], attention_mask[b : b + 1], padding_side="left"
                    )
                )
        video = torch.cat([r.video_encoding for r in rows])
        audio = torch.cat([r.audio_encoding for r in rows])
        mask = torch.cat([r.attention_mask for r in rows]).to(hidden_states.dtype)
        return video, audio, mask


def eager_text_connectors(
    processor: EmbeddingsProcessor, hidden_states: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain ltx-core, as its pipelines call it: one prompt at a time, hidden states as a tuple of
    per-layer tensors and the tokenizer's int64 mask; rows are concatenated, the mask made float."""
    rows = []
    with torch.no_grad():
        for b in range(hidden_states.shape[0]):
            layers = tuple(hidden_states[b : b + 1].unbind(-1))
            rows.append(processor.process_hidden_states(layers, attention_mask[b : b + 1].to(torch.int64)))
    video = torch.cat([r.video_encoding for r in rows])
    audio = torch.cat([r.audio_encoding for r in rows])
    mask = torch.cat([r.attention_mask for r in rows]).to(hidden_states.dtype)
    return video, audio, mask


def left_padding_mask(tokens: int, valid: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[len(valid), tokens] binary mask as the tokenizer pads: row b has its last valid[b] positions set."""
    positions = torch.arange(tokens)[None, :]
    count = torch.tensor(list(valid))[:, None]
    if (count < 0).any() or (count > tokens).any():
        raise ValueError(f"valid token counts {list(valid)} must lie in 0..{tokens}")
    return (positions >= tokens - count).to(dtype)


def sample_valid_tokens(tokens: int, batch: int) -> list[int]:
    """Valid tokens per row: T/2 for the first row, then other prompt lengths (one graph, any length)."""
    choices = (tokens // 2, tokens // 5 + 3, tokens - 1, 1)
    return [choices[b % len(choices)] for b in range(batch)]


def sample_feeds(
    profile: ShapeProfile,
    hidden: int,
    num_states: int,
    *,
    valid: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Hidden states ~N(0, 1) (padding positions too, as Gemma leaves them finite) and a left-padded mask."""
    tokens = profile.text_tokens
    valid = sample_valid_tokens(tokens, profile.batch) if valid is None else list(valid)
    if len(valid) != profile.batch:
        raise ValueError(f"{len(valid)} valid-token counts for a batch of {profile.batch}")
    return {
        "hidden_states": seeded(seed, profile.batch, tokens, hidden, num_states).to(dtype),
        "attention_mask": left_padding_mask(tokens, valid, dtype),
    }


def build_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """Feature extractor + video and audio connectors as one graph at `profile.text_tokens`."""
    processor = load_component("text_connectors", ckset, dtype=dtype)
    registers = [c.num_learnable_registers for c in (processor.video_connector, processor.audio_connector) if c]
    for count in registers:
        if count and profile.text_tokens % count:
            raise UserError(
                f"--text-tokens {profile.text_tokens}: the text connectors need a multiple of their "
                f"{count} learnable registers (ltx-core pads prompts to 1024)"
            )
    hidden, num_states = gemma_feature_dims(gemma_config_for_connectors(ckset.gemma_root, ckset.checkpoint))
    valid = sample_valid_tokens(profile.text_tokens, profile.batch)
    feeds = sample_feeds(profile, hidden, num_states, valid=valid, dtype=dtype)

    def reference(f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return eager_text_connectors(processor, f["hidden_states"], f["attention_mask"])

    return [
        ExportItem(
            component="text_connectors",
            module=TextConnectorsGraph(processor).eval(),
            input_names=TEXT_CONNECTOR_INPUTS,
            output_names=TEXT_CONNECTOR_OUTPUTS,
            sample=feeds,
            reference=reference,
            notes={
                "gemma_hidden_size": hidden,
                "gemma_hidden_states": num_states,
                "num_learnable_registers": registers[0] if registers else 0,
                "sample_valid_tokens": valid,
                "padding_side": "left",
            },
        )
    ]
