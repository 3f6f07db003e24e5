"""The component registry: one `ComponentSpec` per model part a pipeline runs.

Everything the stages need to know about a component is here, once: how it loads (the checkpoint
loader's name), how it exports (the builder export imports lazily), its graph dtype, which shape
profile its graphs are built at, what its source fingerprint covers, and how the runtime calls it
(the `ModelStack` method). Adding a component means: an entry here, its export builder module, and
its `ModelStack` method.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltx_ascend.errors import UserError
from ltx_ascend.shapes import GRAPH_SHAPE_FIELDS, ShapeProfile, shape_profile
from ltx_ascend.store import Variant, artifact_request, fingerprint_file, fingerprint_tree

# What a source fingerprint may cover.
CHECKPOINT = "checkpoint"  # the main .safetensors (every core component's weights and config)
LORAS = "loras"  # the LoRAs fused into the weights, with their strengths
UPSAMPLER_FILE = "spatial_upsampler"  # the separate upsampler .safetensors
GEMMA_CONFIG = "gemma_config"  # Gemma's config.json (the connectors' input width and depth)


@dataclass(frozen=True)
class ComponentSpec:
    """One component, for every stage."""

    name: str
    export: str | None  # "module:function" returning its ExportItems; None: it only runs eager
    runtime: str  # the ModelStack method that runs it
    source: tuple[str, ...]  # what its source fingerprint covers
    profile: str  # "dit": the stage's, with batch and conditioning tokens; "stage": the stage's, one row;
    #               "stage1": the half-size stage-1 latent (the upsampler's input)
    graph_dtype: torch.dtype | None = None  # a fixed graph dtype (the vocoder: float32), else the run's
    needs: str | None = None  # the CheckpointSet field it cannot do without, besides the checkpoint
    # How it loads from the main checkpoint: ltx-core's ("module:Configurator", "module:SD_OPS"), read by
    # checkpoints/loader.py. None: a loader of its own (text connectors: Gemma-sized; upsampler: own file).
    weights: tuple[str, str] | None = None
    # The profile fields its graphs' shapes depend on (the store keys artifacts by these alone).
    shape_fields: tuple[str, ...] = GRAPH_SHAPE_FIELDS

    def graph_dtype_for(self, dtype: torch.dtype) -> torch.dtype:
        return self.graph_dtype or dtype

    def profile_at(
        self,
        shape: tuple[int, int, int],
        stage: int | None,
        *,
        batch: int = 1,
        text_tokens: int | None = None,
        conditioning_tokens: int = 0,
    ) -> ShapeProfile:
        """The static shapes its graphs are built at for a run of `shape` at `stage`."""
        text = {} if text_tokens is None else {"text_tokens": text_tokens}
        if self.profile == "dit":
            return shape_profile(shape, stage=stage, batch=batch, conditioning_tokens=conditioning_tokens, **text)
        return shape_profile(shape, stage=1 if self.profile == "stage1" else stage, batch=1, **text)


_EXPORT = "ltx_ascend.export."
_VIDEO = ("batch", "latent_frames", "latent_height", "latent_width")  # a VAE/upsampler graph: the latent grid
_AUDIO_SHAPE = ("batch", "audio_latent_frames", "audio_mel_bins", "audio_channels")
_TEXT = ("batch", "text_tokens")
_VAE, _AUDIO = "ltx_core.model.video_vae:", "ltx_core.model.audio_vae:"
_SPECS = (
    ComponentSpec("dit", _EXPORT + "dit_layouts:build_items", "dit", (CHECKPOINT, LORAS), "dit",
                  weights=("ltx_core.model.transformer:LTXModelConfigurator",
                           "ltx_core.model.transformer:LTXV_MODEL_COMFY_RENAMING_MAP")),
    ComponentSpec("text_connectors", _EXPORT + "text_connectors:build_items", "text_connectors",
                  (CHECKPOINT, GEMMA_CONFIG), "stage", shape_fields=_TEXT),
    ComponentSpec("video_encoder", _EXPORT + "video_vae:build_encoder_items", "video_encoder", (CHECKPOINT,), "stage",
                  weights=(_VAE + "VideoEncoderConfigurator", _VAE + "VAE_ENCODER_COMFY_KEYS_FILTER"),
                  shape_fields=_VIDEO),
    ComponentSpec("spatial_upsampler", _EXPORT + "upsampler:build_items", "upsampler", (UPSAMPLER_FILE,), "stage1",
                  needs="spatial_upsampler", shape_fields=_VIDEO),
    ComponentSpec("video_decoder", _EXPORT + "video_vae:build_decoder_items", "video_decoder", (CHECKPOINT,), "stage",
                  weights=(_VAE + "VideoDecoderConfigurator", _VAE + "VAE_DECODER_COMFY_KEYS_FILTER"),
                  shape_fields=_VIDEO),
    ComponentSpec("audio_encoder", None, "audio_encoder", (CHECKPOINT,), "stage",
                  weights=(_AUDIO + "AudioEncoderConfigurator", _AUDIO + "AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER")),
    ComponentSpec("audio_decoder", _EXPORT + "audio:build_audio_decoder_items", "audio", (CHECKPOINT,), "stage",
                  weights=(_AUDIO + "AudioDecoderConfigurator", _AUDIO + "AUDIO_VAE_DECODER_COMFY_KEYS_FILTER"),
                  shape_fields=_AUDIO_SHAPE),
    ComponentSpec("vocoder", _EXPORT + "audio:build_vocoder_items", "audio", (CHECKPOINT,), "stage",
                  graph_dtype=torch.float32,
                  weights=(_AUDIO + "VocoderConfigurator", _AUDIO + "VOCODER_COMFY_KEYS_FILTER"),
                  shape_fields=_AUDIO_SHAPE),
)  # fmt: skip
REGISTRY: dict[str, ComponentSpec] = {s.name: s for s in _SPECS}
COMPONENTS = tuple(REGISTRY)  # what `--backend NAME=B` can name
EXPORTABLE = tuple(name for name, spec in REGISTRY.items() if spec.export is not None)
IN_CHECKPOINT = tuple(name for name, spec in REGISTRY.items() if spec.weights is not None)


def spec(name: str, flag: str = "--component") -> ComponentSpec:
    if name not in REGISTRY:
        raise UserError(f"{flag} {name}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


@dataclass(frozen=True)
class RandomWeights:
    """Seeded random weights at a config's sizes (`ltx-export --random-weights`, benchmarks): no files."""

    config: dict[str, Any]
    seed: int = 0


