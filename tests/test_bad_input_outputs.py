"""Outputs never overwrite inputs or each other: --output-path, --raw-output, --timings-json and
--step-cache-out are each a file of their own, and none is a file the run reads (the checkpoint,
LoRAs, upsampler, images, audio, video, the Gemma root's files) - the same file, not just the same
string (a symlink, a hard link, `./x` for `x`). Refused in one line before anything loads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import ltx_ascend.engine.text as text
from ltx_ascend.errors import UserError
from ltx_ascend.tools import run as cli
from ltx_ascend.validation import check_distinct_outputs, same_file
from tests.conftest import run_cli
from tests.test_run_inputs import guide_commands, media  # noqa: F401  (media: the shared fixture)


@pytest.fixture
def files(tiny, media, tmp_path):  # noqa: F811
    """Copies of the inputs in tmp_path (the test may point an output at them: the originals stay safe)."""
    names = {
        "lora": shutil.copy(tiny.distilled_lora, tmp_path / "distilled.safetensors"),
        "upsampler": shutil.copy(tiny.spatial_upsampler, tmp_path / "upsampler.safetensors"),
        "checkpoint": shutil.copy(tiny.checkpoint, tmp_path / "checkpoint.safetensors"),
        "image": shutil.copy(media["first_frame.png"], tmp_path / "first.png"),
        "audio": shutil.copy(media["speech.wav"], tmp_path / "speech.wav"),
        "video": shutil.copy(media["source.mp4"], tmp_path / "source.mp4"),
        "gemma": shutil.copytree(tiny.gemma_root, tmp_path / "gemma"),
    }
    return {k: os.fspath(v) for k, v in names.items()}


def _argv(files, tmp_path, pipeline="ti2vid_two_stages"):
    argv = [
        pipeline, "--checkpoint-path", files["checkpoint"], "--gemma-root", files["gemma"],
        "--spatial-upsampler-path", files["upsampler"], "--distilled-lora", files["lora"], "0.8",
        "--prompt", "a fox", "--artifacts", str(tmp_path / "a"),
    ]  # fmt: skip
    if pipeline == "ti2vid_two_stages":
        argv += ["--image", files["image"], "0", "1.0", "--height", "128", "--width", "192", "--num-frames", "9"]
    return argv


def _refused(capsys, argv, monkeypatch, *needles):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input checks finished")

    monkeypatch.setattr(text, "load_component", forbidden)
    code, _, err = run_cli(cli.main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), err


CASES = [
    # (output flag, what it points at, needle): every output against inputs of each kind
    ("--raw-output", "lora", "--distilled-lora"),  # before the fix: frames written over the LoRA
    ("--raw-output", "checkpoint", "--checkpoint-path"),
    ("--raw-output", "upsampler", "--spatial-upsampler-path"),
    ("--timings-json", "image", "--image"),
    ("--timings-json", "gemma/config.json", "--gemma-root"),
    ("--timings-json", "lora", "--distilled-lora"),
]


@pytest.mark.parametrize(("flag", "target", "needle"), CASES, ids=[f"{f}={t}" for f, t, _ in CASES])
def test_output_on_an_input_is_refused(files, tmp_path, monkeypatch, capsys, flag, target, needle):
    monkeypatch.chdir(tmp_path)
    path = files.get(target) or next((tmp_path / "gemma").rglob(target.split("/")[-1]))
    before = Path(path).read_bytes()
    argv = [*_argv(files, tmp_path), "--output-path", str(tmp_path / "out.mp4"), flag, str(path)]
    _refused(capsys, argv, monkeypatch, flag, needle, "destroy the input")
    assert Path(path).read_bytes() == before


def test_timings_json_equal_to_output_path(files, tmp_path, monkeypatch, capsys):
    """Before the fix the JSON was written over the mp4."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.mp4"
    argv = [*_argv(files, tmp_path), "--output-path", str(out), "--timings-json", "./out.mp4"]  # not the same string
    _refused(capsys, argv, monkeypatch, "--timings-json", "--output-path", "its own file")


def test_output_through_a_symlink_or_hard_link_is_the_same_file(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.safetensors").symlink_to(files["lora"])
    argv = [*_argv(files, tmp_path), "--output-path", str(tmp_path / "o.mp4"), "--raw-output", "link.safetensors"]
    _refused(capsys, argv, monkeypatch, "--raw-output", "--distilled-lora")
    os.link(files["image"], tmp_path / "hard.mp4")
    argv = [*_argv(files, tmp_path), "--output-path", str(tmp_path / "hard.mp4")]
    _refused(capsys, argv, monkeypatch, "--output-path", "--image")


def test_pipeline_inputs_audio_and_video(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*_argv(files, tmp_path, "a2vid_two_stage"), "--audio-path", files["audio"]]
    argv += ["--height", "128", "--width", "192", "--num-frames", "9", "--output-path", str(tmp_path / "o.mp4")]
    _refused(capsys, [*argv, "--timings-json", files["audio"]], monkeypatch, "--audio-path")
    retake = ["retake", "--checkpoint-path", files["checkpoint"], "--gemma-root", files["gemma"],
              "--video-path", files["video"], "--start-time", "0.1", "--end-time", "0.3", "--prompt", "x"]  # fmt: skip
    _refused(capsys, [*retake, "--output-path", files["video"]], monkeypatch, "--output-path", "--video-path")
    retake += ["--output-path", str(tmp_path / "o.mp4"), "--loras", files["lora"]]
    _refused(capsys, [*retake, "--raw-output", files["lora"]], monkeypatch, "--raw-output", "--loras")


def test_step_cache_out_is_an_output_too(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*_argv(files, tmp_path), "--output-path", str(tmp_path / "o.mp4"), "--step-cache-search", "30"]
    _refused(capsys, [*argv, "--step-cache-out", "o.mp4"], monkeypatch, "--step-cache-out", "--output-path")
    _refused(capsys, [*argv, "--step-cache-out", files["lora"]], monkeypatch, "--step-cache-out", "--distilled-lora")


def test_distinct_paths_pass(tmp_path):
    (tmp_path / "in.png").write_bytes(b"x")
    check_distinct_outputs(
        {"--output-path": tmp_path / "o.mp4", "--raw-output": tmp_path / "o.safetensors", "--timings-json": None},
        {"--image": [tmp_path / "in.png"], "--lora": None},
    )
    assert same_file(tmp_path / "o.mp4", tmp_path / "." / "o.mp4")  # neither exists yet: resolved paths
    with pytest.raises(UserError, match="its own file"):
        check_distinct_outputs({"--a": tmp_path / "x", "--b": tmp_path / "sub" / ".." / "x"}, {})
