"""The whole DiT for export: sample feeds, the eager reference, random weights, the export item.

The graph itself (its named inputs, host RoPE, float skip masks, `DiTGraph`) is the runner's contract
too, so it lives in `ltx_ascend/dit_graph/whole.py`; its names stay importable from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from ltx_core.model.transformer import LTXModelConfigurator
from ltx_core.model.transformer.modality import Modality
from ltx_core.model.transformer.model import LTXModel
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape
from ltx_core.utils import to_denoised

from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.dit_graph.whole import (  # noqa: F401 (the contract's names, also importable from here)
    DIT_INPUTS,
    DIT_OUTPUTS,
    FLOAT32_INPUTS,
    MODALITY_INPUTS,
    SKIP_INPUTS,
    DiTGraph,
    MaskPerturbations,
    _host_rope,
    rope_inputs,
    skip_masks_for,
)
from ltx_ascend.export.items import ExportItem, ExportOptions
from ltx_ascend.shapes import LATENT_CHANNELS, ShapeProfile


def guidance_passes(stg_blocks: Sequence[int]) -> list[PerturbationConfig]:
    """The four passes of a guided step, as ltx-pipelines builds them: plain, negative context
    (plain perturbations, other text), STG (skip self-attention in `stg_blocks`), modality isolation."""
    stg = PerturbationConfig(
        [
            Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, list(stg_blocks)),
            Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, list(stg_blocks)),
        ]
    )
    isolate = PerturbationConfig(
        [
            Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
            Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
        ]
    )
    return [PerturbationConfig.empty(), PerturbationConfig.empty(), stg, isolate]


def eager_dit(
    model: LTXModel,
    feeds: dict[str, torch.Tensor],
    video_positions: torch.Tensor,
    audio_positions: torch.Tensor,
    passes: Sequence[PerturbationConfig],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same step through ltx-core as the pipelines call it (RoPE inside, real perturbation
    configs): the reference a compiled DiT graph is compared with."""
    modalities = {
        name: Modality(
            latent=feeds[f"{name}_latent"],
            sigma=feeds[f"{name}_sigma"],
            timesteps=feeds[f"{name}_timesteps"],
            positions=positions,
            context=feeds[f"{name}_context"],
        )
        for name, positions in (("video", video_positions), ("audio", audio_positions))
    }
    vx, ax = model(modalities["video"], modalities["audio"], BatchedPerturbationConfig(list(passes)))
    return (
        to_denoised(modalities["video"].latent, vx, modalities["video"].timesteps),
        to_denoised(modalities["audio"].latent, ax, modalities["audio"].timesteps),
    )