def source_fingerprint(component: str, ckset: Any, random: RandomWeights | None = None) -> dict[str, Any]:
    """What the component's weights come from (`ckset`: a CheckpointSet), as far as its spec covers."""
    if random is not None:
        config = json.dumps(random.config, sort_keys=True).encode()
        return {"random_weights": {"config_sha256": hashlib.sha256(config).hexdigest(), "seed": random.seed}}
    covers = spec(component).source
    source: dict[str, Any] = {}
    if UPSAMPLER_FILE in covers:
        if ckset.spatial_upsampler is None:
            raise UserError(f"--component {component} needs --spatial-upsampler-path")
        source["spatial_upsampler"] = fingerprint_file(ckset.spatial_upsampler)
    if CHECKPOINT in covers:
        source["checkpoint"] = fingerprint_file(ckset.checkpoint)
    if LORAS in covers:
        source["loras"] = [{**fingerprint_file(lora.path), "strength": lora.strength} for lora in ckset.loras]
    if GEMMA_CONFIG in covers and ckset.gemma_root is not None:
        source["gemma_config"] = fingerprint_tree(Path(ckset.gemma_root), ("config.json",))
    return source


def request_for(
    component: str,
    ckset: Any,
    profile: ShapeProfile,
    dtype: torch.dtype,
    variant: Variant | None = None,
    random: RandomWeights | None = None,
) -> dict[str, Any]:
    """The store request of `component` exported from `ckset` (a CheckpointSet) at `profile`."""
    source = source_fingerprint(component, ckset, random)
    return artifact_request(component, profile, dtype, source, variant or Variant(), spec(component).shape_fields)


def source_paths(component: str, ckset: Any) -> dict[str, Any]:
    """Where the files its fingerprint covers were read from: recorded beside a manifest as a hint for
    ltx-verify (which re-checks their content), never part of an artifact's identity."""
    if ckset is None:
        return {}
    covers = spec(component).source
    out: dict[str, Any] = {}
    if UPSAMPLER_FILE in covers and ckset.spatial_upsampler is not None:
        out["spatial_upsampler"] = str(Path(ckset.spatial_upsampler).resolve())
    if CHECKPOINT in covers:
        out["checkpoint"] = str(Path(ckset.checkpoint).resolve())
    if LORAS in covers:
        out["loras"] = [str(Path(lora.path).resolve()) for lora in ckset.loras]
    if GEMMA_CONFIG in covers and ckset.gemma_root is not None:
        out["gemma_root"] = str(Path(ckset.gemma_root).resolve())
    return out
