"""Model configs: the released LTX-2.3 22B config, and the tiny preset derived from it.

The tiny preset is the 22B config with small widths and every behavioural flag kept (gated
attention, cross-attention AdaLN, split RoPE, float64 frequencies, the V2 feature extractor,
the BWE vocoder), so a tiny checkpoint exercises the same code paths in ltx-core as the real one.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

CONFIG_22B_RESOURCE = "ltx-2.3-22b.json"


@cache
def _load_22b() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("configs", CONFIG_22B_RESOURCE).read_text()
    return json.loads(text)


def config_22b() -> dict[str, Any]:
    """The `config` metadata of the released ltx-2.3-22b checkpoint (a fresh copy)."""
    return copy.deepcopy(_load_22b())


# Widths of the tiny preset. Video and audio head counts must be equal (the A-V cross-attention
# RoPE is split per head); connector width must equal the transformer width (22B layout:
# caption projection before the connector).
TINY_HEADS = 2
TINY_VIDEO_HEAD_DIM = 16
TINY_AUDIO_HEAD_DIM = 8
TINY_LAYERS = 2


def tiny_config(
    heads: int = TINY_HEADS,
    video_head_dim: int = TINY_VIDEO_HEAD_DIM,
    audio_head_dim: int = TINY_AUDIO_HEAD_DIM,
    layers: int = TINY_LAYERS,
) -> dict[str, Any]:
    """The 22B config with small widths; latent channel counts stay at 128 (ltx-core assumes them).
    Other widths and depths make other tiny DiTs of the same layout (held-out sets for tuning checks)."""
    cfg = config_22b()
    t = cfg["transformer"]
    video_dim = heads * video_head_dim
    audio_dim = heads * audio_head_dim
    t.update(
        num_attention_heads=heads,
        attention_head_dim=video_head_dim,
        num_layers=layers,
        cross_attention_dim=video_dim,
        caption_channels=video_dim,
        audio_num_attention_heads=heads,
        audio_attention_head_dim=audio_head_dim,
        audio_cross_attention_dim=audio_dim,
        connector_num_attention_heads=heads,
        connector_attention_head_dim=video_head_dim,
        audio_connector_num_attention_heads=heads,
        audio_connector_attention_head_dim=audio_head_dim,
        connector_num_layers=1,
    )
    # Video VAE: the encoder's base width is fixed at 128 by ltx-core, so every block keeps
    # multiplier 1 and one layer; the compression schedule (x32 space, x8 time) is unchanged.
    vae = cfg["vae"]
    vae["encoder_blocks"] = [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
        ["compress_time_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
    ]
    # Decoder: the released multiplier order (2, 2, 1, 2) over a base width of 8 (8 x 8 = 64 channels).
    vae["decoder_blocks"] = [
        ["res_x", {"num_layers": 1}],
        ["compress_space", {"multiplier": 2}],
        ["compress_time", {"multiplier": 2}],
        ["compress_all", {"multiplier": 1}],
        ["compress_all", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
    ]
    vae["decoder_base_channels"] = 8
    vae["encoder_base_channels"] = 16  # not read by ltx-core 1.0.0 (fixed 128); kept for the schema
    # Audio VAE: `ch` sizes the latent statistics and must stay 128; three levels keep 64 mel
    # bins -> 16 latent bins (16 x 8 z-channels = the transformer's 128 audio channels).
    dd = cfg["audio_vae"]["model"]["params"]["ddconfig"]
    dd.update(ch_mult=[1, 1, 1], num_res_blocks=1)
    # Vocoder + BWE: same upsampling schedule (hop 160 at 16 kHz, x3 to 48 kHz), narrow channels.
    voc = cfg["vocoder"]
    voc["vocoder"].update(upsample_initial_channel=64, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    voc["bwe"].update(upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    return cfg


def tiny_upsampler_config() -> dict[str, Any]:
    """Spatial x2 latent upsampler, the released layout at a narrow width."""
    return {
        "_class_name": "LatentUpsampler",
        "in_channels": 128,
        "mid_channels": 32,
        "num_blocks_per_stage": 1,
        "dims": 3,
        "spatial_upsample": True,
        "temporal_upsample": False,
        "spatial_scale": 2.0,
        "rational_resampler": False,
    }


def tiny_gemma_config(vocab_size: int, special_ids: dict[str, int]) -> dict[str, Any]:
    """A Gemma-3 (text + SigLIP vision) config in the HF `config.json` schema, tiny widths."""
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": special_ids["<start_of_image>"],
        "eoi_token_index": special_ids["<end_of_image>"],
        "image_token_index": special_ids["<image_soft_token>"],
        "eos_token_id": [1, special_ids["<end_of_turn>"]],
        "pad_token_id": 0,
        "bos_token_id": 2,
        "mm_tokens_per_image": 4,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma3_text",
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 512,
            "sliding_window_pattern": 2,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_channels": 3,
            "image_size": 28,
            "patch_size": 14,
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu_pytorch_tanh",
            "vision_use_head": False,
        },
    }
