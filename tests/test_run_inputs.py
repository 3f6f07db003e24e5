"""ltx-run's command line: the LTX-2.3 Ascend guide's commands as written, and bad input refused in one
line before any model loads or anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ltx_ascend.engine.text as text
from ltx_ascend import selfcheck
from ltx_ascend.errors import cli_entry
from ltx_ascend.tools import bench, plan
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.test_pipeline_a2vid_two_stage import sine, write_wav
from tests.test_pipeline_ic_lora import write_video

PROMPT = "A red fox runs through fresh snow at dawn"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("guide-media")
    ramp = np.linspace(0, 255, 64 * 96 * 3).reshape(64, 96, 3).astype(np.uint8)
    Image.fromarray(ramp).save(folder / "first_frame.png")
    Image.fromarray(ramp[::-1].copy()).save(folder / "last_frame.png")
    (folder / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    return {
        "first_frame.png": folder / "first_frame.png",
        "last_frame.png": folder / "last_frame.png",
        "not_an_image.png": folder / "not_an_image.png",
        "speech.wav": write_wav(folder / "speech.wav", sine(2, seconds=6.0)),
        "source.mp4": write_video(folder / "source.mp4", frames=9, height=96, width=160),
        "control.mp4": write_video(folder / "control.mp4", frames=9, height=96, width=160),
    }


def guide_commands(tiny, media) -> dict[str, list[str]]:
    """Every command of the LTX-2.3 Ascend guide (docs/design/pipelines.md), `python -m ltx_pipelines.X`
    written as `ltx-run X`, with the tiny set's files in place of the released ones."""
    dev = ["--checkpoint-path", str(tiny.checkpoint)]
    gemma = ["--gemma-root", str(tiny.gemma_root)]
    upsampler = ["--spatial-upsampler-path", str(tiny.spatial_upsampler)]
    distilled_lora = ["--distilled-lora", str(tiny.distilled_lora), "0.8"]
    size = ["--height", "1024", "--width", "1536", "--num-frames", "121"]
    prompt = ["--prompt", PROMPT]
    return {
        "ti2vid_two_stages": [
            "ti2vid_two_stages", *dev, *distilled_lora, *upsampler, *gemma, *prompt, *size,
            "--backend", "om", "--soc", "Ascend910B4",
        ],
        "ti2vid_two_stages_hq": [
            "ti2vid_two_stages_hq", *dev, *distilled_lora, *upsampler, *gemma, *prompt,
            "--distilled-lora-strength-stage-1", "0.25", "--distilled-lora-strength-stage-2", "0.5",
        ],
        "ti2vid_one_stage": [
            "ti2vid_one_stage", *dev, *gemma, *prompt, "--image", str(media["first_frame.png"]), "0", "1.0",
        ],
        "distilled": [
            "distilled", "--distilled-checkpoint-path", str(tiny.checkpoint), *upsampler, *gemma, *prompt,
            "--image", str(media["first_frame.png"]), "0", "1.0",
        ],
        "keyframe_interpolation": [
            "keyframe_interpolation", *dev, *distilled_lora, *upsampler, *gemma, *prompt, *size,
            "--image", str(media["first_frame.png"]), "0", "0.8", "--image", str(media["last_frame.png"]), "-1", "0.8",
        ],
        "a2vid_two_stage": [
            "a2vid_two_stage", *dev, *distilled_lora, *upsampler, *gemma, *prompt, *size,
            "--audio-path", str(media["speech.wav"]),
        ],
        "retake": [
            "retake", *dev, *gemma, *prompt, "--video-path", str(media["source.mp4"]),
            "--start-time", "0.1", "--end-time", "0.3", "--loras", str(tiny.distilled_lora),
        ],
        "ic_lora": [
            "ic_lora", "--distilled-checkpoint-path", str(tiny.checkpoint), *upsampler, *gemma, *prompt, *size,
            "--lora", str(tiny.ic_lora), "1.0", "--video-conditioning", str(media["control.mp4"]), "1.0",
        ],
    }  # fmt: skip


