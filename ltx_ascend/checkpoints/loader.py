"""Load LTX-2.3 components from released files through ltx-core's own builders and SD ops.

One component at a time: each builder reads only the tensors under its key prefix, so no more
than one component's weights are in memory at once (the caller drops a module before asking for
the next). LoRAs are fused by ltx-core's `apply_loras` inside the builder.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps, SingleGPUModelBuilder
from ltx_core.model.transformer import LTXV_MODEL_COMFY_RENAMING_MAP
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from ltx_core.text_encoders.gemma import (
    EMBEDDINGS_PROCESSOR_KEY_OPS,
    GEMMA_LLM_KEY_OPS,
    GEMMA_MODEL_OPS,
    module_ops_from_gemma_root,
)

from ltx_ascend.checkpoints.gemma import (
    embeddings_processor_configurator,
    gemma_config_for_connectors,
    read_gemma_config,
    text_encoder_configurator,
    validate_gemma_root,
)
from ltx_ascend.components import REGISTRY
from ltx_ascend.errors import UserError
from ltx_ascend.validation import check_finite_safetensors

# What the loader can build: the registry's components, plus Gemma's text encoder (its own path).
ALL_COMPONENTS = (*REGISTRY, "text_encoder")


def _from_ltx_core(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def configurator_of(component: str) -> Any:
    """ltx-core's model configurator of a main-checkpoint component (the registry names it)."""
    spec = REGISTRY.get(component)
    if spec is None or spec.weights is None:
        raise ValueError(f"{component} is not a module of the main checkpoint")
    return _from_ltx_core(spec.weights[0])


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the strength it is fused with."""

    path: Path
    strength: float

    def to_ltx(self) -> LoraPathStrengthAndSDOps:
        return LoraPathStrengthAndSDOps(str(self.path), self.strength, LTXV_LORA_COMFY_RENAMING_MAP)


@dataclass(frozen=True)
class CheckpointSet:
    """The files one LTX-2.3 run reads: the core checkpoint, optional upsampler, Gemma root and LoRAs."""

    checkpoint: Path
    gemma_root: Path | None = None
    spatial_upsampler: Path | None = None
    loras: tuple[LoraSpec, ...] = field(default_factory=tuple)

    def with_loras(self, loras: Iterable[LoraSpec]) -> CheckpointSet:
        return CheckpointSet(self.checkpoint, self.gemma_root, self.spatial_upsampler, tuple(loras))


def read_safetensors_metadata(path: str | Path, what: str = "checkpoint") -> dict[str, str]:
    """The header metadata of a .safetensors file, with one-line errors for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (pass an existing .safetensors path, or run `ltx-tiny --out DIR`)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UserError(
            f"{what} {path} is not a readable .safetensors file ({exc}); pass the released file, or download it again"
        ) from None


