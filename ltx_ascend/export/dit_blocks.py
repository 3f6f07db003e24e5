"""The DiT as blocks: an input graph, ONE block graph whose weights are inputs, an output graph.

A 22B DiT fits neither one ONNX protobuf (2 GB) nor this machine. All 48 LTX-2.3 blocks share
one structure, so the block graph takes its weights as inputs: it compiles once instead of 48
times, and at run time each block's weights are bound (device-resident) from per-block weight
files that the exporter streams out of the checkpoint one block at a time, LoRAs fused by
ltx-core's `apply_loras`. Only the input and output graphs carry baked weights.

The three graph modules and the tensor names between them are the runner's contract too
(`ltx_ascend/dit_graph/blocks.py`); their names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import safetensors
import torch
from ltx_core.model.transformer.model import LTXModel
from ltx_core.model.transformer.transformer import BasicAVTransformerBlock
from safetensors.torch import save_file

from ltx_ascend.checkpoints.blocks import CHECKPOINT_BLOCK_PREFIX, read_block, read_block_weights
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.dit_graph.blocks import (  # noqa: F401 (the contract's names, also importable from here)
    ARG_FIELDS,
    BLOCK_ACTIVATIONS,
    BLOCK_OUTPUTS,
    INPUT_GRAPH_INPUTS,
    INPUT_GRAPH_OUTPUTS,
    OUTPUT_GRAPH_INPUTS,
    OUTPUT_GRAPH_OUTPUTS,
    PE_FIELDS,
    SAMPLE_ADALN,
    SAMPLE_ADALN_INPUT,
    SAMPLE_ADALN_INPUT_GRAPH,
    WEIGHT_PREFIX,
    DiTBlockGraph,
    DiTInputGraph,
    DiTOutputGraph,
    _ColumnMasks,
    _transformer_args,
    block_feeds,
    block_parameter_names,
    block_skip_columns,
    bound_weights,
    shared_adaln,
    shared_timesteps,
)
from ltx_ascend.errors import UserError
from ltx_ascend.export.dit import sample_feeds, sample_passes
from ltx_ascend.export.items import ExportItem, ExportOptions
from ltx_ascend.shapes import ShapeProfile


class DiTBlockGraphMarked(DiTBlockGraph):
    """The block graph with its Ulysses attention cores traced as markers (export/dit_split.py cuts there)."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ltx_ascend.export.dit_split import marked_cores

        with marked_cores(self.block):
            return super().forward(*inputs)


# ----------------------------------------------------------------------------------------------
# Streaming per-block weights out of the checkpoint


def stream_block_weights(
    ckset: CheckpointSet, num_layers: int, dtype: torch.dtype, quantize: Sequence[str] = ()
) -> Iterator[tuple[int, dict]]:
    """(block index, {param name: tensor}) one block at a time: never more than one block in memory.
    `quantize`: the block's linear layers to turn into W8A8 parameters, after the LoRAs are fused."""
    with safetensors.safe_open(str(ckset.checkpoint), framework="pt") as f:
        keys = list(f.keys())
        for i in range(num_layers):
            sd = read_block(f, keys, ckset, i, dtype)
            if quantize:
                from ltx_ascend.export.quantize import quantize_state_dict

                sd = {k: v.contiguous() for k, v in quantize_state_dict(sd, quantize).items()}
            yield i, sd


def write_block_weights(
    ckset: CheckpointSet, num_layers: int, dtype: torch.dtype, folder: Path, quantize: Sequence[str] = ()
) -> list[str]:
    """`block_00.safetensors` ... : one file per block (0.77 GB in bf16 for LTX-2.3 22B; W8A8 about half)."""
    names = []
    for i, weights in stream_block_weights(ckset, num_layers, dtype, quantize):
        name = f"block_{i:02d}.safetensors"
        save_file(weights, str(folder / name), metadata={"block": str(i)})
        names.append(name)
        del weights
    return names


def weights_material(
    ckset: CheckpointSet, num_layers: int, dtype: torch.dtype, quantization: str = "", skip: Sequence[str] = ()
) -> dict[str, Any]:
    """What the per-block weight files are made of, and nothing else (not the shape, layout or variant of
    the graphs that bind them): their content key in the store (`store.weights_key`)."""
    from ltx_ascend import dtypes
    from ltx_ascend.components import source_fingerprint

    return {
        "component": "dit",
        "kind": "blocks",
        "source": source_fingerprint("dit", ckset),  # the checkpoint's content, the LoRAs and strengths
        "dtype": dtypes.name(dtype),
        "num_layers": num_layers,
        "quantization": {"scheme": quantization, "skip": list(skip)} if quantization else None,
    }