def test_every_guide_command_passes_parsing_and_input_checks(tiny, media, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = guide_commands(tiny, media)
    assert sorted(commands) == sorted(cli.PIPELINES)  # every pipeline has its guide command here
    for name, argv in commands.items():
        checked = cli.parse_and_check(argv)
        assert checked.args.pipeline == name and not checked.tiny
    assert not list(tmp_path.iterdir())  # checking wrote nothing


def test_guide_keyframe_minus_one_is_the_last_frame(tiny, media, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checked = cli.parse_and_check(guide_commands(tiny, media)["keyframe_interpolation"])
    assert [image.frame_idx for image in checked.request.images] == [0, 120]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "frame 120 of 121" in notes[0] and "ltx-pipelines 1.0.0" in notes[0]


def test_retake_loras_are_fused_at_strength_one(tiny, media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checked = cli.parse_and_check(guide_commands(tiny, media)["retake"])
    assert [(lora.path, lora.strength) for lora in checked.args.lora] == [(tiny.distilled_lora, 1.0)]


def _argv(tiny, tmp_path, *extra) -> list[str]:
    base = ["ti2vid_two_stages", *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path / "a")]
    return [*base, "--output-path", str(tmp_path / "out.mp4"), *extra]


BAD = [
    (["--frame-rate", "0"], "--frame-rate 0"),
    (["--frame-rate", "-24"], "--frame-rate -24"),
    (["--frame-rate", "nan"], "--frame-rate nan"),
    (["--lora", "{lora}", "nan"], "finite"),
    (["--distilled-lora", "{lora}", "inf"], "finite"),
    (["--image", "{bad_image}", "0", "1.0"], "cannot decode it as an image"),
    (["--image", "{image}", "-10", "1.0"], "counted from the end"),
    (["--image", "{image}", "0", "nan"], "finite"),
    (["--backend", "dti=om"], "no component 'dti'; components: dit, text_connectors"),
    (["--num-frames", "abc"], "invalid int value: 'abc'"),
    (["--output-path", "{tmp}/missing/out.mp4"], "does not exist"),
    (["--output-path", "{tmp}"], "must end in .mp4"),
    (["--output-path", "/proc/ltx-ascend-test.mp4"], "cannot write in /proc"),
    (["--raw-output", "{tmp}/missing/raw.safetensors"], "--raw-output"),
    (["--timings-json", "{tmp}/missing/t.json"], "--timings-json"),
    (["--timings-json", "{tmp}"], "is a folder"),
    (["--backend", "vocoder=ort", "--fallback", "none"], "vocoder: missing"),
]


@pytest.mark.parametrize(("extra", "needle"), BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_input_is_one_line_before_any_model_loads(tiny, media, tmp_path, monkeypatch, capsys, extra, needle):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input checks finished")

    monkeypatch.setattr(text, "load_component", forbidden)
    names = {"lora": tiny.distilled_lora, "tmp": tmp_path, "image": media["first_frame.png"]}
    names["bad_image"] = media["not_an_image.png"]
    extra = [e.format(**names) for e in extra]
    code, _, err = run_cli(cli.main, _argv(tiny, tmp_path, *extra), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "a" / "prompt-cache").exists() and not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(
    ("main", "argv", "needle"),
    [
        (cli.main, ["ti2vid_three_stages"], "invalid choice: 'ti2vid_three_stages'"),
        (plan.main, ["ti2vid_three_stages", "--shape", "41x1024x1536"], "invalid choice: 'ti2vid_three_stages'"),
        (plan.main, ["ti2vid_two_stages", "--shape", "abc"], "expected FRAMESxHEIGHTxWIDTH"),
        (bench.main, ["--shape", "abc"], "expected FRAMESxHEIGHTxWIDTH"),
    ],
)
def test_usage_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, main, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(main, argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "usage:" not in err and not list(tmp_path.iterdir())


def test_internal_errors_keep_their_traceback(capsys):
    @cli_entry
    def buggy(argv=None):
        raise KeyError("a bug of ours")

    code, _, err = run_cli(buggy, [], capsys)
    assert code == 1 and "Traceback" in err and "internal error: KeyError" in err


def test_selfcheck_reports_a_failing_import(monkeypatch):
    monkeypatch.setattr(selfcheck, "NATIVE_MODULES", {**selfcheck.NATIVE_MODULES, "ltx_no_such_module": "ltx-nope"})
    failures = selfcheck.check_imports()
    assert len(failures) == 1 and "import ltx_no_such_module failed (ltx-nope)" in failures[0]

