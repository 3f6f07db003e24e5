"""The DiT as a graph: fixed named tensor inputs, nothing Python-side crossing the boundary.

ltx-core's LTXModel takes `Modality` dataclasses and a `BatchedPerturbationConfig`, computes RoPE
inside (float64 for LTX-2.3) and branches in Python on which batch rows are perturbed. The graph
form moves RoPE to the host (`rope_inputs`, float64 there, then cast), and turns each guidance
perturbation into a float input `skip_*[batch, block]` (1.0 = skip), so one graph serves the
conditional, negative-context (CFG), STG and modality-isolation passes, batched or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

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
from ltx_ascend.export.components import ExportItem, ExportOptions
from ltx_ascend.shapes import LATENT_CHANNELS, ShapeProfile

# Graph input order for the per-modality tensors, then the perturbation masks.
MODALITY_INPUTS = ("latent", "timesteps", "sigma", "context", "pe_cos", "pe_sin", "cross_pe_cos", "cross_pe_sin")
SKIP_INPUTS = {
    "skip_video_self_attn": PerturbationType.SKIP_VIDEO_SELF_ATTN,
    "skip_audio_self_attn": PerturbationType.SKIP_AUDIO_SELF_ATTN,
    "skip_a2v_cross_attn": PerturbationType.SKIP_A2V_CROSS_ATTN,
    "skip_v2a_cross_attn": PerturbationType.SKIP_V2A_CROSS_ATTN,
}
DIT_INPUTS = (
    *(f"video_{n}" for n in MODALITY_INPUTS),
    *(f"audio_{n}" for n in MODALITY_INPUTS),
    *SKIP_INPUTS,
)
DIT_OUTPUTS = ("video_denoised", "audio_denoised")
# Float32 at every graph dtype: ltx-core embeds timesteps (x1000, sinusoidal) in float32; in bf16
# 0.7 would become 0.69921875 before the embedding.
FLOAT32_INPUTS = frozenset({"video_timesteps", "video_sigma", "audio_timesteps", "audio_sigma"})


class MaskPerturbations:
    """BatchedPerturbationConfig's interface backed by float masks, so the graph takes no branch.

    `any_in_batch` is always true and `all_in_batch` always false: every block computes attention
    and blends `out * keep + v * (1 - keep)`, which equals ltx-core's skipped path exactly when
    keep is 0 and its plain path when keep is 1.
    """

    def __init__(self, skips: dict[PerturbationType, torch.Tensor]) -> None:
        self.skips = skips

    def any_in_batch(self, perturbation_type: PerturbationType, block: int) -> bool:
        return True

    def all_in_batch(self, perturbation_type: PerturbationType, block: int) -> bool:
        return False

    def mask_like(self, perturbation_type: PerturbationType, block: int, values: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.skips[perturbation_type][:, block].to(values.dtype)
        return keep.view(keep.shape[0], *([1] * (values.ndim - 1)))


@contextlib.contextmanager
def _host_rope(model: LTXModel, tables: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Feed RoPE tables from graph inputs where ltx-core would compute them.

    ltx-core's MultiModalTransformerArgsPreprocessor.prepare asks its simple preprocessor for the
    self-attention table, then the A-V cross table, in that order; we answer from the inputs.
    """
    patched = []
    for name, preprocessor in (("video", model.video_args_preprocessor), ("audio", model.audio_args_preprocessor)):
        queue = [tables[f"{name}_pe"], tables[f"{name}_cross_pe"]]
        simple = preprocessor.simple_preprocessor

        def answer(*_args, _queue=queue, **_kwargs):
            return _queue.pop(0)

        simple._prepare_positional_embeddings = answer
        patched.append((simple, queue))
    try:
        yield
        leftover = [len(q) for _, q in patched]
        if any(leftover):
            raise RuntimeError(f"ltx-core asked for fewer RoPE tables than expected ({leftover} left): version drift?")
    finally:
        for simple, _ in patched:
            del simple._prepare_positional_embeddings


def rope_inputs(
    model: LTXModel, video_positions: torch.Tensor, audio_positions: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """RoPE cos/sin for both modalities and the A-V cross attention, computed on the host.

    Uses the preprocessors' own `_prepare_positional_embeddings` with the arguments ltx-core's
    `prepare` passes, so float64 frequencies (numpy) come from ltx-core itself. Works on a model
    built on `meta`: no weights are read.
    """
    out: dict[str, torch.Tensor] = {}
    for name, pre, positions in (
        ("video", model.video_args_preprocessor, video_positions),
        ("audio", model.audio_args_preprocessor, audio_positions),
    ):
        simple = pre.simple_preprocessor
        common = {"num_attention_heads": simple.num_attention_heads, "x_dtype": dtype}
        cos, sin = simple._prepare_positional_embeddings(
            positions=positions,
            inner_dim=simple.inner_dim,
            max_pos=simple.max_pos,
            use_middle_indices_grid=simple.use_middle_indices_grid,
            **common,
        )
        cross_cos, cross_sin = simple._prepare_positional_embeddings(
            positions=positions[:, 0:1, :],
            inner_dim=pre.audio_cross_attention_dim,
            max_pos=[pre.cross_pe_max_pos],
            use_middle_indices_grid=True,
            **common,
        )
        out |= {
            f"{name}_pe_cos": cos,
            f"{name}_pe_sin": sin,
            f"{name}_cross_pe_cos": cross_cos,
            f"{name}_cross_pe_sin": cross_sin,
        }
    return out


class DiTGraph(torch.nn.Module):
    """LTXModel + X0 denoising over the named tensor inputs of `DIT_INPUTS`."""

    input_names = DIT_INPUTS
    output_names = DIT_OUTPUTS

    def __init__(self, model: LTXModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = dict(zip(DIT_INPUTS, inputs, strict=True))
        modalities, tables = {}, {}
        for name in ("video", "audio"):
            latent = feeds[f"{name}_latent"]
            tables[f"{name}_pe"] = (feeds[f"{name}_pe_cos"], feeds[f"{name}_pe_sin"])
            tables[f"{name}_cross_pe"] = (feeds[f"{name}_cross_pe_cos"], feeds[f"{name}_cross_pe_sin"])
            modalities[name] = Modality(
                latent=latent,
                sigma=feeds[f"{name}_sigma"],
                timesteps=feeds[f"{name}_timesteps"],
                # Only RoPE reads positions, and RoPE is fed: a placeholder with the right rank.
                positions=latent.new_zeros(latent.shape[0], 1, latent.shape[1]),
                context=feeds[f"{name}_context"],
            )
        perturbations = MaskPerturbations({t: feeds[n] for n, t in SKIP_INPUTS.items()})
        with _host_rope(self.model, tables):
            vx, ax = self.model(modalities["video"], modalities["audio"], perturbations)
        video = to_denoised(modalities["video"].latent, vx, modalities["video"].timesteps)
        audio = to_denoised(modalities["audio"].latent, ax, modalities["audio"].timesteps)
        return video, audio


def skip_masks_for(passes: Sequence[PerturbationConfig], num_layers: int) -> dict[str, torch.Tensor]:
    """ltx-core perturbation configs (one per batch row) -> the graph's float skip masks."""
    masks = {}
    for name, ptype in SKIP_INPUTS.items():
        rows = [[float(cfg.is_perturbed(ptype, block)) for block in range(num_layers)] for cfg in passes]
        masks[name] = torch.tensor(rows, dtype=torch.float32)
    return masks


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