def read_model_config(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The `config` metadata ltx-core builds every model from; refuse files without it."""
    meta = read_safetensors_metadata(path, what)
    if "config" not in meta:
        raise UserError(
            f"{what} {path} has no `config` metadata: ltx-core reads the model config from it; "
            "use the released LTX-2.3 file (or one saved with its metadata)"
        )
    try:
        return json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path}: its `config` metadata is not valid JSON ({exc.msg})") from None


# What our code reads from the transformer config (ltx-core defaults the rest to the 22B's values).
TRANSFORMER_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "audio_num_attention_heads",
                    "audio_attention_head_dim")  # fmt: skip
UPSAMPLER_SCALE = 2.0  # every two-stage pipeline's stage 2 is twice stage 1's size


def transformer_config(config: Any, where: str) -> dict[str, Any]:
    """The `transformer` section of an LTX-2.3 config, its sizes whole numbers >= 1; a config of
    another model (an upsampler's, a VAE's) is refused in one line instead of a KeyError later."""
    section = config.get("transformer") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        kind = config.get("_class_name", "another model") if isinstance(config, dict) else "not a mapping"
        raise UserError(
            f"{where}: its config has no `transformer` section ({kind}): pass the LTX-2.3 checkpoint "
            "(the .safetensors with the transformer, VAEs and vocoder)"
        )
    for key in TRANSFORMER_KEYS:
        value = section.get(key)
        if key in section and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise UserError(f"{where}: transformer.{key} = {value!r} must be a whole number >= 1")
    for key in ("num_layers", "num_attention_heads", "audio_num_attention_heads"):
        if key not in section:
            raise UserError(f"{where}: its transformer config has no {key}: pass the released LTX-2.3 config")
    return section


def check_config_fits_weights(path: str | Path, section: dict[str, Any]) -> None:
    """The transformer sizes the config gives match the tensor shapes in the file's header (read, not
    loaded): a config that does not fit its weights is one line here, not a size mismatch after loading."""
    layers, shapes = set(), {}
    with safetensors.safe_open(str(path), framework="pt") as f:
        for key in list(f.keys()):
            name = LTXV_MODEL_COMFY_RENAMING_MAP.apply_to_key(key) or ""
            if name.startswith("transformer_blocks."):
                layers.add(int(name.split(".")[1]))
                if name in ("transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.audio_attn1.to_q.weight"):
                    shapes[name] = tuple(f.get_slice(key).get_shape())
    if not layers:
        return  # no transformer weights in this file: load_component names what is missing
    expected = {
        "num_layers": (section["num_layers"], max(layers) + 1),
        "video width (num_attention_heads x attention_head_dim)": (
            section["num_attention_heads"] * section.get("attention_head_dim", 128),
            shapes.get("transformer_blocks.0.attn1.to_q.weight", (None,))[0],
        ),
        "audio width (audio_num_attention_heads x audio_attention_head_dim)": (
            section["audio_num_attention_heads"] * section.get("audio_attention_head_dim", 64),
            shapes.get("transformer_blocks.0.audio_attn1.to_q.weight", (None,))[0],
        ),
    }
    for what, (config_value, weights_value) in expected.items():
        if weights_value is not None and config_value != weights_value:
            raise UserError(
                f"checkpoint {path}: its config's {what} is {config_value}, its weights' is {weights_value}: "
                "the config does not fit the weights; pass the checkpoint with its own config metadata"
            )


def check_spatial_upsampler(path: str | Path) -> None:
    """An x2 spatial latent upsampler (read from its config metadata): an x1.5 one or a temporal one
    would fail inside ltx-core after loading."""
    config = read_model_config(path, "spatial upsampler")
    scale = config.get("spatial_scale", UPSAMPLER_SCALE)
    if not config.get("spatial_upsample", True) or config.get("temporal_upsample", False):
        raise UserError(f"spatial upsampler {path}: its config is not a spatial-only upsampler; pass the x2 one")
    if config.get("rational_resampler", False) or scale != UPSAMPLER_SCALE:
        raise UserError(
            f"spatial upsampler {path}: it scales x{scale:g}, the pipelines' stage 2 is x{UPSAMPLER_SCALE:g}: "
            "pass the x2 spatial upsampler (ltx-2.3-spatial-upscaler-x2)"
        )


def tensor_keys(path: str | Path) -> list[str]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def validate_lora(lora: LoraSpec, checkpoint: Path) -> int:
    """Check a LoRA targets weights of the transformer; return how many it touches.

    ltx-core silently skips LoRA pairs that match no weight, so a LoRA for another model would
    fuse to nothing; we refuse it instead.
    """
    read_safetensors_metadata(lora.path, "LoRA")
    check_finite_safetensors(lora.path, "LoRA")  # a NaN LoRA would only show as a NaN waveform at the end
    model_keys = {
        k for k in (LTXV_MODEL_COMFY_RENAMING_MAP.apply_to_key(key) for key in tensor_keys(checkpoint)) if k is not None
    }
    lora_keys = tensor_keys(lora.path)
    targets = set()
    for key in lora_keys:
        mapped = LTXV_LORA_COMFY_RENAMING_MAP.apply_to_key(key)
        if mapped and mapped.endswith(".lora_A.weight"):
            targets.add(mapped.removesuffix(".lora_A.weight") + ".weight")
    touched = targets & model_keys
    if not touched:
        example = lora_keys[0] if lora_keys else "(no tensors)"
        raise UserError(
            f"LoRA {lora.path} matches no transformer weight of {checkpoint} (first key: {example}); "
            "pass a LoRA trained for LTX-2.3 (keys like diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight)"
        )
    return len(touched)


def validate_set(ckset: CheckpointSet) -> None:
    """Every input check that needs no weights: files exist, metadata present, LoRAs and Gemma sane."""
    section = transformer_config(read_model_config(ckset.checkpoint), f"checkpoint {ckset.checkpoint}")
    check_config_fits_weights(ckset.checkpoint, section)
    if ckset.spatial_upsampler is not None:
        check_spatial_upsampler(ckset.spatial_upsampler)
    if ckset.gemma_root is not None:
        validate_gemma_root(ckset.gemma_root)
    for lora in ckset.loras:
        validate_lora(lora, ckset.checkpoint)


def builder_for(component: str, ckset: CheckpointSet) -> SingleGPUModelBuilder:
    """The ltx-core builder of one component: configurator, key ops and (for the DiT) LoRAs."""
    spec = REGISTRY.get(component)
    if spec is not None and spec.weights is not None:  # a module of the main checkpoint
        configurator, sd_ops = (_from_ltx_core(t) for t in spec.weights)
        loras = tuple(lora.to_ltx() for lora in ckset.loras) if component == "dit" else ()
        return SingleGPUModelBuilder(
            model_path=str(ckset.checkpoint),
            model_class_configurator=configurator,
            model_sd_ops=sd_ops,
            loras=loras,
        )
    if component == "text_connectors":
        return SingleGPUModelBuilder(
            model_path=str(ckset.checkpoint),
            model_class_configurator=embeddings_processor_configurator(
                gemma_config_for_connectors(ckset.gemma_root, ckset.checkpoint)
            ),
            model_sd_ops=EMBEDDINGS_PROCESSOR_KEY_OPS,
        )
    if component == "spatial_upsampler":
        if ckset.spatial_upsampler is None:
            raise UserError("the spatial upsampler is needed here: pass --spatial-upsampler-path")
        return SingleGPUModelBuilder(
            model_path=str(ckset.spatial_upsampler), model_class_configurator=LatentUpsamplerConfigurator
        )
    if component == "text_encoder":
        if ckset.gemma_root is None:
            raise UserError("the Gemma text encoder is needed here: pass --gemma-root")
        root = validate_gemma_root(ckset.gemma_root)
        weights = tuple(sorted(str(p) for p in root.rglob("model*.safetensors")))
        return SingleGPUModelBuilder(
            model_path=weights,
            model_class_configurator=text_encoder_configurator(read_gemma_config(root)),
            model_sd_ops=GEMMA_LLM_KEY_OPS,
            module_ops=(GEMMA_MODEL_OPS, *module_ops_from_gemma_root(str(root))),
        )
    raise UserError(f"unknown component {component!r}: choose one of {', '.join(ALL_COMPONENTS)}")


def component_config(component: str, ckset: CheckpointSet) -> dict[str, Any]:
    """The config a component is built from (the checkpoint's, the upsampler's, or Gemma's)."""
    if component == "spatial_upsampler":
        if ckset.spatial_upsampler is None:
            raise UserError("the spatial upsampler is needed here: pass --spatial-upsampler-path")
        return read_model_config(ckset.spatial_upsampler, "spatial upsampler")
    if component == "text_encoder":
        return read_gemma_config(ckset.gemma_root)
    return read_model_config(ckset.checkpoint)


def load_component(
    component: str, ckset: CheckpointSet, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Build one component with its weights (LoRAs fused for the DiT), in eval mode on `device`."""
    if component not in ALL_COMPONENTS:
        raise UserError(f"unknown component {component!r}: choose one of {', '.join(ALL_COMPONENTS)}")
    component_config(component, ckset)  # the one-line errors come before ltx-core's
    model = builder_for(component, ckset).build(device=torch.device(device), dtype=dtype)
    left_on_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if left_on_meta:
        raise UserError(
            f"{component}: {len(left_on_meta)} tensors missing from the checkpoint (first: {left_on_meta[0]}); "
            "is this an LTX-2.3 file of the released layout?"
        )
    # ltx-core 1.0.0's LoRA fusion leaves weights no LoRA touches in the file's dtype (bfloat16)
    # when another dtype is asked for; its no-LoRA path converts them all. Match that for the
    # parameters only: buffers ltx-core computes in float32 (Gemma's RoPE inv_freq, embed_scale)
    # must stay float32, as ltx-core's own builder leaves them.
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    return model.eval()
