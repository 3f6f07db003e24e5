"""ltx-plan: FLOP and parameter counts from the config alone, checked against tracing and FACTS.md."""

from __future__ import annotations

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
    assert abs(plan.param_count(model) - 18.99e9) / 18.99e9 < 0.005  # FACTS.md: 18.99B in the transformer
    assert abs(plan.param_count(model.transformer_blocks[0]) - 386.7e6) / 386.7e6 < 0.001


def test_plan_22b_user_shape(capsys):
    code, out, err = run_cli(plan.main, ["ti2vid_two_stages", "--shape", "41x1024x1536"], capsys)
    assert code == 0, err
    assert "18.99 B" in out and "2.68" in out and "fits" in out
    code, out, _ = run_cli(plan.main, ["ti2vid_two_stages", "--shape", "41x1024x1536", "--hbm-gb", "32"], capsys)
    assert code == 0 and "stream" in out


def test_plan_bad_shape(capsys):
    code, _, err = run_cli(plan.main, ["distilled", "--shape", "40x1024x1536"], capsys)
    assert code == 2 and "8k+1" in err


def test_distilled_stages_follow_the_pipelines_sigma_tables():
    """ic_lora and distilled sample stage 1 on the distilled sigmas with one pass a step, stage 2 on
    the distilled tail: the plan's stage table must say what those pipelines run."""
    from ltx_ascend.pipelines import params as P
    from ltx_ascend.tools.plan import PIPELINE_STAGES

    for name in ("ic_lora", "distilled"):
        first, second = PIPELINE_STAGES[name]
        assert (first.steps, first.passes) == (len(P.DISTILLED_SIGMA_VALUES) - 1, 1), name
        assert (second.steps, second.passes) == (len(P.STAGE_2_DISTILLED_SIGMA_VALUES) - 1, 1), name
