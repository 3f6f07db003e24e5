"""The DiT as blocks: an input graph, ONE block graph whose weights are inputs, an output graph.

All 48 LTX-2.3 blocks share one structure, so the block graph takes its weights as inputs
(`w.<parameter name>`): it compiles once, and at run time each block's weights are bound per call.
The tensors between the graphs are ltx-core's `TransformerArgs` fields by name (`ARG_FIELDS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from ltx_core.model.transformer.model import LTXModel
from ltx_core.model.transformer.transformer import BasicAVTransformerBlock
from ltx_core.model.transformer.transformer_args import TransformerArgs
from ltx_core.utils import to_denoised

from ltx_ascend.dit_graph.whole import SKIP_INPUTS, MaskPerturbations, _host_rope

WEIGHT_PREFIX = "w."  # block graph inputs named w.<parameter name>

# TransformerArgs field -> graph tensor name (per modality) that the input graph produces and
# every block reads. Distinct from the DiT's own input names (video_timesteps, video_context).
ARG_FIELDS = {
    "x": "x",
    "context": "text",
    "timesteps": "adaln",
    "embedded_timestep": "embedded_timestep",
    "prompt_timestep": "prompt_adaln",
    "cross_scale_shift_timestep": "cross_scale_shift",
    "cross_gate_timestep": "cross_gate",
}
PE_FIELDS = ("pe_cos", "pe_sin", "cross_pe_cos", "cross_pe_sin")
INPUT_GRAPH_INPUTS = tuple(f"{m}_{n}" for m in ("video", "audio") for n in ("latent", "timesteps", "sigma", "context"))
INPUT_GRAPH_OUTPUTS = tuple(f"{m}_{g}" for m in ("video", "audio") for g in ARG_FIELDS.values())
BLOCK_ACTIVATIONS = (  # the block never reads embedded_timestep: only the output graph does
    *(n for n in INPUT_GRAPH_OUTPUTS if not n.endswith("_embedded_timestep")),
    *(f"{m}_{f}" for m in ("video", "audio") for f in PE_FIELDS),
    *SKIP_INPUTS,  # [batch, 1]: this block's column of the per-block masks
)
BLOCK_OUTPUTS = ("video_x_out", "audio_x_out")
OUTPUT_GRAPH_INPUTS = tuple(
    f"{m}_{f}" for m in ("video", "audio") for f in ("x", "embedded_timestep", "latent", "timesteps")
)
OUTPUT_GRAPH_OUTPUTS = ("video_denoised", "audio_denoised")
# The block graph again, with the video AdaLN table fed once per sample ([B, 1, 9 x dim]) instead of
# once per token ([B, T, 9 x dim]: 1.36 GB in float32 for 4 passes x 2,304 tokens of the 22B). ltx-core's
# block broadcasts a 1-token table itself, so the graph is the same block traced at that shape. The
# runtime picks it only when every token's row is bitwise the same (no per-token conditioning).
SAMPLE_ADALN = "block-sample-adaln"  # export item variant; graph "dit-block-sample-adaln"
SAMPLE_ADALN_INPUT = "video_adaln"
# The input graph fed one video timestep per pass ([B, 1, 1]): it emits the video AdaLN table and the
# embedded timestep one row per pass, so the per-token table is never computed at all (the runner
# broadcasts the embedded timestep, [B, T, dim], for the output graph). Same rule as SAMPLE_ADALN.
SAMPLE_ADALN_INPUT_GRAPH = "input-sample-adaln"  # graph "dit-input-sample-adaln"


def block_parameter_names(block: BasicAVTransformerBlock) -> list[str]:
    return [name for name, _ in block.named_parameters()]


@contextlib.contextmanager
def bound_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run `module` with plain tensors in place of its parameters (traceable, unlike functional_call,
    which refuses to run under the JIT tracer)."""
    saved = []
    for name, tensor in weights.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        saved.append((owner, leaf, owner._parameters.pop(leaf)))
        setattr(owner, leaf, tensor)
    try:
        yield
    finally:
        for owner, leaf, param in saved:
            delattr(owner, leaf)
            owner.register_parameter(leaf, param)


def _transformer_args(f: dict[str, torch.Tensor], m: str) -> TransformerArgs:
    """A modality's TransformerArgs from the block graph's named tensors."""
    return TransformerArgs(
        **{field: f.get(f"{m}_{name}") for field, name in ARG_FIELDS.items()},
        context_mask=None,
        positional_embeddings=(f[f"{m}_pe_cos"], f[f"{m}_pe_sin"]),
        cross_positional_embeddings=(f[f"{m}_cross_pe_cos"], f[f"{m}_cross_pe_sin"]),
        enabled=True,
    )