def latent_positions(profile: ShapeProfile, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio token positions for a profile, from ltx-core's patchifiers (float32)."""
    pixel = VideoPixelShape(
        batch=profile.batch, frames=profile.frames, height=profile.height, width=profile.width, fps=profile.fps
    )
    vshape = VideoLatentShape.from_pixel_shape(pixel, latent_channels=LATENT_CHANNELS)
    video = VideoLatentTools(VideoLatentPatchifier(patch_size=1), vshape, profile.fps)
    audio = AudioLatentTools(AudioPatchifier(patch_size=1), AudioLatentShape.from_video_pixel_shape(pixel))
    device = torch.device(device)
    return (
        video.create_initial_state(device, torch.float32).positions,
        audio.create_initial_state(device, torch.float32).positions,
    )


def sample_feeds(
    model: LTXModel,
    profile: ShapeProfile,
    passes: Sequence[PerturbationConfig],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random but realistic DiT inputs for `len(passes)` batch rows; also returns the positions."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(passes)
    if profile.batch != 1:
        raise ValueError("sample_feeds takes a batch-1 profile and repeats it per pass")
    video_pos, audio_pos = latent_positions(profile)
    if profile.conditioning_tokens:  # appended keyframe / reference tokens: positions taken from the grid
        extra = torch.arange(profile.conditioning_tokens) % video_pos.shape[2]
        video_pos = torch.cat([video_pos, video_pos[:, :, extra]], dim=2)
    video_pos = video_pos.expand(batch, *video_pos.shape[1:]).contiguous()
    audio_pos = audio_pos.expand(batch, *audio_pos.shape[1:]).contiguous()
    vpre, apre = model.video_args_preprocessor.simple_preprocessor, model.audio_args_preprocessor.simple_preprocessor
    sigma = torch.full((batch,), 0.7)
    feeds: dict[str, torch.Tensor] = {}
    for name, tokens, pre in (("video", profile.video_tokens, vpre), ("audio", profile.audio_tokens, apre)):
        feeds[f"{name}_latent"] = torch.randn(batch, tokens, LATENT_CHANNELS, generator=gen)
        feeds[f"{name}_timesteps"] = sigma[:, None, None].expand(batch, tokens, 1).contiguous()
        feeds[f"{name}_sigma"] = sigma.clone()
        feeds[f"{name}_context"] = torch.randn(batch, profile.text_tokens, pre.inner_dim, generator=gen)
    feeds |= rope_inputs(model, video_pos, audio_pos, torch.float32)
    feeds |= skip_masks_for(passes, len(model.transformer_blocks))
    # Separate storage per input: the tracer merges inputs that alias (RoPE cos/sin are views of one tensor).
    feeds = {k: v.to(torch.float32 if k in FLOAT32_INPUTS else dtype).contiguous().clone() for k, v in feeds.items()}
    return {n: feeds[n] for n in DIT_INPUTS}, video_pos, audio_pos


def sample_passes(batch: int, num_layers: int) -> list[PerturbationConfig]:
    """`batch` guidance passes cycling plain, negative, STG, isolation; STG at block 28 like
    LTX-2.3's default (or the middle block of a shallower model)."""
    stg_block = 28 if num_layers > 28 else num_layers // 2
    passes = guidance_passes([stg_block])
    return [passes[i % len(passes)] for i in range(batch)]


# Above this many weight bytes (in the export dtype) the DiT is exported as blocks.
WHOLE_DIT_MAX_BYTES = 1 << 30


def dit_weight_bytes(config: dict, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        model = LTXModelConfigurator.from_config(config)
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def random_dit(config: dict, dtype: torch.dtype, seed: int = 0) -> LTXModel:
    """The whole DiT at the config's sizes with seeded weights (benchmarks of real shapes, no files)."""
    from ltx_ascend.checkpoints.tiny import randomize_

    with torch.device("cpu"):
        model = LTXModelConfigurator.from_config(config)
    randomize_(model, seed, "dit")
    return model.to(dtype).eval()


def build_whole_items(
    ckset: CheckpointSet | None, config: dict, profile: ShapeProfile, dtype: torch.dtype, options: ExportOptions
) -> list[ExportItem]:
    """The whole DiT as one graph (`export/dit_layouts.py` chooses between this and the block chain)."""
    model = load_component("dit", ckset, dtype=dtype) if ckset is not None else random_dit(config, dtype, options.seed)
    passes = sample_passes(profile.batch, len(model.transformer_blocks))
    single = dataclasses.replace(profile, batch=1)
    feeds, video_pos, audio_pos = sample_feeds(model, single, passes, dtype=dtype)
    if options.quantization:  # LoRAs are already fused into the float weights load_component returned
        from ltx_ascend.export.quantize import quantize_dit_

        quantize_dit_(
            model,
            options.quantization_skip,
            calibrate=lambda: DiTGraph(model)(*(feeds[n] for n in DIT_INPUTS)),
            smooth_alpha=options.smooth_alpha,
        )

    def reference(f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return eager_dit(model, f, video_pos.to(f["video_latent"].device), audio_pos, passes)

    return [
        ExportItem(
            component="dit",
            module=DiTGraph(model).eval(),
            input_names=DIT_INPUTS,
            output_names=DIT_OUTPUTS,
            sample=feeds,
            reference=reference,
            notes={
                "guidance_passes": len(passes),
                "num_layers": len(model.transformer_blocks),
                **({"quantization": options.quantization} if options.quantization else {}),
            },
        )
    ]
