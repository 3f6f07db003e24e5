"""Step cache (--step-cache): off is bit-exact, a cached run skips what its SPEC says (counted),
eager and ORT cached runs agree, bad SPECs are one-line errors, the search picks what it measured."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch

from ltx_ascend.engine.step_cache import StepCacheSpec, parse_spec
from ltx_ascend.engine.step_cache_search import read_skip_ratios, search_step_cache
from ltx_ascend.errors import UserError
from ltx_ascend.metrics import compare, ssim
from ltx_ascend.tools import plan
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli

STEPS = H.SETTINGS["num_inference_steps"]  # 3
TINY_BLOCKS = 2
GUIDED_PASSES = 4  # cond, uncond, STG, modality isolation at LTX-2.3's guidance
CACHED_MIN_PSNR_DB = 35.0


def _dit(tmp_path, name: str) -> dict[str, dict]:
    stages = json.loads((tmp_path / name).read_text())["stages"]
    return {s["name"]: s["dit"] for s in stages if "dit" in s}


def test_spec_parsing_round_trips_and_names_defaults():
    spec = parse_spec("block:start=2,end=20,interval=3,blocks=4-43,stages=1+2")
    assert (spec.start, spec.end, spec.interval, spec.blocks, spec.stages) == (2, 20, 3, (4, 43), frozenset({1, 2}))
    assert parse_spec(str(spec)) == spec
    assert parse_spec("auto") == StepCacheSpec(policy="auto")
    assert parse_spec("auto:threshold=0.3").threshold == 0.3
    assert not parse_spec("off").active
    assert parse_spec("auto").applies_to(None) and not parse_spec("auto").applies_to(2)
    # steps 2..9 at interval 3 from start 2: 3, 4, 6, 7, 9 reuse
    assert parse_spec("block:start=2,interval=3").reused_steps(10) == 5


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("fast", "unknown policy"),
        ("block:interval=0", "interval=0"),
        ("block:start=x", "start=x"),
        ("block:threshold=0.1", "not a block setting"),
        ("auto:threshold=-1", "threshold=-1"),
        ("block:blocks=5-2", "blocks=5-2"),
        ("block:start=4,end=3", "end=3"),
        ("auto:stages=3", "stages=3"),
        ("block:blocks=0-2", "the DiT has 2 blocks"),
        ("@missing.spec", "cannot read"),
    ],
)
def test_bad_specs_are_one_line_errors(tiny, tmp_path, capsys, spec, needle):
    argv = ["ti2vid_two_stages", *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path)]
    argv += ["--step-cache", spec, "--output-path", str(tmp_path / "o.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize("pipeline", ["ti2vid_two_stages", "ti2vid_one_stage"])
def test_off_is_bit_exact_and_a_block_cache_skips_what_it_says(tiny, tmp_path, pipeline):
    run = functools.partial(H.run_ours, distilled=pipeline == "ti2vid_two_stages")
    plain = run(pipeline, tiny, tmp_path, "--timings-json", str(tmp_path / "plain.json"))
    off = run(pipeline, tiny, tmp_path, "--step-cache", "off", "--timings-json", str(tmp_path / "o.json"))
    assert torch.equal(plain["video"], off["video"]) and torch.equal(plain["audio"], off["audio"])
    first = "stage 1" if pipeline == "ti2vid_two_stages" else "denoise"
    full = STEPS * GUIDED_PASSES * TINY_BLOCKS
    for name in ("plain.json", "o.json"):
        assert _dit(tmp_path, name)[first]["block_calls_run"] == full
        assert _dit(tmp_path, name)[first]["block_calls_skipped"] == 0

    # Steps 0 and 1 compute (1 is the interval's recompute step), step 2 reuses block 1 only.
    spec = "block:start=1,interval=2,blocks=1-1"
    cached = run(pipeline, tiny, tmp_path, "--step-cache", spec, "--timings-json", str(tmp_path / "c.json"))
    counts = _dit(tmp_path, "c.json")[first]
    assert counts["block_calls_skipped"] == GUIDED_PASSES * 1
    assert counts["block_calls_run"] == full - GUIDED_PASSES
    frames = compare(off["video"].float(), cached["video"].float(), peak=255.0)
    assert not torch.equal(off["video"], cached["video"])  # the cache did change something
    assert frames.psnr_db >= CACHED_MIN_PSNR_DB, frames
    if pipeline == "ti2vid_two_stages":  # stage 2 (3 distilled steps, 1 pass) is left uncached by default
        assert _dit(tmp_path, "c.json")["stage 2"]["block_calls_skipped"] == 0
        assert _dit(tmp_path, "c.json")["stage 2"]["block_calls_run"] == 3 * TINY_BLOCKS


def test_eager_and_ort_cached_runs_match(tiny, tmp_path):
    """The tiny DiT exports whole by default: the cache must ask for (and build) the block chain."""
    spec = ["--step-cache", "auto:threshold=3,warmup=2", "--num-inference-steps", "5"]
    run = functools.partial(H.run_ours, "ti2vid_one_stage", tiny, tmp_path, *spec, distilled=False)
    eager = run("--timings-json", str(tmp_path / "e.json"))
    ort = run("--timings-json", str(tmp_path / "o.json"), backend="dit=ort")
    e, o = _dit(tmp_path, "e.json")["denoise"], _dit(tmp_path, "o.json")["denoise"]
    assert e["block_calls_skipped"] > 0
    assert (e["block_calls_run"], e["block_calls_skipped"]) == (o["block_calls_run"], o["block_calls_skipped"])
    frames = compare(eager["video"].float(), ort["video"].float(), peak=255.0)
    print(f"cached eager vs ort: frames PSNR {frames.psnr_db:.1f} dB, SSIM {ssim(eager['video'], ort['video']):.4f}")
    assert frames.psnr_db >= CACHED_MIN_PSNR_DB, frames
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "artifacts" / "dit").glob("*/*/manifest.json")]
    assert any("dit-block" in m["io"]["graphs"] for m in manifests)


def _fake_run(skips_by_threshold: dict[float, tuple[int, float]]):
    """A stand-in pipeline: frames whose error and skip count follow the table, per threshold."""
    reference = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)

    def run(spec: StepCacheSpec):
        skipped, error = (0, 0.0) if not spec.active else skips_by_threshold.get(spec.threshold, (0, 99.0))
        frames = (reference.float() + error * torch.linspace(-1, 1, reference.numel()).reshape(reference.shape)).round()
        stage = SimpleNamespace(
            name="stage 1", dit=SimpleNamespace(block_calls_run=100 - skipped, block_calls_skipped=skipped, seconds=1.0)
        )
        stage.dit.skip_ratio = skipped / 100
        return SimpleNamespace(frames=frames.clamp(0, 255).to(torch.uint8)), SimpleNamespace(stages=[stage])

    return run


def test_search_keeps_the_most_skipping_setting_that_meets_the_target(tmp_path):
    # 0.05 .. 0.4 meet 35 dB, 0.8 misses; bisection then tries 0.6 (meets) and 0.7 (misses), 0.65 (meets)
    table = {0.05: (10, 1.0), 0.1: (20, 1.0), 0.2: (30, 2.0), 0.4: (40, 3.0), 0.8: (60, 20.0)}
    table |= {0.6: (50, 4.0), 0.7: (55, 20.0), 0.65: (52, 4.0)}
    out = tmp_path / "cache.spec"
    chosen = search_step_cache(
        _fake_run(table), template=StepCacheSpec(policy="auto"), target_psnr=35.0, steps=20, out=out, describe="t"
    )
    assert chosen.threshold == 0.65
    assert parse_spec(f"@{out}") == chosen
    assert read_skip_ratios(out.read_text()) == {"stage 1": 0.52}
    # nothing meets the target: the file says off
    chosen = search_step_cache(
        _fake_run({t: (10, 50.0) for t in table}),
        template=StepCacheSpec(policy="auto"),
        target_psnr=35.0,
        steps=20,
        out=out,
        describe="t",
    )
    assert not chosen.active and parse_spec(f"@{out}") == StepCacheSpec()


def test_plan_predicts_block_savings_and_needs_a_ratio_for_auto(capsys):
    config = plan.config_22b()
    soc = plan.SOCS["Ascend910B4"]
    cached = plan.plan("ti2vid_two_stages", "41x1024x1536", config, soc, step_cache=parse_spec("block:interval=2"))
    stage1 = next(r for r in cached["rows"] if r["stage"] == "stage 1")
    assert stage1["skipped_block_fraction"] == pytest.approx(14 / 30)  # of steps 1..29, 2, 4, .., 28 reuse
    # the blocks' FLOPs only (embeddings and output head still run): a little under 14/30 of the stage
    assert 0.9 * 14 / 30 * stage1["tflop_total"] < stage1["saved_tflop"] < 14 / 30 * stage1["tflop_total"]
    assert next(r for r in cached["rows"] if r["stage"] == "stage 2")["saved_tflop"] == 0
    with pytest.raises(UserError, match="expected-skip"):
        plan.plan("ti2vid_two_stages", "41x1024x1536", config, soc, step_cache=parse_spec("auto"))
    code, out, err = run_cli(
        plan.main,
        ["ti2vid_two_stages", "--shape", "41x1024x1536", "--step-cache", "auto", "--expected-skip", "0.4"],
        capsys,
    )
    assert code == 0, err
    assert "predicted saving" in out


def test_ic_lora_attention_mask_refuses_a_step_cache(tiny, tmp_path, capsys):
    """ltx-core's whole transformer runs that stage: a cache there would silently do nothing, so it is refused."""
    from ltx_ascend.pipelines import ic_lora
    from tests import test_pipeline_ic_lora as IC

    control = IC.write_video(tmp_path / "control.mp4")
    mask = IC.write_video(tmp_path / "mask.mp4", gray=True)
    argv = IC.argv_for(tiny, control, ic_lora.MASK_FLAG, str(mask), "0.7", "--skip-stage-2", "--backend", "eager")
    argv += ["--artifacts", str(tmp_path / "a"), "--output-path", str(tmp_path / "o.mp4"), "--step-cache", "auto"]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "no block chain to cache" in err, err
    assert not (tmp_path / "o.mp4").exists()