def block_index(name: str) -> int:
    match = re.fullmatch(r"block_(\d+)\.safetensors", name)
    if not match:
        raise ValueError(name)
    return int(match.group(1))


# ----------------------------------------------------------------------------------------------
# The shell: everything of the DiT but its blocks, plus one block to trace


def _empty_block_parameters(block: torch.nn.Module, dtype: torch.dtype) -> None:
    """Zero-size placeholders: the module runs only with weights bound per call (`bound_weights`)."""
    for module in block.modules():
        for leaf in [k for k, v in module._parameters.items() if v is not None]:
            module._parameters[leaf] = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)


def dit_shell(
    ckset: CheckpointSet | None, config: dict[str, Any], dtype: torch.dtype, seed: int = 0, *, with_block: bool = True
) -> tuple[LTXModel, BasicAVTransformerBlock]:
    """The DiT with real non-block weights and block 0 only (checkpoint streamed), or seeded
    random weights at the config's real width. Never holds more than one block. `with_block=False`
    leaves block 0's parameters empty: the block module then only runs weights bound per call
    (`bound_weights`), e.g. streamed ones."""
    from ltx_core.model.transformer import LTXModelConfigurator

    from ltx_ascend.checkpoints.tiny import randomize_

    one_block = {**config, "transformer": {**config["transformer"], "num_layers": 1}}
    if ckset is None:
        with torch.device("cpu"):
            model = LTXModelConfigurator.from_config(one_block)
        randomize_(model, seed, "dit")
        model = model.to(dtype).eval()
        if not with_block:
            _empty_block_parameters(model.transformer_blocks[0], dtype)
        return model, model.transformer_blocks[0]
    with torch.device("meta"):
        model = LTXModelConfigurator.from_config(one_block)
    state = {}
    with safetensors.safe_open(str(ckset.checkpoint), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118
            if key.startswith("model.diffusion_model.") and not key.startswith(CHECKPOINT_BLOCK_PREFIX):
                state[key.removeprefix("model.diffusion_model.")] = f.get_tensor(key).to(dtype)
    if with_block:
        state |= {f"transformer_blocks.0.{k}": v for k, v in read_block_weights(ckset, 0, dtype).items()}
    else:
        _empty_block_parameters(model.transformer_blocks[0], dtype)
    model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"DiT weights missing from {ckset.checkpoint}: {left[:3]}")
    return model.eval(), model.transformer_blocks[0]


def build_block_items(
    ckset: CheckpointSet | None,
    config: dict[str, Any],
    profile: ShapeProfile,
    dtype: torch.dtype,
    seed: int = 0,
    options: ExportOptions | None = None,
) -> list[ExportItem]:
    """dit-input, dit-block (weights as inputs), dit-output; block weights stream to files.
    `--dit-layout split`: the block graph cut at its attention cores (dit-segment0..2), and all three
    at one rank's share of the tokens, ceil(T / U) (export/dit_split.py)."""
    from ltx_ascend.export import dit_split

    options = options or ExportOptions()
    _check_block_options(ckset, options)
    split = options.dit_layout == "split"
    model, block = dit_shell(ckset, config, dtype, seed)
    if split:
        dit_split.check_heads(block, options.ulysses)
    graph_type = DiTBlockGraphMarked if split else DiTBlockGraph
    num_layers = config["transformer"]["num_layers"]
    passes = sample_passes(profile.batch, 1)  # STG on block 0: the traced block is perturbed in the sample
    input_graph, output_graph = DiTInputGraph(model), DiTOutputGraph(model)
    feeds, in_feeds, activations = _block_sample_activations(model, input_graph, profile, passes, dtype, options)
    block_graph, quantized = _quantized_block_graph(block, graph_type, activations, options)
    b_feeds = block_feeds(block, activations)
    out_feeds = _output_feeds(block_graph, b_feeds, activations, feeds)
    input_reference, block_reference, output_reference = _block_references(input_graph, output_graph, block, passes)
    write_weights = _weights_writer(ckset, num_layers, dtype, quantized)
    layout = _block_layout(ckset, num_layers, quantized, block, feeds, options)
    sample_adaln_items = _sample_adaln_items(
        input_graph, block_graph, block, in_feeds, b_feeds, input_reference, block_reference, layout, split
    )
    return [
        ExportItem(
            "dit",
            input_graph,
            INPUT_GRAPH_INPUTS,
            INPUT_GRAPH_OUTPUTS,
            in_feeds,
            input_reference,
            variant="input",
            notes=layout,
        ),
        ExportItem(
            "dit",
            block_graph,
            block_graph.input_names,
            BLOCK_OUTPUTS,
            b_feeds,
            block_reference,
            variant="block",
            notes=layout,
            write_extra=write_weights,
            weights_material=None
            if ckset is None
            else weights_material(ckset, num_layers, dtype, options.quantization, options.quantization_skip),
            split=dit_split.BlockSplit(block, BLOCK_OUTPUTS, b_feeds) if split else None,
        ),
        *sample_adaln_items,
        ExportItem(
            "dit",
            output_graph,
            OUTPUT_GRAPH_INPUTS,
            OUTPUT_GRAPH_OUTPUTS,
            out_feeds,
            output_reference,
            variant="output",
            notes=layout,
        ),
    ]


