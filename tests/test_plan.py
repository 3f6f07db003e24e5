"""ltx-plan: FLOP and byte counts from the config alone, checked against torch's flop counter and the
weights themselves."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ltx_ascend.checkpoints.loader import load_component, read_model_config
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.export import dit
from ltx_ascend.shapes import shape_profile
from ltx_ascend.tools import plan
from tests.conftest import run_cli


def test_analytic_dit_flops_match_torch_flop_counter_within_2_percent(tiny):
    model = load_component("dit", tiny.checkpoint_set())
    profile = shape_profile("17x256x384", stage=1, text_tokens=128)
    passes = dit.guidance_passes([1])[:1]
    feeds, video_pos, audio_pos = dit.sample_feeds(model, profile, passes)
    # The math SDPA backend: torch's flop counter has no formula for the CPU flash-attention kernel.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        dit.eager_dit(model, feeds, video_pos, audio_pos, passes)
    traced = counter.get_total_flops()
    analytic = plan.dit_flops_per_pass(plan.meta_dit(read_model_config(tiny.checkpoint)), profile)["total"]
    assert abs(analytic - traced) / traced < 0.02, (analytic, traced)


def test_22b_parameter_count_from_config():
    model = plan.meta_dit(config_22b())
    # 18.99 B in the transformer, 386.7 M per block (docs/reference-figures.md, counted with ltx-core)
    assert abs(plan.param_count(model) - 18.99e9) / 18.99e9 < 0.005
    assert abs(plan.param_count(model.transformer_blocks[0]) - 386.7e6) / 386.7e6 < 0.001


def test_plan_weight_bytes_are_the_weights_bytes(tiny):
    """Every component's weight bytes in the plan (from the config, on meta) equal the loaded weights'."""
    config = read_model_config(tiny.checkpoint)
    result = plan.plan("ti2vid_two_stages", "9x128x192", config, plan.SOCS["Ascend910B4"], "float32", False)
    rows = {r["component"].split(" ")[0]: r for r in result["rows"]}
    for component in ("dit", "video_decoder", "audio_decoder", "vocoder"):
        model = load_component(component, tiny.checkpoint_set())
        loaded = sum(p.numel() * p.element_size() for p in model.parameters())
        assert abs(rows[component]["params_gb"] * 1e9 - loaded) <= 1e-6 * loaded + 1, (component, rows[component])


def test_plan_fit_and_streaming_follow_the_memory(tmp_path, capsys):
    """The 22B plan fits 64 GB; at 32 GB the DiT must stream enough blocks to fit 90 % of it."""
    argv = ["ti2vid_two_stages", "--shape", "41x1024x1536", "--json", str(tmp_path / "a")]
    code, _, err = run_cli(plan.main, argv, capsys)
    assert code == 0, err
    fits = json.loads((tmp_path / "a").read_text())
    assert fits["fits"] and fits["stream_blocks"] == 0 and abs(fits["dit_params_billion"] - 18.99) < 0.1
    argv = ["ti2vid_two_stages", "--shape", "41x1024x1536", "--hbm-gb", "32", "--json", str(tmp_path / "b")]
    code, _, err = run_cli(plan.main, argv, capsys)
    assert code == 0, err
    tight = json.loads((tmp_path / "b").read_text())
    over = tight["peak_need_gb"] - 32 * 0.9
    assert not tight["fits"] and tight["stream_blocks"] == math.ceil(over / tight["block_gb"])
    assert tight["block_gb"] == pytest.approx(386.7e6 * 2 / 1e9, rel=1e-3)  # one block in bfloat16


def test_plan_bad_shape(capsys):
    code, _, err = run_cli(plan.main, ["distilled", "--shape", "40x1024x1536"], capsys)
    assert code == 2 and "8k+1" in err


def test_plan_rows_are_the_pipelines_declared_stages(tiny):
    """Every pipeline's DiT rows are its module's STAGES at its defaults (tests/test_stages.py ties those
    to what the pipeline runs): ic_lora and distilled sample stage 1 on the distilled sigmas with one
    pass a step and stage 2 on the distilled tail."""
    from ltx_ascend.engine import params as P
    from ltx_ascend.engine.stages import PIPELINES, declared_stages

    config = read_model_config(tiny.checkpoint)
    for name in PIPELINES:
        result = plan.plan(name, "9x128x192", config, plan.SOCS["Ascend910B4"], "float32")
        rows = [(r["stage"], r["calls"]) for r in result["rows"] if r["component"].startswith("dit")]
        assert rows == [(s.name, s.evaluations * s.passes) for s in declared_stages(name)], name
    # A calibration file names stages as the timing table does ("denoise" for a one-stage pipeline).
    from ltx_ascend.engine.step_cache import parse_spec

    cached = plan.plan("retake", "9x128x192", config, plan.SOCS["Ascend910B4"], "float32",
                       step_cache=parse_spec("auto:stages=1"), expected_skip={"denoise": 0.5})  # fmt: skip
    assert [r["skipped_block_fraction"] for r in cached["rows"] if r["component"].startswith("dit")] == [0.5]
    for name in ("ic_lora", "distilled"):
        first, second = declared_stages(name)
        assert (first.steps, first.passes) == (len(P.DISTILLED_SIGMA_VALUES) - 1, 1), name
        assert (second.steps, second.passes) == (len(P.STAGE_2_DISTILLED_SIGMA_VALUES) - 1, 1), name


def test_plan_composed_step(capsys, tmp_path):
    """ltx-plan --devices 8 --parallel cfg=2,ulysses=4 --quantization w8a8 --step-cache SPEC: the composed step.
    With the int8 rate at 1x and no cache it is exactly the parallel plan's step; W8A8 and the cache cut
    it by the linear share and the skipped share; the output names which factors are published."""
    import json

    from tests.conftest import run_cli

    base = ["ti2vid_two_stages", "--shape", "41x1024x1536", "--devices", "8", "--parallel", "cfg=2,ulysses=4"]
    plain = tmp_path / "plain.json"
    code, _, err = run_cli(plan.main, [*base, "--quantization", "w8a8", "--int8-speedup", "1", "--json", str(plain)],
                           capsys)  # fmt: skip
    assert code == 0, err
    body = json.loads(plain.read_text())
    for par, comp in zip(body["parallel"]["stages"], body["composed"]["stages"], strict=True):
        assert comp["step_s"] == pytest.approx(par["predicted_s_n"], rel=1e-9), (par, comp)
    report = tmp_path / "composed.json"
    argv = [*base, "--quantization", "w8a8", "--step-cache", "block:start=2,interval=2", "--json", str(report)]
    code, out, err = run_cli(plan.main, argv, capsys)
    assert code == 0, err
    assert "composed step on 8 devices: cfg=2 x ulysses=4, w8a8 block linears" in out
    assert "published, not measured here" in out and "INT8 rate = 2 x FP16" in out and "measured here (CPU" in out
    stage1 = json.loads(report.read_text())["composed"]["stages"][0]
    flat = next(s for s in body["composed"]["stages"] if s["stage"] == "stage 1")
    from ltx_ascend.engine.step_cache import parse_spec

    planned = next(s for s in plan.pipeline_stages("ti2vid_two_stages") if s.name == "stage 1")
    skip = plan.skipped_block_fraction(parse_spec("block:start=2,interval=2"), planned, 48, None)
    assert stage1["skipped_block_fraction"] == pytest.approx(skip) and 0.3 < skip < 0.6
    lin = stage1["linear_share"]
    blocks_share = flat["blocks_s"] / (flat["blocks_s"] + flat["outside_s"])  # linear + attention of the step
    want = flat["blocks_s"] * (lin / 2 + blocks_share - lin) / blocks_share * (1 - skip)
    assert stage1["blocks_s"] == pytest.approx(want, rel=1e-9)
    assert stage1["step_s"] < flat["step_s"] / 2  # int8 on ~90 % of the FLOPs, and ~47 % of the block calls skipped
    code, _, err = run_cli(plan.main, [*base, "--quantization", "w8a8", "--int8-speedup", "0"], capsys)
    assert code == 2 and "--int8-speedup 0" in err