# Held-out tiny sets: other widths, depth and seed than the project's set, on which the default threshold
# was chosen (and other than the two sets it was then checked on, docs/benchmarks-composition.md).
HELD_OUT_SETS = {
    "c": (11, {"heads": 4, "video_head_dim": 12, "audio_head_dim": 6, "layers": 3}),
    "d": (5, {"heads": 2, "video_head_dim": 32, "audio_head_dim": 8, "layers": 5}),
}
HELD_OUT_MIN_PSNR_DB = 38.0
HELD_OUT_MIN_SKIP = 0.25


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HELD_OUT_SETS))
def test_auto_default_carries_over_to_held_out_sets(tmp_path, name):
    """`--step-cache auto` at its default threshold on a tiny DiT no test tuned on (20 steps, 17x128x192,
    ti2vid_two_stages): it skips a meaningful share of stage 1's block calls at a PSNR bound.
    `python -m pytest tests/test_step_cache.py -m slow -s`"""
    from ltx_ascend.checkpoints.tiny import write_tiny_set

    seed, dit = HELD_OUT_SETS[name]
    held_out = write_tiny_set(tmp_path / "set", seed, dit)
    settings = ["--num-inference-steps", "20", "--num-frames", "17", "--height", "128", "--width", "192"]
    runs = {}
    for spec in ("off", "auto"):
        out = tmp_path / spec
        out.mkdir()
        runs[spec] = H.run_ours("ti2vid_two_stages", held_out, out, *settings, "--step-cache", spec,
                                "--timings-json", str(out / "t.json"))  # fmt: skip
    counts = _dit(tmp_path / "auto", "t.json")["stage 1"]
    skip = counts["block_calls_skipped"] / (counts["block_calls_skipped"] + counts["block_calls_run"])
    frames = compare(runs["off"]["video"].float(), runs["auto"]["video"].float(), peak=255.0)
    print(f"held-out set {name} {dit} seed {seed}: auto skipped {skip:.0%} at {frames.psnr_db:.1f} dB")
    assert skip >= HELD_OUT_MIN_SKIP and frames.psnr_db >= HELD_OUT_MIN_PSNR_DB, (skip, frames)
