"""The transformer call of a sampling loop, over a Session (whole graph or input/blocks/output).

Pipelines hand it ltx-core `Modality` inputs and a list of guidance passes (one
`PerturbationConfig` and one text context per pass); it builds the graph's named feeds (host RoPE,
float skip masks), runs as many passes per call as the graph's batch holds, and returns the X0
predictions per pass. Which backend runs underneath is invisible here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from ltx_core.guidance.perturbations import PerturbationConfig
from ltx_core.model.transformer import LTXModelConfigurator
from ltx_core.model.transformer.model import LTXModel

from ltx_ascend.dit_graph.blocks import (
    INPUT_GRAPH_INPUTS,
    SAMPLE_ADALN,
    SAMPLE_ADALN_INPUT,
    SAMPLE_ADALN_INPUT_GRAPH,
    WEIGHT_PREFIX,
    DiTBlockGraph,
    DiTInputGraph,
    DiTOutputGraph,
    block_skip_columns,
    shared_adaln,
    shared_timesteps,
)
from ltx_ascend.dit_graph.segments import run_segments, segment_names
from ltx_ascend.dit_graph.whole import rope_inputs, skip_masks_for
from ltx_ascend.engine.parallel import Parallel
from ltx_ascend.engine.step_cache import BlockCounts, StepCache
from ltx_ascend.runtime import device as device_layer
from ltx_ascend.runtime.block_weights import BlockWeights, ResidentBlockWeights
from ltx_ascend.runtime.eager_session import EagerSession
from ltx_ascend.runtime.session import Session

SAMPLE_ADALN_GRAPH = f"dit-{SAMPLE_ADALN}"
SAMPLE_INPUT_GRAPH = f"dit-{SAMPLE_ADALN_INPUT_GRAPH}"


@dataclass(frozen=True)
class Pass:
    """One transformer pass of a guided step: which perturbations, and which text context.
    `kind` names the pass (cond, uncond, ptb, mod): a step cache keeps state per pass."""

    perturbations: PerturbationConfig
    video_context: torch.Tensor
    audio_context: torch.Tensor
    kind: str = "cond"


class DiTRunner:
    """Runs guidance passes on a DiT session (`sessions["dit"]`) or a block chain
    (`sessions["dit-input"|"dit-block"|"dit-output"]` + one weight set per block), or the block
    chain with the block graph split at its attention cores (`"dit-segment0"`, ... in place of
    `"dit-block"`; dit_graph/segments.py), whose cores run here between the segments.

    The block chain is the form every DiT acceleration works on (step cache, layer streaming,
    sequence parallel), so eager runs it too: ltx-core's own modules behind the same three graphs,
    the block weights being the model's parameters.
    """

    def __init__(
        self,
        config: dict,
        sessions: Mapping[str, Session],
        *,
        block_weights: BlockWeights | Sequence[Path] = (),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch: int | None = None,
        parallel: Parallel | None = None,
    ) -> None:
        with torch.device("meta"):  # RoPE needs only the preprocessors' settings, never weights
            self._meta: LTXModel = LTXModelConfigurator.from_config(config)
        self.num_layers = config["transformer"]["num_layers"]
        self.sessions = dict(sessions)
        self.device = torch.device(device)
        self.dtype = dtype
        if not isinstance(block_weights, BlockWeights):
            block_weights = ResidentBlockWeights.from_files(list(block_weights), self.device)
        self.block_weights = block_weights
        if "dit" not in self.sessions and len(self.block_weights) != self.num_layers:
            raise ValueError(f"block chain has {len(self.block_weights)} weight sets for {self.num_layers} blocks")
        first = self.sessions["dit"] if "dit" in self.sessions else self.sessions["dit-input"]
        # A compiled graph has a fixed batch: that many passes per call (a short chunk is padded).
        self.batch = batch or next(s.shape[0] for s in first.inputs if s.name == "video_latent")
        self._rope_key: tuple | None = None
        self._rope: dict[str, torch.Tensor] = {}
        self.block_counts = BlockCounts()  # this runner's (one stage's) DiT work
        self.step_cache: StepCache | None = None  # see `use_step_cache`
        self.parallel = parallel
        self.segments = [self.sessions[n] for n in segment_names(list(self.sessions))]
        self.sample_segments = [  # the per-sample AdaLN block graph's segments (split layout)
            self.sessions[n] for n in segment_names(list(self.sessions), SAMPLE_ADALN)
        ]
        # Between segments: the device's fused attention (torch_npu's on Ascend, SDPA elsewhere), or
        # Ulysses' all-to-alls around it.
        meta_block = self._meta.transformer_blocks[0]
        core = device_layer.attention_core(self.device)
        if parallel is not None and self.segments:
            self.attend = parallel.attend(meta_block, core)
        else:
            self.attend = lambda name, q, k, v: core(q, k, v, getattr(meta_block, name).heads)
        if parallel is not None and parallel.ulysses > 1 and not self.segments:
            block = self.sessions.get("dit-block")
            if not isinstance(block, EagerSession) or not isinstance(block.module, DiTBlockGraph):
                raise ValueError("Ulysses sequence parallel needs the eager block chain or the split block graph")
            parallel.install(block.module.block)

    def use_step_cache(self, cache: StepCache | None) -> None:
        """Consult `cache` around the block chain from now on (None: run every block)."""
        if cache is not None and self.layout == "whole":
            raise ValueError("a step cache skips blocks: it needs the block-chain layout, not one whole DiT graph")
        self.step_cache = cache

    @property
    def layout(self) -> str:
        """"whole" (one graph), "blocks" (input graph, block chain, output graph) or "split" (the
        block chain with each block as segments between attention cores)."""
        return "whole" if "dit" in self.sessions else "split" if self.segments else "blocks"

    def _rope_tables(self, video_positions: torch.Tensor, audio_positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Computed on the host (float64 where the config says), once per position grid."""
        key = (video_positions.shape, video_positions.sum().item(), audio_positions.shape, audio_positions.sum().item())
        if key != self._rope_key:
            tables = rope_inputs(self._meta, video_positions.cpu(), audio_positions.cpu(), self.dtype)
            self._rope = {k: v.to(self.device) for k, v in tables.items()}
            self._rope_key = key
        return self._rope

    def _feeds(self, video, audio, passes: Sequence[Pass]) -> dict[str, torch.Tensor]:
        n = len(passes)

        def rows(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
            return t.expand(n, *t.shape[1:]).to(self.device, dtype or self.dtype).contiguous()

        f32 = torch.float32  # timesteps and sigma stay float32 (dit_graph.whole.FLOAT32_INPUTS)
        feeds = {
            "video_latent": rows(video.latent),
            "video_timesteps": rows(video.timesteps, f32),
            "video_sigma": rows(video.sigma.reshape(-1)[:1], f32),
            "video_context": torch.cat([p.video_context for p in passes]).to(self.device, self.dtype),
            "audio_latent": rows(audio.latent),
            "audio_timesteps": rows(audio.timesteps, f32),
            "audio_sigma": rows(audio.sigma.reshape(-1)[:1], f32),
            "audio_context": torch.cat([p.audio_context for p in passes]).to(self.device, self.dtype),
        }
        tables = self._rope_tables(video.positions[:1], audio.positions[:1])
        feeds |= {k: v.expand(n, *v.shape[1:]).contiguous() for k, v in tables.items()}
        masks = skip_masks_for([p.perturbations for p in passes], self.num_layers)
        feeds |= {k: v.to(self.device, self.dtype) for k, v in masks.items()}
        return feeds

    def _run(self, feeds: dict[str, torch.Tensor], keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        """One graph call; `keys[i]` names row i's pass (None: a padding row)."""
        start = time.perf_counter()
        real = sum(k is not None for k in keys)
        if self.layout == "whole":
            out = self.sessions["dit"].run(feeds)
            self.block_counts.block_calls_run += real * self.num_layers
            self.block_counts.seconds += time.perf_counter() - start
            return out["video_denoised"], out["audio_denoised"]
        if self.parallel is not None:  # Ulysses: this rank's tokens in, everyone's tokens out
            feeds = self.parallel.shard_feeds(feeds)
        acts = self.run_input(feeds)
        if self.step_cache is None:
            acts = self.run_blocks(acts, feeds, 0, self.num_layers)
            self.block_counts.block_calls_run += real * self.num_layers
        else:
            acts = self.step_cache.run_blocks(self, acts, feeds, keys, self.block_counts)
        result = self.run_output(acts, feeds)
        if self.parallel is not None:
            result = self.parallel.gather_tokens(*result)
        self.block_counts.seconds += time.perf_counter() - start
        return result

    def run_input(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Patchify and embeddings: the activations every block reads. When every token of each pass
        shares its timestep and the layout has the per-sample AdaLN graphs (`dit_graph.blocks.SAMPLE_ADALN*`),
        the video AdaLN table is one row per pass: from the per-sample input graph, which never computes
        the per-token table, or cut from the per-token one (an artifact with the block graph only)."""
        per_sample = self.per_sample_blocks and shared_timesteps(feeds["video_timesteps"])
        if per_sample and SAMPLE_INPUT_GRAPH in self.sessions:
            inputs = {n: feeds[n] for n in INPUT_GRAPH_INPUTS}
            inputs["video_timesteps"] = feeds["video_timesteps"][:, :1].contiguous()
            acts = self.sessions[SAMPLE_INPUT_GRAPH].run(inputs)
            tokens = feeds["video_latent"].shape[1]  # the output graph reads it per token
            acts["video_embedded_timestep"] = acts["video_embedded_timestep"].expand(-1, tokens, -1).contiguous()
            return acts
        acts = self.sessions["dit-input"].run({n: feeds[n] for n in INPUT_GRAPH_INPUTS})
        if per_sample:
            table = shared_adaln(acts, feeds["video_timesteps"])
            if table is not None:
                acts[SAMPLE_ADALN_INPUT] = table
        return acts

    @property
    def per_sample_blocks(self) -> bool:
        """Whether the layout has a block graph (or segments) fed one video AdaLN row per pass."""
        return SAMPLE_ADALN_GRAPH in self.sessions or bool(self.sample_segments)

    def _per_sample(self, acts: dict[str, torch.Tensor]) -> bool:
        return acts["video_x"].shape[1] > 1 and acts[SAMPLE_ADALN_INPUT].shape[1] == 1

    def block_session(self, acts: dict[str, torch.Tensor]) -> Session:
        """The block graph for these activations: per-sample AdaLN when `run_input` gave one row."""
        if SAMPLE_ADALN_GRAPH in self.sessions and self._per_sample(acts):
            return self.sessions[SAMPLE_ADALN_GRAPH]
        return self.sessions["dit-block"]

    def run_block(self, index: int, acts: dict[str, torch.Tensor], feeds: dict[str, torch.Tensor]) -> None:
        """Block `index` on `acts`, in place (`video_x`, `audio_x` are replaced by its outputs)."""
        weights = self.block_weights[index]
        block_in = {**acts, **feeds, **block_skip_columns(feeds, index)}
        block_in |= {WEIGHT_PREFIX + k: v for k, v in weights.items()}
        if self.segments:
            segments = self.sample_segments if self.sample_segments and self._per_sample(acts) else self.segments
            out = run_segments(segments, self.attend, block_in)
        else:
            block = self.block_session(acts)
            out = block.run({s.name: block_in[s.name] for s in block.inputs})
        acts["video_x"], acts["audio_x"] = out["video_x_out"], out["audio_x_out"]
        self.block_weights.release(index)

    def run_blocks(
        self, acts: dict[str, torch.Tensor], feeds: dict[str, torch.Tensor], start: int, stop: int
    ) -> dict[str, torch.Tensor]:
        """Blocks `start` .. `stop - 1` in order."""
        for index in range(start, stop):
            self.run_block(index, acts, feeds)
        return acts

    def run_output(
        self, acts: dict[str, torch.Tensor], feeds: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm, projection and X0 denoising."""
        session = self.sessions["dit-output"]
        final = session.run({n: acts[n] if n in acts else feeds[n] for n in session.input_names})
        return final["video_denoised"], final["audio_denoised"]

    def __call__(self, video, audio, passes: Sequence[Pass]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """X0 predictions (video, audio) per pass; `video`/`audio` are batch-1 ltx-core Modalities.
        With pass parallel this rank runs its share of `passes` and gathers the others'."""
        mine, first = list(passes), 0
        if self.parallel is not None:
            mine, first = self.parallel.my_passes(passes), self.parallel.first_pass(len(passes))
        results = []
        if self.step_cache is not None:
            self.step_cache.begin_call()
        for start in range(0, len(mine), self.batch):
            chunk = mine[start : start + self.batch]
            pad = self.batch - len(chunk)  # a short last chunk repeats its last pass (result dropped)
            feeds = self._feeds(video, audio, chunk + [chunk[-1]] * pad)
            keys = [(first + start + i, p.kind) for i, p in enumerate(chunk)] + [None] * pad
            v, a = self._run(feeds, keys)
            results += [(v[i : i + 1], a[i : i + 1]) for i in range(len(chunk))]
        if self.parallel is not None:
            like = (video.latent.to(self.device, self.dtype), audio.latent.to(self.device, self.dtype))
            results = self.parallel.gather_passes(results, len(passes), *like)
        return results


def eager_dit_runner(
    model: LTXModel,
    config: dict,
    device: torch.device,
    dtype: torch.dtype,
    *,
    batch: int = 1,
    block_weights: BlockWeights | None = None,
    parallel: Parallel | None = None,
) -> DiTRunner:
    """ltx-core's transformer as a block chain: its preprocessors, its blocks (one block module runs
    every block's weights, bound per call) and its output head, behind eager sessions. The block
    weights are the model's own parameters unless `block_weights` gives them (then `model` may be
    the shell `export.dit_blocks.dit_shell(..., with_block=False)` builds)."""
    input_graph = DiTInputGraph(model)
    block_graph = DiTBlockGraph(model.transformer_blocks[0])
    output_graph = DiTOutputGraph(model)
    sessions = {
        "dit-input": EagerSession(input_graph, input_graph.input_names, input_graph.output_names, device, dtype),
        "dit-block": EagerSession(block_graph, block_graph.input_names, block_graph.output_names, device, dtype),
        "dit-output": EagerSession(output_graph, output_graph.input_names, output_graph.output_names, device, dtype),
    }
    weights = ResidentBlockWeights.from_modules(model.transformer_blocks) if block_weights is None else block_weights
    return DiTRunner(
        config, sessions, block_weights=weights, device=device, dtype=dtype, batch=batch, parallel=parallel
    )