class DiTInputGraph(torch.nn.Module):
    """Patchify, timestep / AdaLN embeddings, prompt and A-V cross timesteps (ltx-core's preprocessors)."""

    input_names = INPUT_GRAPH_INPUTS
    output_names = INPUT_GRAPH_OUTPUTS

    def __init__(self, model: LTXModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ltx_core.model.transformer.modality import Modality

        f = dict(zip(INPUT_GRAPH_INPUTS, inputs, strict=True))
        mod = {
            m: Modality(
                latent=f[f"{m}_latent"],
                sigma=f[f"{m}_sigma"],
                timesteps=f[f"{m}_timesteps"],
                positions=f[f"{m}_latent"].new_zeros(1, 1, 1),
                context=f[f"{m}_context"],
            )
            for m in ("video", "audio")
        }
        unused = {f"{m}_{k}": (None, None) for m in ("video", "audio") for k in ("pe", "cross_pe")}
        with _host_rope(self.model, unused):
            video = self.model.video_args_preprocessor.prepare(mod["video"], mod["audio"])
            audio = self.model.audio_args_preprocessor.prepare(mod["audio"], mod["video"])
        return tuple(getattr(args, field) for args in (video, audio) for field in ARG_FIELDS)


class _ColumnMasks(MaskPerturbations):
    """The block graph sees only its own column of each skip mask ([batch, 1])."""

    def mask_like(self, perturbation_type, block, values):
        return super().mask_like(perturbation_type, 0, values)


class DiTBlockGraph(torch.nn.Module):
    """One BasicAVTransformerBlock; activations first, then its parameters as `w.<name>` inputs."""

    output_names = BLOCK_OUTPUTS

    def __init__(self, block: BasicAVTransformerBlock) -> None:
        super().__init__()
        self.block = block
        self.param_names = block_parameter_names(block)
        self.input_names = (*BLOCK_ACTIVATIONS, *(WEIGHT_PREFIX + n for n in self.param_names))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_act = len(BLOCK_ACTIVATIONS)
        f = dict(zip(BLOCK_ACTIVATIONS, inputs[:n_act], strict=True))
        weights = dict(zip(self.param_names, inputs[n_act:], strict=True))
        args = {m: _transformer_args(f, m) for m in ("video", "audio")}
        masks = _ColumnMasks({t: f[n] for n, t in SKIP_INPUTS.items()})
        with bound_weights(self.block, weights):
            video, audio = self.block(args["video"], args["audio"], masks)
        return video.x, audio.x


class DiTOutputGraph(torch.nn.Module):
    """Final AdaLN modulation, norm, projection, and X0 denoising for both modalities."""

    input_names = OUTPUT_GRAPH_INPUTS
    output_names = OUTPUT_GRAPH_OUTPUTS

    def __init__(self, model: LTXModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = dict(zip(OUTPUT_GRAPH_INPUTS, inputs, strict=True))
        m = self.model
        vx = m._process_output(m.scale_shift_table, m.norm_out, m.proj_out, f["video_x"], f["video_embedded_timestep"])
        ax = m._process_output(
            m.audio_scale_shift_table, m.audio_norm_out, m.audio_proj_out, f["audio_x"], f["audio_embedded_timestep"]
        )
        return (
            to_denoised(f["video_latent"], vx, f["video_timesteps"]),
            to_denoised(f["audio_latent"], ax, f["audio_timesteps"]),
        )


def block_skip_columns(feeds: dict[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    """This block's [batch, 1] column of each whole-model skip mask."""
    return {name: feeds[name][:, block : block + 1].contiguous() for name in SKIP_INPUTS}


def shared_timesteps(timesteps: torch.Tensor) -> bool:
    """Whether every token of each pass has the pass's first token's timestep ([B, T, ...]): the rule
    for the per-sample AdaLN graphs (no per-token conditioning)."""
    return timesteps.shape[1] == 1 or torch.equal(timesteps, timesteps[:, :1].expand_as(timesteps))


def shared_adaln(acts: dict[str, torch.Tensor], timesteps: torch.Tensor | None = None) -> torch.Tensor | None:
    """`acts["video_adaln"]` cut to one row per sample ([B, 1, C], its own memory) when every token's
    row equals the first bitwise, else None (per-token timesteps: image or video conditioning).
    `timesteps` ([B, T, ...], the input graph's feed), when given, rules out the full compare cheaply."""
    table = acts[SAMPLE_ADALN_INPUT]
    if table.shape[1] == 1:
        return table
    if timesteps is not None and not shared_timesteps(timesteps):
        return None
    first = table[:, :1]
    if not torch.equal(table, first.expand_as(table)):
        return None
    return first.clone()  # not a view: the [B, T, C] table must be free to go


def block_feeds(
    block: BasicAVTransformerBlock,
    activations: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Named inputs of the block graph: activations plus `w.*` (the block's own if not given)."""
    weights = weights if weights is not None else dict(block.named_parameters())
    out = {name: activations[name] for name in BLOCK_ACTIVATIONS}
    out |= {WEIGHT_PREFIX + n: weights[n].detach() for n in block_parameter_names(block)}
    return out
