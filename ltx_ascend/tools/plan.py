"""`ltx-plan`: will it fit, and how long should a step take? From the config alone, no weights.

Per component and stage: FLOPs per call and per step (every guidance pass counted), parameter
bytes, activation peak; whether weights plus activations fit the device's memory (and which
block-streaming prefetch count fits if not); a roofline time per step at the SoC's peak, next to
the published eager figures of the LTX-2.3 Ascend guide on a 910B for the same shape; and, with
`--streaming-prefetch-count N`, peak device memory and time per step with the DiT's blocks streamed
over the host link (copy vs compute, overlapped).
"""

from __future__ import annotations

import argparse
import json
import math
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ltx_ascend import dtypes
from ltx_ascend.checkpoints.loader import read_model_config, transformer_config
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.engine.memory_policy import COMPONENTS as MEMORY_COMPONENTS
from ltx_ascend.engine.memory_policy import SIGLIP_WEIGHTS, MemoryPolicy, choose_policy, gemma_weight_count
from ltx_ascend.engine.stages import PIPELINES, PlannedStage, declared_stages, pipeline_spec
from ltx_ascend.engine.step_cache import StepCacheSpec, parse_spec
from ltx_ascend.engine.step_cache_search import read_skip_ratios
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.runtime.dit_memory import (
    USABLE_FRACTION,
    activation_bytes,
    choose_prefetch,
    dit_memory,
    meta_dit,
    streamed_call_seconds,
)
from ltx_ascend.shapes import ShapeProfile, parse_shape, shape_profile
from ltx_ascend.tools import serve_plan
from ltx_ascend.validation import check_finite, flag_values, positive

if TYPE_CHECKING:
    from ltx_ascend.runtime.distributed import Layout


@dataclass(frozen=True)
class Soc:
    name: str
    peak_tflops: float  # dense bf16/fp16 matrix throughput
    hbm_gb: float
    hbm_tb_s: float
    source: str
    h2d_gb_s: float = 32.0  # host-to-device link: PCIe 4.0 x16 (theoretical, one direction)


# Public figures, approximate: vendors quote ranges and round; override with --peak-tflops / --hbm-gb.
SOCS = {
    "Ascend910B1": Soc("Ascend910B1", 400, 64, 1.6, "public 910B spec sheets (~400 TFLOP/s fp16, 64 GB HBM2e)"),
    "Ascend910B2": Soc("Ascend910B2", 376, 64, 1.6, "public 910B spec sheets (~376 TFLOP/s fp16, 64 GB HBM2e)"),
    "Ascend910B3": Soc("Ascend910B3", 313, 64, 1.6, "public 910B spec sheets (~313 TFLOP/s fp16, 64 GB HBM2e)"),
    "Ascend910B4": Soc("Ascend910B4", 280, 64, 1.6, "Atlas 800I A2 public specs (~280 TFLOP/s fp16, 64 GB, 1.6 TB/s)"),
    "H100-SXM": Soc("H100-SXM", 989, 80, 3.35, "NVIDIA H100 datasheet (dense bf16)", 64.0),
    "H200": Soc("H200", 989, 141, 4.8, "NVIDIA H200 datasheet (dense bf16)", 64.0),
}

# Device-to-device link of the multi-device plan. A published figure, not measured here: Huawei's
# Atlas 800 A2 material describes the 8 NPUs of a node as an HCCS full mesh (7 links per NPU),
# quoted as 56 GB/s per link (392 GB/s per NPU). --link-gb-s overrides.
HCCS_LINK_GB_S = 56.0
HCCS_SOURCE = "HCCS full mesh, 56 GB/s per link (published Atlas 800 A2 figure, not measured here)"

# Published reference figures, not measured by this project: the LTX-2.3 Ascend guide's eager torch_npu
# runs on an Atlas 800I A2 (910B, torch_npu 2.9) at 41x1024x1536 (docs/reference-figures.md), in s/step
# per stage; (pipeline, streamed) -> stage. "streamed" = the guide's --streaming-prefetch-count runs.
PUBLISHED_910B_SOURCE = "LTX-2.3 Ascend guide, 910B eager torch_npu (published reference figures, not measured here)"
PUBLISHED_910B = {
    ("ti2vid_two_stages", False): {"stage 1": 2.68, "stage 2": 2.59},
    ("ti2vid_two_stages", True): {"stage 1": 6.76, "stage 2": 2.65},
    ("ti2vid_two_stages_hq", True): {"stage 1": 11.3, "stage 2": 7.54},
    ("ti2vid_one_stage", True): {"denoise": 7.25},
    ("distilled", False): {"stage 1": 0.71, "stage 2": 2.62},
    ("keyframe_interpolation", True): {"stage 1": 6.79, "stage 2": 3.80},
    ("a2vid_two_stage", True): {"stage 1": 8.33, "stage 2": 2.61},
}


