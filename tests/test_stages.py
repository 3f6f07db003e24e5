"""Each pipeline's declared stages (`STAGES`, what ltx-plan reads) are what it runs: on the tiny set,
every sampling stage's DiT work, counted by the runner, equals the declaration's evaluations x
passes, in the declared order and at the declared step count."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ltx_ascend.checkpoints.loader import read_model_config
from ltx_ascend.engine.stages import PIPELINES, StageSpec, declared_stages, pipeline_module
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests import test_pipeline_a2vid_two_stage as A2V
from tests import test_pipeline_distilled as D
from tests import test_pipeline_ic_lora as IC
from tests import test_pipeline_keyframe_interpolation as KF
from tests import test_pipeline_retake as RT


def _argv(pipeline: str, tiny, media: Path) -> list[str]:
    """The pipeline's own test arguments (tiny set, 9 frames, 3 steps where steps are a flag)."""
    if pipeline == "distilled":
        return ["distilled", *D.checkpoint_args(tiny), *D.setting_args()]
    if pipeline == "ic_lora":
        return IC.argv_for(tiny, IC.write_video(media / "control.mp4"))
    if pipeline == "retake":
        s = H.SETTINGS
        source = RT.write_mp4(media / "source.mp4", s["num_frames"], s["height"], s["width"])
        return ["retake", *H.checkpoint_args(tiny, distilled=False), *RT.retake_args(source)]
    extra = []
    if pipeline == "keyframe_interpolation":
        extra = KF.image_args(KF.keyframes(media))
    if pipeline == "a2vid_two_stage":
        extra = ["--audio-path", str(A2V.write_wav(media / "stereo.wav", A2V.sine(2)))]
    distilled = pipeline != "ti2vid_one_stage"
    return [pipeline, *H.checkpoint_args(tiny, distilled=distilled), *H.setting_args(), *extra]


@pytest.fixture(scope="module")
def prompt_cache(tmp_path_factory) -> Path:
    """One prompt cache for the eight runs: Gemma encodes each prompt once."""
    return tmp_path_factory.mktemp("stages-prompts")


@pytest.mark.parametrize("pipeline", tuple(PIPELINES))
def test_declared_stages_are_what_the_pipeline_runs(pipeline, tiny, tmp_path, prompt_cache):
    media = tmp_path / "media"
    media.mkdir()
    argv = _argv(pipeline, tiny, media)
    if pipeline != "distilled" and pipeline != "ic_lora":  # their steps are the sigma tables'
        argv += ["--num-inference-steps", "2"]
    req = cli.parse_and_check(argv).request
    specs = pipeline_module(pipeline).STAGES
    declared = [s.plan(req.num_inference_steps, req.video_guider, req.audio_guider) for s in specs]
    timings = tmp_path / "timings.json"
    argv += [
        "--backend", "eager", "--dtype", "float32", "--artifacts", str(tmp_path / "artifacts"),
        "--output-path", str(tmp_path / "out.mp4"), "--timings-json", str(timings), "--prompt-cache", str(prompt_cache),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    layers = read_model_config(tiny.checkpoint)["transformer"]["num_layers"]
    ran = [s for s in json.loads(timings.read_text())["stages"] if "dit" in s]  # every stage that ran the DiT
    assert [s["name"] for s in ran] == [d.name for d in declared]
    for stage, d in zip(ran, declared, strict=True):
        assert stage["steps"] == d.steps, (stage, d)
        assert stage["dit"]["block_calls_skipped"] == 0
        assert stage["dit"]["block_calls_run"] == d.dit_passes * layers, (stage, d)
        assert stage["plan"] == dataclasses.asdict(d)  # the timing table carries the declaration


def test_plan_reads_the_declaration_at_the_pipelines_defaults():
    """ltx-plan's stage rows come from each module's STAGES at its DEFAULTS: the distilled pipelines run
    8 + 3 one-pass steps, retake 40 guided steps (its default), HQ res_2s 2 evaluations a step plus
    the last one at sigma 0, with 3 passes (no STG)."""
    rows = {p: [(s.name, s.stage, s.evaluations, s.passes) for s in declared_stages(p)] for p in PIPELINES}
    assert rows["ic_lora"] == rows["distilled"] == [("stage 1", 1, 8, 1), ("stage 2", 2, 3, 1)]
    assert rows["ti2vid_two_stages"] == rows["keyframe_interpolation"] == rows["a2vid_two_stage"]
    assert rows["ti2vid_two_stages"] == [("stage 1", 1, 30, 4), ("stage 2", 2, 3, 1)]
    assert rows["ti2vid_two_stages_hq"] == [("stage 1", 1, 31, 3), ("stage 2", 2, 7, 1)]
    assert rows["retake"] == [("denoise", None, 40, 4)]
    assert rows["ti2vid_one_stage"] == [("denoise", None, 30, 4)]


def test_a_sigma_table_must_end_at_zero():
    """The evaluation count (and res_2s' last call) assume it."""
    with pytest.raises(ValueError, match="ends at 0"):
        StageSpec("x", 2, (1.0, 0.5))
    assert dataclasses.replace(StageSpec("x", 2, (1.0, 0.0)), sampler="res2s").evaluations(1) == 3


def test_library_warnings_print_as_the_clis_printed_them(capsys):
    """Library code logs; the console handler every CLI installs prints the message alone, warnings on
    stderr and info on stdout, to the streams of the moment."""
    import logging

    logging.getLogger("ltx_ascend.engine.stack").warning("warning: dit: %s; falling back to eager", "why")
    logging.getLogger("ltx_ascend.pipelines.retake").info("seed %d", 7)
    out, err = capsys.readouterr()
    assert (out, err) == ("seed 7\n", "warning: dit: why; falling back to eager\n")
