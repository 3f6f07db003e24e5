"""Wrong answers, not errors: an input the commands took and answered wrongly. An mp3 whose first frame
starts late is read for the full window; an explicit empty prompt is a prompt; plans and benchmarks for
zero or negative devices, memory or threads are refused instead of printed."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ltx_ascend.pipelines.audio_input import decode_audio, duration_s
from ltx_ascend.tools import bench
from ltx_ascend.tools import run as cli
from tests.conftest import run_cli
from tests.test_run_inputs import guide_commands, media  # noqa: F401  (media: the shared fixture)

RATE = 48000


def write_mp3(path: Path, seconds: float = 2.0) -> Path:
    """A stereo tone through libmp3lame: its first decoded frame starts ~25 ms in (the encoder delay)."""
    container = av.open(str(path), "w", format="mp3")
    stream = container.add_stream("libmp3lame", rate=RATE)
    stream.layout = "stereo"
    size = stream.codec_context.frame_size or 1152
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2)
    pts = 0
    for i in range(0, wave.shape[1] - size + 1, size):
        chunk = (wave[:, i : i + size] * (2**31 - 1)).astype(np.int32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=stream.format.name, layout="stereo")
        frame.sample_rate, frame.pts = RATE, pts
        pts += size
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.mark.parametrize(("start", "window"), [(0.0, 0.375), (0.0, 1.0), (0.5, 0.375)])
def test_mp3_with_a_late_first_frame_yields_the_whole_window(tmp_path, start, window):
    """Before the fix the window was measured in stream time from 0, so the ~25 ms before the first
    frame were lost: 0.375 s asked, about 0.35 s read (and a2vid refused audio long enough)."""
    path = write_mp3(tmp_path / "tone.mp3")
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        first = next(container.decode(stream))
        assert 0.015 < float(first.pts * stream.time_base) < 0.035  # the file is what the test is about
    audio = decode_audio(path, start_time=start, max_duration=window)
    assert audio.waveform.shape[-1] == round(window * RATE), duration_s(audio)


def test_an_explicit_empty_prompt_is_a_prompt(tiny, media, tmp_path, monkeypatch):  # noqa: F811
    """Before the fix `--prompt ""` ran the built-in demo prompt."""
    monkeypatch.chdir(tmp_path)
    argv = guide_commands(tiny, media)["ti2vid_one_stage"]
    i = argv.index("--prompt")
    assert cli.parse_and_check([*argv[:i], "--prompt", "", *argv[i + 2 :]]).request.prompt == ""
    assert cli.parse_and_check([*argv[:i], *argv[i + 2 :]]).request.prompt == cli.DEFAULT_PROMPT  # absent: the demo


@pytest.mark.parametrize(("extra", "needle"), [(["--threads", "0"], "--threads 0"), (["--threads=-2"], "--threads -2")])
def test_bench_refuses_zero_threads(tmp_path, monkeypatch, capsys, extra, needle):
    """Before the fix `ltx-bench --threads 0` ran anyway (0 means all cores to ORT, an error to torch)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "bench_component", forbidden)
    code, _, err = run_cli(bench.main, ["--artifacts", str(tmp_path / "a"), "--backends", "eager", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0] and ">= 1" in lines[0], err
    assert not (tmp_path / "a").exists()


# `ltx-plan --devices 0` and `--hbm-gb -32` (item 7) are in test_bad_input_early.py with the other plan numbers.