def pipeline_stages(pipeline: str) -> list[PlannedStage]:
    """The pipeline's own stage declaration (`STAGES` in its module) at its LTX-2.3 defaults."""
    if pipeline not in PIPELINES:
        raise UserError(f"unknown pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
    return declared_stages(pipeline)


# ------------------------------------------------------------------------------------------------
# Counting


# Which token stream each top-level block submodule reads: (query side, key/value side).
_STREAMS = {
    "attn1": ("video", "video"),
    "ff": ("video", "video"),
    "attn2": ("video", "text"),
    "audio_attn1": ("audio", "audio"),
    "audio_ff": ("audio", "audio"),
    "audio_attn2": ("audio", "text"),
    "audio_to_video_attn": ("video", "audio"),
    "video_to_audio_attn": ("audio", "video"),
}


def _stream_tokens(name: str, counts: dict[str, int]) -> int | None:
    """Rows a block submodule's Linear sees: keys/values come from the other stream in cross-attention."""
    head = name.split(".")[0]
    if head not in _STREAMS:
        return None
    query, key = _STREAMS[head]
    return counts[key if name.endswith(("to_k", "to_v")) else query]


def dit_flops_per_pass(model: torch.nn.Module, profile: ShapeProfile) -> dict[str, float]:
    """Analytic FLOPs of one DiT pass (batch 1): every Linear as 2*tokens*in*out, every attention
    as 4*Tq*Tk*inner (QK^T and AV), from the module structure; norms and elementwise ops ignored
    (under 1%: tested against torch's flop counter)."""
    from ltx_core.model.transformer.attention import Attention

    counts = {"video": profile.video_tokens, "audio": profile.audio_tokens, "text": profile.text_tokens}
    tv, ta = counts["video"], counts["audio"]
    linear = attention = 0.0
    for block in model.transformer_blocks:
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                tokens = _stream_tokens(name, counts)
                if tokens is None:
                    raise ValueError(f"unknown DiT block module {name}: update ltx_ascend.tools.plan")
                linear += 2.0 * tokens * module.in_features * module.out_features
            elif isinstance(module, Attention):
                tq = _stream_tokens(name + ".to_q", counts)
                tk = _stream_tokens(name + ".to_k", counts)
                attention += 4.0 * tq * tk * module.heads * module.dim_head
    outside = 0.0
    for name, module in model.named_modules():
        if name.startswith("transformer_blocks") or not isinstance(module, torch.nn.Linear):
            continue
        # AdaLN runs per token (timesteps are per token); prompt and A-V cross AdaLN on sigma (1 row).
        audio = name.startswith("audio_")
        rows = 1 if ("prompt_adaln" in name or name.startswith("av_ca_")) else (ta if audio else tv)
        outside += 2.0 * rows * module.in_features * module.out_features
    return {
        "linear": linear,
        "attention": attention,
        "embed_and_output": outside,
        "total": linear + attention + outside,
    }


class _PeakLive(TorchDispatchMode):
    """Peak bytes of live intermediate tensors during a forward on `meta` (weights excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, nbytes)
        return out


def traced_cost(module: torch.nn.Module, *inputs: torch.Tensor) -> tuple[float, int]:
    """(FLOPs, activation peak bytes) of `module(*inputs)` on meta tensors."""
    peak = _PeakLive()
    with FlopCounterMode(display=False) as flops, peak, torch.no_grad():
        module(*inputs)
    return float(flops.get_total_flops()), peak.peak


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Row:
    stage: str
    component: str
    calls: int
    gflop_per_call: float
    tflop_total: float
    params_gb: float
    activation_gb: float
    roofline_s: float
    measured_s_per_step: float | None = None
    skipped_block_fraction: float = 0.0  # step cache: share of this stage's DiT block calls skipped
    saved_tflop: float = 0.0
    saved_roofline_s: float = 0.0  # over the whole stage
    saved_measured_s: float | None = None  # the published stage time scaled by the saved FLOP share
    stage_roofline_s: float = 0.0  # the uncached stage at roofline, for scale


def _gemma_flops(tokens: int) -> tuple[float, float]:
    """Gemma-3 (ltx-core's built-in 12B config): 2 FLOPs per weight per token of the language model, and
    the weight count with the SigLIP vision tower (loaded too): the memory policy's number."""
    weights = gemma_weight_count()
    return 2.0 * (weights - SIGLIP_WEIGHTS) * tokens, float(weights)


def memory_plan(
    pipeline: str, shape: str, config: dict[str, Any], soc: Soc, dtype: str, host_gb: float
) -> MemoryPolicy:
    """Where a resident engine serving `pipeline` at `shape` keeps each model on this SoC (the
    engine's own choice, memory_policy.choose_policy, with the SoC's memory)."""
    spec = pipeline_spec(pipeline)
    frames, height, width = parse_shape(shape)
    d = spec.defaults
    profiles = [
        shape_profile((frames, height, width), stage=st.stage, batch=st.passes(d.video_guider, d.audio_guider))
        for st in spec.stages
    ]
    return choose_policy(
        config,
        max(profiles, key=lambda p: p.video_tokens * p.batch),
        device=f"{soc.name} (planned)",
        dtype=dtypes.TORCH[dtype],
        components=MEMORY_COMPONENTS,
        dit_sets=2 if spec.two_stage and spec.stage_2_lora else 1,
        device_bytes=int(soc.hbm_gb * 1e9),
        host_bytes=int(host_gb * 1e9),
        h2d_gb_s=soc.h2d_gb_s,
    )


def skipped_block_fraction(
    spec: StepCacheSpec, stage: PlannedStage, num_layers: int, expected: dict[str, float] | float | None
) -> float:
    """Share of a stage's DiT block calls a step cache skips: exact for a block schedule; for auto,
    the calibration file's measured ratio for this stage, or the stated `expected` ratio."""
    if not spec.applies_to(stage.stage):
        return 0.0
    if spec.policy == "block":
        evaluations = stage.evaluations
        first, stop = spec.block_range(num_layers)
        return spec.reused_steps(evaluations) / evaluations * (stop - first) / num_layers
    ratio = expected.get(stage.name) if isinstance(expected, dict) else expected
    if ratio is None:
        raise UserError(
            f"--step-cache {spec}: an adaptive cache's skips are only known once it runs: pass --expected-skip RATIO "
            "or the @FILE that ltx-run --step-cache-search wrote"
        )
    return ratio


def plan(
    pipeline: str,
    shape: str,
    config: dict[str, Any],
    soc: Soc,
    dtype: str = "bfloat16",
    streaming: bool = False,
    step_cache: StepCacheSpec | None = None,
    expected_skip: dict[str, float] | float | None = None,
    prefetch: int | None = None,
) -> dict[str, Any]:
    """The plan. `streaming`: compare with the published streamed figures; `prefetch` (the streaming
    prefetch count) adds the streamed peak memory and time per stage."""
    stages = pipeline_stages(pipeline)
    bytes_per = dtypes.itemsize(dtype)
    peak_flops = soc.peak_tflops * 1e12
    frames, height, width = parse_shape(shape)
    two_stage = any(s.stage is not None for s in stages)
    dit = meta_dit(config)
    dit_params = param_count(dit)
    at_reference_shape = (frames, height, width) == (41, 1024, 1536)
    measured = PUBLISHED_910B.get((pipeline, streaming), {}) if at_reference_shape else {}
    measured_streamed = PUBLISHED_910B.get((pipeline, True), {}) if at_reference_shape else {}
    streamed_rows: list[dict[str, Any]] = []

    rows: list[Row] = [_prompt_row(bytes_per, peak_flops)]
    step_cache = step_cache or StepCacheSpec()
    step_cache.check(len(dit.transformer_blocks))
    for st in stages:
        profile = shape_profile((frames, height, width), stage=st.stage)
        row = _dit_row(st, dit, profile, bytes_per, peak_flops, dit_params, measured.get(st.name), step_cache,
                       expected_skip)  # fmt: skip
        rows.append(row)
        if prefetch is not None:
            streamed_rows.append(_streamed_stage(config, profile, st, bytes_per, soc, prefetch, row.roofline_s,
                                                 measured, measured_streamed))  # fmt: skip
    full = shape_profile((frames, height, width), stage=2 if two_stage else None)
    rows += _decode_rows(config, full, bytes_per, peak_flops)
    fit = _memory_fit(rows, dit, config, stages, (frames, height, width), bytes_per, soc)
    return {
        "pipeline": pipeline,
        "shape": shape,
        "dtype": dtype,
        "soc": asdict(soc),
        "dit_params_billion": dit_params / 1e9,
        "rows": [asdict(r) for r in rows],
        **fit,
        "streaming": streamed_rows,
        "total_tflop": sum(r.tflop_total for r in rows),
        "step_cache": str(step_cache),
        "saved_tflop": sum(r.saved_tflop for r in rows),
    }


def _prompt_row(bytes_per: int, peak_flops: float) -> Row:
    """The prompt stage: Gemma run eagerly, two prompts (positive and negative) of 1024 tokens."""
    gemma_flops, gemma_weights = _gemma_flops(1024)
    return Row("prompt", "text_encoder (eager)", 2, gemma_flops / 1e9, 2 * gemma_flops / 1e12,
               gemma_weights * bytes_per / 1e9, 0.0, 2 * gemma_flops / peak_flops)  # fmt: skip


def _dit_row(
    st: PlannedStage,
    dit: torch.nn.Module,
    profile: ShapeProfile,
    bytes_per: int,
    peak_flops: float,
    dit_params: int,
    measured_s: float | None,
    step_cache: StepCacheSpec,
    expected_skip: dict[str, float] | float | None,
) -> Row:
    """One denoising stage's DiT row: its passes' FLOPs, weights, activation peak and roofline step time,
    with what an active step cache saves of the block FLOPs (and of the published time, where there is one)."""
    flops = dit_flops_per_pass(dit, profile)
    per_pass = flops["total"]
    calls = st.dit_passes
    act = activation_bytes(dit.transformer_blocks[0], profile, bytes_per, st.passes)
    step_s = per_pass * st.passes * st.evals_per_step / peak_flops
    row = Row(st.name, f"dit x{st.passes} passes", calls, per_pass / 1e9, per_pass * calls / 1e12,
              dit_params * bytes_per / 1e9, act / 1e9, step_s, measured_s)  # fmt: skip
    if step_cache.active:
        fraction = skipped_block_fraction(step_cache, st, len(dit.transformer_blocks), expected_skip)
        saved = fraction * (flops["linear"] + flops["attention"]) * calls
        row.skipped_block_fraction, row.saved_tflop = fraction, saved / 1e12
        row.saved_roofline_s, row.stage_roofline_s = saved / peak_flops, step_s * st.steps
        if row.measured_s_per_step:
            row.saved_measured_s = row.measured_s_per_step * st.steps * saved / (per_pass * calls)
    return row


def _decode_rows(config: dict[str, Any], full: ShapeProfile, bytes_per: int, peak_flops: float) -> list[Row]:
    """The decode stage at the output size, traced on meta tensors: video and audio decoders, then the
    vocoder (float32, at half the peak) on the audio decoder's mel."""
    from ltx_core.model.audio_vae import AudioDecoderConfigurator, VocoderConfigurator
    from ltx_core.model.video_vae import VideoDecoderConfigurator

    rows = []
    with torch.device("meta"):
        decoder = VideoDecoderConfigurator.from_config(config)
        audio_decoder = AudioDecoderConfigurator.from_config(config)
        vocoder = VocoderConfigurator.from_config(config)
        latent = torch.empty(full.video_latent_shape)
        audio_latent = torch.empty(full.audio_latent_shape)
    for name, module, inputs in (
        ("video_decoder", decoder, (latent,)),
        ("audio_decoder", audio_decoder, (audio_latent,)),
    ):
        flops, act = traced_cost(module, *inputs)
        rows.append(Row("decode", name, 1, flops / 1e9, flops / 1e12, param_count(module) * bytes_per / 1e9,
                        act / 1e9 * bytes_per / 4, flops / peak_flops))  # fmt: skip
    with torch.device("meta"):
        mel = audio_decoder(audio_latent)
    flops, act = traced_cost(vocoder, mel)
    rows.append(Row("decode", "vocoder (float32)", 1, flops / 1e9, flops / 1e12, param_count(vocoder) * 4 / 1e9,
                    act / 1e9, flops / (peak_flops / 2)))  # fmt: skip
    return rows


def _memory_fit(
    rows: list[Row],
    dit: torch.nn.Module,
    config: dict[str, Any],
    stages: list[PlannedStage],
    dims: tuple[int, int, int],
    bytes_per: int,
    soc: Soc,
) -> dict[str, Any]:
    """Whether the biggest DiT stage fits the SoC's memory resident, how many blocks must stream if not,
    and the smallest prefetch count that fits (-1: not even one block at a time)."""
    biggest_stage = max((r for r in rows if r.component.startswith("dit")), key=lambda r: r.activation_gb)
    need_gb = biggest_stage.params_gb + biggest_stage.activation_gb
    block_gb = param_count(dit.transformer_blocks[0]) * bytes_per / 1e9
    biggest = max(
        (dit_memory(config, shape_profile(dims, stage=st.stage), bytes_per, st.passes) for st in stages),
        key=lambda m: m.activation_bytes,
    )
    fits = need_gb <= soc.hbm_gb * USABLE_FRACTION
    try:
        fitting_prefetch = choose_prefetch(biggest, soc.hbm_gb * 1e9)
    except UserError:
        fitting_prefetch = -1  # not even one block at a time
    return {
        "fits": fits,
        "peak_need_gb": need_gb,
        # blocks that cannot stay resident (0 when it fits); streaming keeps only prefetch + 1 on the device
        "stream_blocks": 0 if fits else math.ceil((need_gb - soc.hbm_gb * USABLE_FRACTION) / block_gb),
        "fitting_prefetch": fitting_prefetch,
        "block_gb": block_gb,
    }


def _step_cache_header() -> str:
    return (
        f"{'stage':<8} {'blocks skipped %':>16} {'saved TFLOP':>12} {'saved s':>9} {'of stage s':>11} "
        f"{'saved s (published s/step)':>27}"
    )


def ulysses_bytes_per_pass(config: dict[str, Any], tv: int, ta: int, ulysses: int, bytes_per: int) -> float:
    """Bytes one rank sends for one DiT pass under Ulysses (U ranks, tv video and ta audio tokens):
    per block the all-to-alls of q, k, v and the output of each self-attention, for each A-V
    cross-attention the same or the all-gather of its K/V (whichever the runner picks), and the
    final all-gather of the X0 tokens."""
    from ltx_ascend.engine.parallel import gather_kv_is_cheaper

    if ulysses == 1:
        return 0.0
    dit = meta_dit(config)
    block = dit.transformer_blocks[0]
    inner_v = block.attn1.heads * block.attn1.dim_head
    inner_a = block.audio_attn1.heads * block.audio_attn1.dim_head
    inner_av = block.audio_to_video_attn.heads * block.audio_to_video_attn.dim_head
    share = (ulysses - 1) / ulysses
    self_attn = 4 * (tv * inner_v + ta * inner_a) / ulysses * share
    av = 0.0
    for tq, tk in ((tv, ta), (ta, tv)):  # A-to-V, V-to-A
        gather = gather_kv_is_cheaper(tq, tk, ulysses)
        av += (2 * tk * (ulysses - 1) if gather else (2 * tq + 2 * tk) * share) / ulysses * inner_av
    latent_rows = tv * dit.patchify_proj.in_features + ta * dit.audio_patchify_proj.in_features
    out_gather = latent_rows / ulysses * (ulysses - 1)
    return (len(dit.transformer_blocks) * (self_attn + av) + out_gather) * bytes_per


def parallel_plan(
    result: dict[str, Any], config: dict[str, Any], cfg: int, ulysses: int, link_gb_s: float
) -> list[dict[str, Any]]:
    """Per DiT stage on cfg x ulysses devices: bytes each rank sends per step and the predicted time.

    Passes: each cfg group runs ceil(passes / C) of them, then all-gathers the X0 predictions.
    Ulysses: per pass and block, the all-to-alls of q, k, v and the attention output of every
    attention, or for an A-V cross-attention with few keys the all-gather of its K/V, whichever
    is smaller (the choice `ltx_ascend.engine.parallel` makes). Compute divides by U; in a
    full mesh a rank's traffic spreads over its (group size - 1) links; no overlap with compute
    is assumed (an upper bound)."""
    bytes_per = dtypes.itemsize(result["dtype"])
    frames, height, width = parse_shape(result["shape"])
    rows = []
    for r in result["rows"]:
        if not r["component"].startswith("dit"):
            continue
        st = next(s for s in pipeline_stages(result["pipeline"]) if s.name == r["stage"])
        profile = shape_profile((frames, height, width), stage=st.stage)
        tv, ta = profile.video_tokens, profile.audio_tokens
        mine = math.ceil(st.passes / cfg)
        per_pass = ulysses_bytes_per_pass(config, tv, ta, ulysses, bytes_per)
        ulysses_bytes = per_pass * mine * st.evals_per_step
        cfg_bytes = mine * (tv + ta) * 128 * bytes_per * (cfg - 1) * st.evals_per_step
        comm_s = 0.0
        if ulysses > 1:
            comm_s += ulysses_bytes / (link_gb_s * 1e9 * (ulysses - 1))
        if cfg > 1:
            comm_s += cfg_bytes / (link_gb_s * 1e9 * (cfg - 1))
        compute = mine / st.passes / ulysses
        measured = r["measured_s_per_step"]
        rows.append(
            {
                "stage": r["stage"],
                "passes_per_rank": mine,
                "comm_mb_per_step": (ulysses_bytes + cfg_bytes) / 1e6,
                "comm_s": comm_s,
                "roofline_s_1": r["roofline_s"],
                "roofline_s_n": r["roofline_s"] * compute + comm_s,
                "measured_s_1": measured,
                "predicted_s_n": measured * compute + comm_s if measured else None,
            }
        )
    return rows


# Published, not measured here: Huawei quotes the 910B's INT8 throughput at twice its FP16 (e.g. 640 TOPS
# INT8 vs 320 TFLOPS FP16 for the 910B-class parts). --int8-speedup overrides.
INT8_SPEEDUP = 2.0
INT8_SOURCE = "910B INT8 rate = 2 x FP16 (published Ascend figures, not measured here)"


def composed_plan(
    result: dict[str, Any],
    config: dict[str, Any],
    cfg: int,
    ulysses: int,
    link_gb_s: float,
    quantization: str = "",
    int8_speedup: float = INT8_SPEEDUP,
) -> list[dict[str, Any]]:
    """Per DiT stage, the step with every factor at once: this rank's share of the passes (cfg) and of the
    tokens (Ulysses), the block linears at the int8 rate (W8A8; attention, norms and the input/output
    graphs stay bf16), the step cache's skipped share of block calls (and of their all-to-alls), and the
    collectives at the link rate. From the published 1-device s/step where there is one, else the roofline."""
    bytes_per = dtypes.itemsize(result["dtype"])
    frames, height, width = parse_shape(result["shape"])
    dit = meta_dit(config)
    rows = []
    for r in result["rows"]:
        if not r["component"].startswith("dit"):
            continue
        st = next(s for s in pipeline_stages(result["pipeline"]) if s.name == r["stage"])
        profile = shape_profile((frames, height, width), stage=st.stage)
        flops = dit_flops_per_pass(dit, profile)
        linear, attention, outside = (flops[k] / flops["total"] for k in ("linear", "attention", "embed_and_output"))
        skip = r.get("skipped_block_fraction") or 0.0
        mine = math.ceil(st.passes / cfg)
        compute = mine / st.passes / ulysses
        w8a8 = int8_speedup if quantization else 1.0
        base = r["measured_s_per_step"] or r["roofline_s"]
        blocks_s = base * compute * (linear / w8a8 + attention) * (1.0 - skip)
        outside_s = base * compute * outside
        tv, ta = profile.video_tokens, profile.audio_tokens
        uly = ulysses_bytes_per_pass(config, tv, ta, ulysses, bytes_per) * mine * st.evals_per_step
        gather = mine * (tv + ta) * 128 * bytes_per * (cfg - 1) * st.evals_per_step
        comm_s = (uly * (1.0 - skip) / (link_gb_s * 1e9 * (ulysses - 1)) if ulysses > 1 else 0.0) + (
            gather / (link_gb_s * 1e9 * (cfg - 1)) if cfg > 1 else 0.0
        )
        step_s = blocks_s + outside_s + comm_s
        rows.append(
            {
                "stage": r["stage"],
                "steps": st.steps,
                "base_s_1": base,
                "base_source": "published" if r["measured_s_per_step"] else "roofline",
                "linear_share": linear,
                "int8_speedup": w8a8,
                "skipped_block_fraction": skip,
                "blocks_s": blocks_s,
                "outside_s": outside_s,
                "comm_s": comm_s,
                "step_s": step_s,
                "stage_s": step_s * st.steps,
                "speedup": base / step_s,
            }
        )
    return rows


def format_composed(rows: list[dict[str, Any]], cfg: int, ulysses: int, quantization: str, cache: str) -> str:
    lines = [
        f"composed step on {cfg * ulysses} devices: cfg={cfg} x ulysses={ulysses}, "
        f"{quantization or 'bf16'} block linears, step cache {cache}",
        f"{'stage':<8} {'1 dev s/step':>13} {'linear share':>13} {'int8 x':>7} {'skipped':>8} {'blocks s':>9} "
        f"{'in/out s':>9} {'comm s':>8} {'s/step':>8} {'stage s':>8} {'speedup':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['stage']:<8} {r['base_s_1']:>9.2f} ({r['base_source'][:4]}) {r['linear_share']:>12.0%} "
            f"{r['int8_speedup']:>7.1f} {r['skipped_block_fraction']:>8.0%} {r['blocks_s']:>9.3f} "
            f"{r['outside_s']:>9.3f} {r['comm_s']:>8.3f} {r['step_s']:>8.3f} {r['stage_s']:>8.2f} {r['speedup']:>7.1f}x"
        )
    lines.append(f"DiT total {sum(r['stage_s'] for r in rows):.2f} s (text encoding and decode not included)")
    lines += [
        "measured here (CPU, tiny set): W8A8 numerics and the split W8A8 graphs (tests/test_split_variants.py,",
        "  tests/test_composition.py); the skipped share (a block schedule exactly, auto from --expected-skip or",
        "  an @FILE of ltx-run --step-cache-search); the Ulysses byte count (= what the ranks sent, test_parallel)",
        f"published, not measured here: 1-device s/step ({PUBLISHED_910B_SOURCE}); {INT8_SOURCE}; {HCCS_SOURCE}",
    ]
    return "\n".join(lines)


def format_parallel(rows: list[dict[str, Any]], cfg: int, ulysses: int, link_gb_s: float) -> str:
    lines = [
        f"on {cfg * ulysses} devices, cfg={cfg} x ulysses={ulysses}: link {link_gb_s:g} GB/s ({HCCS_SOURCE})",
        f"{'stage':<8} {'passes/rank':>11} {'comm MB/step':>13} {'comm s/step':>12} {'roofline 1 dev':>15} "
        f"{'roofline N dev':>15} {'published 1 dev':>16} {'predicted N dev':>16} {'speedup':>8}",
    ]
    for r in rows:
        measured = f"{r['measured_s_1']:.2f}" if r["measured_s_1"] else "-"
        predicted = f"{r['predicted_s_n']:.2f}" if r["predicted_s_n"] else "-"
        lines.append(
            f"{r['stage']:<8} {r['passes_per_rank']:>11} {r['comm_mb_per_step']:>13,.1f} {r['comm_s']:>12.3f} "
            f"{r['roofline_s_1']:>15.3f} {r['roofline_s_n']:>15.3f} {measured:>16} {predicted:>16} "
            f"{r['roofline_s_1'] / r['roofline_s_n']:>7.2f}x"
        )
    return "\n".join(lines)


def format_plan(result: dict[str, Any]) -> str:
    soc = result["soc"]
    lines = [
        f"{result['pipeline']} at {result['shape']} ({result['dtype']}) on {soc['name']}: "
        f"{soc['peak_tflops']:.0f} TFLOP/s, {soc['hbm_gb']:.0f} GB at {soc['hbm_tb_s']} TB/s ({soc['source']})",
        f"DiT parameters: {result['dit_params_billion']:.2f} B",
        "",
        f"{'stage':<8} {'component':<22} {'calls':>6} {'GFLOP/call':>12} {'TFLOP total':>12} {'weights GB':>11} "
        f"{'act. GB':>8} {'roofline s/step':>16} {'published s/step':>17}",
    ]
    for r in result["rows"]:
        measured = f"{r['measured_s_per_step']:.2f}" if r["measured_s_per_step"] else "-"
        lines.append(
            f"{r['stage']:<8} {r['component']:<22} {r['calls']:>6} {r['gflop_per_call']:>12,.0f} "
            f"{r['tflop_total']:>12,.1f} {r['params_gb']:>11.2f} {r['activation_gb']:>8.2f} "
            f"{r['roofline_s']:>16.3f} {measured:>17}"
        )
    lines.append(f"total {result['total_tflop']:,.0f} TFLOP")
    if any(r["measured_s_per_step"] for r in result["rows"]):
        lines.append(f"published s/step, resident DiT: {PUBLISHED_910B_SOURCE}")
    if result["fits"]:
        lines.append(f"fits: the largest stage needs ~{result['peak_need_gb']:.1f} GB of {soc['hbm_gb']:.0f} GB")
    elif result["fitting_prefetch"] >= 0:
        lines.append(
            f"does not fit: ~{result['peak_need_gb']:.1f} GB needed, {soc['hbm_gb']:.0f} GB available: stream the "
            f"DiT's blocks ({result['block_gb']:.2f} GB each) from host memory with "
            f"--streaming-prefetch-count {result['fitting_prefetch']} (what --max-device-memory picks)"
        )
    else:
        lines.append(
            f"does not fit: ~{result['peak_need_gb']:.1f} GB needed, {soc['hbm_gb']:.0f} GB available, "
            "even streaming one block at a time"
        )
    if result["step_cache"] != "off":
        lines += ["", f"step cache {result['step_cache']}: predicted saving (roofline seconds)", _step_cache_header()]
        for r in (r for r in result["rows"] if r["component"].startswith("dit")):
            measured = f"{r['saved_measured_s']:.1f}" if r["saved_measured_s"] is not None else "-"
            lines.append(
                f"{r['stage']:<8} {100 * r['skipped_block_fraction']:>16.1f} {r['saved_tflop']:>12,.1f} "
                f"{r['saved_roofline_s']:>9.2f} {r['stage_roofline_s']:>11.2f} {measured:>27}"
            )
        share = result["saved_tflop"] / result["total_tflop"]
        lines.append(f"saved {result['saved_tflop']:,.0f} of {result['total_tflop']:,.0f} TFLOP ({100 * share:.1f} %)")
    if result["streaming"]:
        lines += ["", *format_streaming(result)]
    return "\n".join(lines)


def _streamed_stage(
    config: dict[str, Any],
    profile: ShapeProfile,
    st: PlannedStage,
    bytes_per: int,
    soc: Soc,
    prefetch: int,
    roofline_step_s: float,
    measured: dict[str, float],
    measured_streamed: dict[str, float],
) -> dict[str, Any]:
    """Memory and time per step of one stage with the DiT's blocks streamed, in two call patterns:
    every guidance pass of a step in one call (a batched compiled graph: blocks cross the host link
    once per step) and one pass per call (eager, as ltx-pipelines calls its transformer: once per pass).
    Compute per step is the published resident figure where there is one, else the roofline."""
    compute_s = measured.get(st.name) or roofline_step_s
    out: dict[str, Any] = {"stage": st.name, "compute_s_per_step": compute_s, "compute_measured": st.name in measured}
    for pattern, calls, passes_per_call in (
        ("batched", st.evals_per_step, st.passes),
        ("per_pass", st.evals_per_step * st.passes, 1),
    ):
        memory = dit_memory(config, profile, bytes_per, passes_per_call)
        call_s = streamed_call_seconds(compute_s / calls, memory, soc.h2d_gb_s * 1e9, prefetch)
        out[pattern] = {
            "calls_per_step": calls,
            "s_per_step": calls * call_s,
            "copy_s_per_call": memory.num_layers * memory.block_bytes / (soc.h2d_gb_s * 1e9),
            "peak_gb": memory.peak_bytes(prefetch) / 1e9,
            "resident_peak_gb": memory.peak_bytes(None) / 1e9,
            "weights_gb": memory.weight_bytes(prefetch) / 1e9,
            "blocks_on_device": memory.resident_blocks(prefetch),
            "num_layers": memory.num_layers,
        }
    out["published_streamed_s_per_step"] = measured_streamed.get(st.name)
    out["published_resident_s_per_step"] = measured.get(st.name)
    return out


def format_streaming(result: dict[str, Any]) -> list[str]:
    soc, rows = result["soc"], result["streaming"]
    prefetch = rows[0]["batched"]["blocks_on_device"] - 1
    lines = [
        f"streaming the DiT's blocks: {rows[0]['batched']['blocks_on_device']} of {rows[0]['batched']['num_layers']} "
        f"on the device ({result['block_gb']:.2f} GB each, prefetch {prefetch}), host link "
        f"{soc['h2d_gb_s']:.0f} GB/s; a step's compute is the published resident s/step (*) where there is one, "
        "else the roofline",
        f"{'stage':<8} {'calls/step':>10} {'compute s/step':>15} {'copy s/call':>12} {'peak GB':>8} "
        f"{'resident GB':>12} {'pred. s/step':>13} {'published s/step':>17}",
    ]
    for r in rows:
        compute = f"{r['compute_s_per_step']:.3f}" + ("*" if r["compute_measured"] else " ")
        for pattern, label in (("batched", "all passes per call"), ("per_pass", "one pass per call")):
            p = r[pattern]
            published = "-"
            if pattern == "per_pass" and r["published_streamed_s_per_step"]:
                published = f"{r['published_streamed_s_per_step']:.2f}"
            lines.append(
                f"{r['stage']:<8} {p['calls_per_step']:>10} {compute:>15} {p['copy_s_per_call']:>12.3f} "
                f"{p['peak_gb']:>8.2f} {p['resident_peak_gb']:>12.2f} {p['s_per_step']:>13.3f} {published:>17}  "
                f"{label}"
            )
    lines.append(
        f"published: {PUBLISHED_910B_SOURCE}; its streamed figure sits on the one-pass-per-call row "
        "(ltx-pipelines calls the transformer once per guidance pass)"
    )
    return lines


def _plan_parser() -> OneLineParser:
    """ltx-plan's flags: the run to plan, the SoC's figures, and the step cache, streaming, parallel,
    quantization and serving what-ifs."""
    parser = OneLineParser(prog="ltx-plan", description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", choices=tuple(PIPELINES))
    parser.add_argument("--shape", required=True, help="FRAMESxHEIGHTxWIDTH of the output, e.g. 41x1024x1536")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint-path", type=Path, help="read the config from a checkpoint's metadata")
    source.add_argument("--config", type=Path, help="a config JSON (default: the released LTX-2.3 22B)")
    parser.add_argument("--soc", default="Ascend910B4", choices=tuple(SOCS))
    parser.add_argument("--hbm-gb", type=float, help="device memory (default: the SoC's)")
    parser.add_argument("--peak-tflops", type=float, help="override the SoC's peak")
    parser.add_argument("--dtype", choices=tuple(dtypes.GRAPH_DTYPES), default="bfloat16")
    parser.add_argument(
        "--step-cache",
        default="off",
        metavar="SPEC",
        help="predict a step cache's saving: a block: SPEC exactly; auto with --expected-skip or an @FILE from "
        "ltx-run --step-cache-search (its measured per-stage skip ratios)",
    )
    parser.add_argument("--expected-skip", type=float, metavar="RATIO", help="auto: share of block calls skipped")
    parser.add_argument(
        "--streaming-prefetch-count",
        type=int,
        metavar="N",
        help="also predict peak device memory and s/step with the DiT's blocks streamed N ahead (ltx-run's flag)",
    )
    parser.add_argument("--h2d-gb-s", type=float, help="host-to-device bandwidth in GB/s (default: the SoC's link)")
    parser.add_argument("--json", type=Path, help="also write the plan as JSON")
    parser.add_argument(
        "--host-gb", type=float, default=512.0, help="host memory for the resident engine's parked models (512)"
    )
    parser.add_argument("--devices", type=int, default=1, help="devices of a multi-device run (with --parallel)")
    parser.add_argument("--parallel", default=None, metavar="cfg=C,ulysses=U", help="layout of the --devices")
    parser.add_argument("--link-gb-s", type=float, default=HCCS_LINK_GB_S, help="device-to-device GB/s per link")
    serve_plan.add_arguments(parser)
    parser.add_argument(
        "--quantization", choices=("w8a8",), default="", help="predict the DiT's block linears at the int8 rate"
    )
    parser.add_argument("--int8-speedup", type=float, default=INT8_SPEEDUP, help="int8 / bf16 matmul rate")
    return parser


def _check_plan_args(args: argparse.Namespace) -> Layout:
    """Refuse bad numbers and a layout that is not --devices before any model is built; the layout."""
    parse_shape(args.shape)
    serve_plan.check_arguments(args)
    from ltx_ascend.runtime.distributed import Layout

    check_finite(flag_values(vars(args)))
    examples = {"devices": "8", "hbm_gb": "64", "peak_tflops": "280", "h2d_gb_s": "25", "link_gb_s": "56"}
    for dest, example in examples.items():  # a count or size of 0 or less would print a plan, or divide by it
        if getattr(args, dest) is not None:
            positive(getattr(args, dest), f"--{dest.replace('_', '-')}", example=example)
    layout = Layout.parse(args.parallel) if args.parallel else Layout(cfg=args.devices)
    if layout.size != args.devices:
        raise UserError(
            f"--parallel {layout} is {layout.cfg} x {layout.ulysses} = {layout.size} devices, not --devices "
            f"{args.devices}: make C x U equal --devices"
        )
    if args.json is not None:
        from ltx_ascend.atomic import check_writable_file

        check_writable_file(args.json, "--json")
    return layout


def _plan_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model config: a checkpoint's metadata, a JSON file, or the released 22B's."""
    if args.checkpoint_path:
        return read_model_config(args.checkpoint_path)
    if args.config:
        try:
            return json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--config {args.config}: cannot read it as JSON ({exc})") from None
    return config_22b()


def _plan_soc(args: argparse.Namespace) -> Soc:
    """The SoC's figures with the flags' overrides (peak, memory, host link)."""
    soc = SOCS[args.soc]
    return Soc(
        soc.name,
        args.peak_tflops or soc.peak_tflops,
        args.hbm_gb or soc.hbm_gb,
        soc.hbm_tb_s,
        soc.source,
        args.h2d_gb_s or soc.h2d_gb_s,
    )


def _plan_step_cache(args: argparse.Namespace) -> tuple[StepCacheSpec, dict[str, float] | float | None]:
    """The step cache to predict and its expected skip share: the flag's, else an @FILE's measured ratios."""
    step_cache = parse_spec(args.step_cache)
    expected: dict[str, float] | float | None = args.expected_skip
    if expected is not None and not 0 <= expected <= 1:
        raise UserError(f"--expected-skip {expected}: a share of block calls, between 0 and 1")
    if expected is None and args.step_cache.startswith("@"):
        expected = read_skip_ratios(Path(args.step_cache[1:]).read_text()) or None
    return step_cache, expected


def _plan_what_ifs(
    args: argparse.Namespace, result: dict[str, Any], config: dict[str, Any], layout: Layout, step_cache: StepCacheSpec
) -> None:
    """The multi-device and composed (parallel x int8 x step cache) sections, printed and added to `result`."""
    if layout.size > 1:
        result["parallel"] = {
            "cfg": layout.cfg,
            "ulysses": layout.ulysses,
            "link_gb_s": args.link_gb_s,
            "link_source": HCCS_SOURCE,
            "stages": parallel_plan(result, config, layout.cfg, layout.ulysses, args.link_gb_s),
        }
        print()
        print(format_parallel(result["parallel"]["stages"], layout.cfg, layout.ulysses, args.link_gb_s))
    if layout.size > 1 or args.quantization or step_cache.active:
        if not args.int8_speedup > 0:
            raise UserError(f"--int8-speedup {args.int8_speedup}: a rate ratio > 0, e.g. 2")
        composed = composed_plan(
            result, config, layout.cfg, layout.ulysses, args.link_gb_s, args.quantization, args.int8_speedup
        )
        result["composed"] = {"quantization": args.quantization, "int8_source": INT8_SOURCE, "stages": composed}
        print()
        print(format_composed(composed, layout.cfg, layout.ulysses, args.quantization, str(step_cache)))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _plan_parser().parse_args(argv)
    layout = _check_plan_args(args)
    from ltx_ascend.runtime.distributed import check_heads

    config = _plan_config(args)
    soc = _plan_soc(args)
    if args.streaming_prefetch_count is not None and args.streaming_prefetch_count < 0:
        raise UserError(f"--streaming-prefetch-count {args.streaming_prefetch_count}: must be >= 0 (blocks ahead)")
    step_cache, expected = _plan_step_cache(args)
    where = f"--checkpoint-path {args.checkpoint_path}" if args.checkpoint_path else f"--config {args.config}"
    transformer = transformer_config(config, where)
    heads = {"video": transformer["num_attention_heads"], "audio": transformer["audio_num_attention_heads"]}
    check_heads(layout, heads)
    result = plan(
        args.pipeline, args.shape, config, soc, args.dtype, False, step_cache, expected,
        prefetch=args.streaming_prefetch_count,
    )  # fmt: skip
    if args.serve:
        result["serve"] = serve_plan.run(args, result, config)
    else:
        print(format_plan(result))
        memory = memory_plan(args.pipeline, args.shape, config, soc, args.dtype, args.host_gb)
        result["memory_policy"] = {name: {"place": p.place, "gb": p.weight_bytes * p.sets / 1e9}
                                   for name, p in memory.placements.items()}  # fmt: skip
        print()
        print("resident engine (ltx_ascend.Engine): " + memory.describe())
    _plan_what_ifs(args, result, config, layout, step_cache)
    if args.json:
        from ltx_ascend.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