def _check_block_options(ckset: CheckpointSet | None, options: ExportOptions) -> None:
    """Refuse what the block layout cannot do before any weight is read."""
    if options.smooth_alpha is not None and ckset is not None:
        raise UserError(
            "--smooth-alpha calibrates on each block's own activations, which the block layout does not run at "
            "export: use --dit-layout whole, or drop --smooth-alpha"
        )


def _weights_writer(
    ckset: CheckpointSet | None, num_layers: int, dtype: torch.dtype, quantized: list[str]
) -> Callable[[Path], list[str]]:
    """The block item's `write_extra`: every block's weights to their own files (none for random weights)."""

    def write_weights(folder: Path) -> list[str]:
        if ckset is None:
            return []
        return write_block_weights(ckset, num_layers, dtype, folder, quantized)

    return write_weights


def _block_sample_activations(
    model: LTXModel,
    input_graph: DiTInputGraph,
    profile: ShapeProfile,
    passes: Sequence[Any],
    dtype: torch.dtype,
    options: ExportOptions,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One sample's feeds (rank 0's shard when split), the input graph's feeds, and the activations
    block 0 sees: the input graph's outputs plus RoPE and this block's skip columns."""
    from ltx_ascend.export import dit_split

    single = dataclasses.replace(profile, batch=1)
    feeds, _, _ = sample_feeds(model, single, passes, dtype=dtype)
    if options.dit_layout == "split":  # rank 0's shard (every rank's has this shape: the last one is padded)
        feeds = dit_split.shard_feeds(feeds, options.ulysses, 0)
    in_feeds = {n: feeds[n] for n in INPUT_GRAPH_INPUTS}
    with torch.no_grad():
        activations = dict(zip(INPUT_GRAPH_OUTPUTS, input_graph(*in_feeds.values()), strict=True))
    activations |= {n: feeds[n] for n in feeds if n.endswith(PE_FIELDS)} | block_skip_columns(feeds, 0)
    return feeds, in_feeds, activations


def _quantized_block_graph(
    block: BasicAVTransformerBlock, graph_type: type, activations: dict[str, torch.Tensor], options: ExportOptions
) -> tuple[torch.nn.Module, list[str]]:
    """The block graph, its linears quantized in place (smoothed on these activations) when asked;
    with the names of the quantized linears."""
    block_graph = graph_type(block)
    quantized: list[str] = []
    if options.quantization:
        from ltx_ascend.export.quantize import quantizable, quantize_module_, smooth_scales

        quantized = quantizable(block, options.quantization_skip)
        smooth = None
        if options.smooth_alpha is not None:
            float_feeds = block_feeds(block, activations)
            smooth = smooth_scales(block, lambda: block_graph(*float_feeds.values()), quantized, options.smooth_alpha)
        quantize_module_(block, options.quantization_skip, smooth)
        block_graph = graph_type(block)
    return block_graph, quantized


def _output_feeds(
    block_graph: torch.nn.Module,
    b_feeds: dict[str, torch.Tensor],
    activations: dict[str, torch.Tensor],
    feeds: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The output graph's feeds: the block's outputs on the sample with the embedded timesteps and the latents."""
    with torch.no_grad():
        vx, ax = block_graph(*b_feeds.values())
    return {
        "video_x": vx,
        "video_embedded_timestep": activations["video_embedded_timestep"],
        "video_latent": feeds["video_latent"],
        "video_timesteps": feeds["video_timesteps"],
        "audio_x": ax,
        "audio_embedded_timestep": activations["audio_embedded_timestep"],
        "audio_latent": feeds["audio_latent"],
        "audio_timesteps": feeds["audio_timesteps"],
    }


