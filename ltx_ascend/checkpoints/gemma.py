"""Gemma-3 text encoder and text connectors, sized from the Gemma root instead of ltx-core's 12B constant.

ltx-core 1.0.0 hard-codes the Gemma-3 12B config (`GEMMA3_CONFIG_FOR_LTX`) both for the LLM and
for the width of the feature extractor in front of the text connectors. A Gemma root carries its
own `config.json`; these configurators read it, so the released 12B root and the tiny root both
build through ltx-core's classes with the right shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from ltx_core.model.model_protocol import ModelConfigurator
from ltx_core.text_encoders.gemma import EmbeddingsProcessor, EmbeddingsProcessorConfigurator, GemmaTextEncoder
from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2
from transformers import Gemma3Config
from transformers.models.gemma3 import Gemma3ForConditionalGeneration

from ltx_ascend.errors import UserError

# What ltx-core looks up under a Gemma root (tokenizer, image processor, weights, config).
GEMMA_ROOT_FILES = ("config.json", "tokenizer.model", "preprocessor_config.json")


def validate_gemma_root(root: str | Path) -> Path:
    """Check a Gemma root has everything ltx-core and we read, before anything is loaded."""
    root = Path(root)
    fix = (
        "point --gemma-root at the Gemma-3 folder with config.json, tokenizer.model, "
        "preprocessor_config.json and model*.safetensors"
    )
    if not root.is_dir():
        raise UserError(f"Gemma root not found: {root}: {fix}")
    for name in GEMMA_ROOT_FILES:
        if not any(root.rglob(name)):
            raise UserError(f"Gemma root {root} has no {name}: {fix}")
    if not any(root.rglob("model*.safetensors")):
        raise UserError(f"Gemma root {root} has no model*.safetensors weights: {fix}")
    check_tokenizer(next(iter(sorted(root.rglob("tokenizer.model")))))
    return root


def check_tokenizer(path: Path) -> None:
    """tokenizer.model loads as a SentencePiece model (a few MB, read in milliseconds): a corrupt one is
    one line here, not a crash after the checkpoint has been read."""
    import sentencepiece

    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        if processor.get_piece_size() < 1:
            raise RuntimeError("no pieces")
    except Exception as exc:  # sentencepiece raises RuntimeError / OSError with its parser's message
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path} is not a readable SentencePiece tokenizer ({reason}): restore the Gemma root's tokenizer.model"
        ) from None


def read_gemma_config(root: str | Path | None) -> dict[str, Any]:
    """The root's config.json; without a root, ltx-core's built-in Gemma-3 12B config."""
    if root is None:
        return GEMMA3_CONFIG_FOR_LTX.to_dict()
    path = next(iter(sorted(Path(root).rglob("config.json"))), None)
    if path is None:
        raise UserError(f"Gemma root {root} has no config.json: it sizes the text encoder and the text connectors")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}): restore the Gemma root's config.json") from None


_FEATURE_WEIGHTS = (
    "text_embedding_projection.video_aggregate_embed.weight",  # V2 (LTX-2.3): [video width, D * L]
    "text_embedding_projection.aggregate_embed.weight",  # V1: [D, D * L]
)


def gemma_config_from_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """Gemma's width D and depth from the checkpoint's own feature extractor, for the text connectors
    without a Gemma root: its input is the LLM's L = layers + 1 hidden states of width D concatenated
    (D * L wide), and D is the transformer's `caption_channels` (V2) or the V1 extractor's output width."""
    import safetensors

    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        keys = set(f.keys())
        name = next((k for k in _FEATURE_WEIGHTS if k in keys), None)
        shape = f.get_slice(name).get_shape() if name else None
        config = json.loads((f.metadata() or {}).get("config", "{}"))
    caption = config.get("transformer", {}).get("caption_channels")
    if shape is None or len(shape) != 2:
        raise UserError(
            f"{checkpoint} has no text feature extractor weights ({_FEATURE_WEIGHTS[0]}): pass --gemma-root "
            "to size the text connectors"
        )
    width = shape[0] if name == _FEATURE_WEIGHTS[1] else caption
    if not width or shape[1] % int(width):
        raise UserError(
            f"{checkpoint}: the feature extractor's input width {shape[1]} is not a multiple of Gemma's width "
            f"{width}: pass --gemma-root to size the text connectors"
        )
    return {"hidden_size": int(width), "num_hidden_layers": shape[1] // int(width) - 1}


def gemma_config_for_connectors(root: str | Path | None, checkpoint: str | Path) -> dict[str, Any]:
    """The Gemma config that sizes the text connectors: the root's, or else read off the checkpoint."""
    return read_gemma_config(root) if root is not None else gemma_config_from_checkpoint(checkpoint)


def gemma_feature_dims(gemma_config: dict[str, Any]) -> tuple[int, int]:
    """(hidden size, hidden states per token) of the LLM: embeddings + every layer feed the connectors."""
    text = gemma_config.get("text_config", gemma_config)
    return int(text["hidden_size"]), int(text["num_hidden_layers"]) + 1


def _resize_feature_extractor(extractor: torch.nn.Module, hidden: int, num_states: int) -> torch.nn.Module:
    """Give ltx-core's feature extractor the input width of this Gemma (ltx-core sizes it for 12B)."""
    flat_dim = hidden * num_states
    if isinstance(extractor, FeatureExtractorV2):
        for name in ("video_aggregate_embed", "audio_aggregate_embed"):
            old = getattr(extractor, name)
            if old is not None:
                setattr(extractor, name, torch.nn.Linear(flat_dim, old.out_features, bias=old.bias is not None))
        extractor.embedding_dim = hidden
    elif isinstance(extractor, FeatureExtractorV1):
        extractor.aggregate_embed = torch.nn.Linear(flat_dim, hidden, bias=False)
    else:  # a future ltx-core variant: refuse rather than build the wrong shapes
        raise NotImplementedError(f"unknown feature extractor {type(extractor).__name__}")
    return extractor


def embeddings_processor_configurator(gemma_config: dict[str, Any]) -> type[ModelConfigurator[EmbeddingsProcessor]]:
    """ltx-core's EmbeddingsProcessorConfigurator with the feature extractor sized for this Gemma."""
    hidden, num_states = gemma_feature_dims(gemma_config)

    class _Configurator(EmbeddingsProcessorConfigurator):
        @classmethod
        def from_config(cls, config: dict) -> EmbeddingsProcessor:
            processor = super().from_config(config)
            processor.feature_extractor = _resize_feature_extractor(processor.feature_extractor, hidden, num_states)
            return processor

    _Configurator.__name__ = f"EmbeddingsProcessorConfigurator[gemma hidden={hidden} states={num_states}]"
    return _Configurator


def text_encoder_configurator(gemma_config: dict[str, Any]) -> type[ModelConfigurator[GemmaTextEncoder]]:
    """ltx-core's GemmaTextEncoderConfigurator reading the root's config instead of the 12B constant."""
    hf_config = Gemma3Config.from_dict(gemma_config)

    class _Configurator(ModelConfigurator[GemmaTextEncoder]):
        @classmethod
        def from_config(cls, config: dict) -> GemmaTextEncoder:
            with torch.device("meta"):
                model = Gemma3ForConditionalGeneration(hf_config)
            return GemmaTextEncoder(model=model)

    return _Configurator
