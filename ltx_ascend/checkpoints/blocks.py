"""One DiT block's weights out of the checkpoint, LoRAs fused by ltx-core's `apply_loras`.

The block exporter writes them to per-block files and the runtime streams them straight from the
checkpoint; both read through here, so the two fuse LoRAs identically.
"""

from __future__ import annotations

from typing import Any

import safetensors
import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraStateDictWithStrength, StateDict, apply_loras

from ltx_ascend.checkpoints.loader import CheckpointSet

CHECKPOINT_BLOCK_PREFIX = "model.diffusion_model.transformer_blocks."


def _lora_block_state(ckset: CheckpointSet, prefix: str) -> list[LoraStateDictWithStrength]:
    """The LoRA A/B pairs of one block, keyed as the model's state dict keys are (ltx-core's ops)."""
    out = []
    model_prefix = prefix.removeprefix("model.diffusion_model.")
    for lora in ckset.loras:
        sd = {}
        with safetensors.safe_open(str(lora.path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                mapped = LTXV_LORA_COMFY_RENAMING_MAP.apply_to_key(key)
                if mapped is not None and mapped.startswith(model_prefix):
                    sd[mapped.removeprefix(model_prefix)] = f.get_tensor(key)
        size = sum(t.nbytes for t in sd.values())
        out.append(LoraStateDictWithStrength(StateDict(sd, torch.device("cpu"), size, set()), lora.strength))
    return out


def read_block(f: Any, keys: list[str], ckset: CheckpointSet, index: int, dtype: torch.dtype) -> dict:
    """Block `index` from an open checkpoint, LoRAs fused by ltx-core's `apply_loras`, in `dtype`.
    Tensors already in `dtype` stay views of the file's memory map (safetensors' `get_tensor`)."""
    prefix = f"{CHECKPOINT_BLOCK_PREFIX}{index}."
    sd = {k.removeprefix(prefix): f.get_tensor(k) for k in keys if k.startswith(prefix)}
    if ckset.loras:
        base = StateDict(sd, torch.device("cpu"), sum(t.nbytes for t in sd.values()), set())
        sd = apply_loras(base, _lora_block_state(ckset, prefix), dtype=dtype).sd
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def read_block_weights(ckset: CheckpointSet, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Block `index` alone, as `stream_block_weights` yields it. The file is opened for this block
    only, so nothing of the checkpoint stays mapped once the returned tensors are dropped."""
    with safetensors.safe_open(str(ckset.checkpoint), framework="pt") as f:
        return read_block(f, list(f.keys()), ckset, index, dtype)
