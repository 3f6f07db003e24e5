"""The whole DiT as one graph: fixed named tensor inputs, nothing Python-side crossing the boundary.

ltx-core's LTXModel takes `Modality` dataclasses and a `BatchedPerturbationConfig`, computes RoPE
inside (float64 for LTX-2.3) and branches in Python on which batch rows are perturbed. The graph
form moves RoPE to the host (`rope_inputs`, float64 there, then cast), and turns each guidance
perturbation into a float input `skip_*[batch, block]` (1.0 = skip), so one graph serves the
conditional, negative-context (CFG), STG and modality-isolation passes, batched or not. The block
layout (blocks.py) takes the same inputs, split between its graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from ltx_core.guidance.perturbations import PerturbationConfig, PerturbationType
from ltx_core.model.transformer.modality import Modality
from ltx_core.model.transformer.model import LTXModel
from ltx_core.utils import to_denoised

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