def _block_references(
    input_graph: DiTInputGraph, output_graph: DiTOutputGraph, block: BasicAVTransformerBlock, passes: Sequence[Any]
) -> tuple[Callable[[dict], Any], Callable[[dict], Any], Callable[[dict], Any]]:
    """The eager references the exported graphs are checked against: the input and output graphs
    themselves, and ltx-core's own block with the weights bound per call."""

    def input_reference(f):
        with torch.no_grad():
            return input_graph(*(f[n] for n in INPUT_GRAPH_INPUTS))

    def block_reference(f):
        """ltx-core's block with its own BatchedPerturbationConfig (STG at this block) and RoPE tuples."""
        from ltx_core.guidance.perturbations import BatchedPerturbationConfig

        args = {m: _transformer_args(f, m) for m in ("video", "audio")}
        weights = {n: f[WEIGHT_PREFIX + n] for n in block_parameter_names(block)}
        with torch.no_grad():
            v, a = torch.func.functional_call(
                block, weights, (args["video"], args["audio"], BatchedPerturbationConfig(list(passes)))
            )
        return v.x, a.x

    def output_reference(f):
        with torch.no_grad():
            return output_graph(*(f[n] for n in OUTPUT_GRAPH_INPUTS))

    return input_reference, block_reference, output_reference


def _block_layout(
    ckset: CheckpointSet | None,
    num_layers: int,
    quantized: list[str],
    block: BasicAVTransformerBlock,
    feeds: dict[str, torch.Tensor],
    options: ExportOptions,
) -> dict[str, Any]:
    """The notes every item carries, which the runtime reads to chain the blocks (and, split, the shards)."""
    from ltx_ascend.export import dit_split

    layout = {"layout": "blocks", "num_layers": num_layers, "weights": "block_XX.safetensors" if ckset else "random"}
    if quantized:
        layout["quantized_linears"] = quantized
    if options.dit_layout == "split":
        layout |= {"layout": "split", "ulysses": options.ulysses, "cores": dit_split.core_notes(block)}
        layout |= {"shard_tokens": {m: feeds[f"{m}_latent"].shape[1] for m in ("video", "audio")}}
    return layout


def _sample_adaln_items(
    input_graph: DiTInputGraph,
    block_graph: torch.nn.Module,
    block: BasicAVTransformerBlock,
    in_feeds: dict[str, torch.Tensor],
    b_feeds: dict[str, torch.Tensor],
    input_reference: Callable[[dict], Any],
    block_reference: Callable[[dict], Any],
    layout: dict[str, Any],
    split: bool,
) -> list[ExportItem]:
    """Every variant also carries the per-sample AdaLN pair: the input graph fed one timestep per pass
    (it never computes the per-token video table) and the block graph (or its segments) reading that row."""
    from ltx_ascend.export import dit_split

    table = shared_adaln(b_feeds)
    if table is None:  # the sample feeds share one timestep per pass (dit.sample_feeds)
        raise RuntimeError("sample feeds have per-token AdaLN rows: cannot trace the per-sample block graph")
    sample_in_feeds = {**in_feeds, "video_timesteps": in_feeds["video_timesteps"][:, :1].contiguous()}
    sample_b_feeds = {**b_feeds, SAMPLE_ADALN_INPUT: table}
    return [
        ExportItem(
            "dit",
            input_graph,
            INPUT_GRAPH_INPUTS,
            INPUT_GRAPH_OUTPUTS,
            sample_in_feeds,
            input_reference,
            variant=SAMPLE_ADALN_INPUT_GRAPH,
            notes=layout,
        ),
        ExportItem(
            "dit",
            block_graph,
            block_graph.input_names,
            BLOCK_OUTPUTS,
            sample_b_feeds,
            block_reference,
            variant=SAMPLE_ADALN,
            notes=layout,
            split=dit_split.BlockSplit(block, BLOCK_OUTPUTS, sample_b_feeds, SAMPLE_ADALN) if split else None,
        ),
    ]
