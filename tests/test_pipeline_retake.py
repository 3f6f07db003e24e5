"""ltx-run retake on the tiny set: Lightricks' reference vs our eager bf16, ORT vs eager fp32, the
temporal region masks, and the input checks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ltx_ascend.engine import params as ours
from ltx_ascend.engine import sampling
from ltx_ascend.metrics import compare
from ltx_ascend.pipelines.video_input import load_video, probe_video
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims

REFERENCE_FRAMES_PSNR_DB = 40.0
REFERENCE_AUDIO_MIN_COSINE = 0.99
COMPILED_FRAMES_PSNR_DB = 35.0
COMPILED_AUDIO_MIN_COSINE = 0.999
FPS = 24
START, END = 0.1, 0.3  # seconds of the 9-frame (0.375 s) source to regenerate
AUDIO_RATE = 48000


def write_mp4(path: Path, frames: int, height: int, width: int, *, audio_channels: int | None = 2) -> Path:
    """A deterministic moving gradient (libx264) with a sine-chord AAC track, via PyAV."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if audio_channels:
            layout = {1: "mono", 2: "stereo"}[audio_channels]
            audio = container.add_stream("aac", rate=AUDIO_RATE, layout=layout)
        for i in range(frames):
            rgb = np.stack([(x * 255 // width + 8 * i) % 256, y * 255 // height, np.full_like(x, 40 * i % 256)], -1)
            container.mux(video.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            t = np.arange(round(frames / FPS * AUDIO_RATE)) / AUDIO_RATE
            chord = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (220.0, 330.0)[:audio_channels]])
            frame = av.AudioFrame.from_ndarray(chord.astype(np.float32), format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
            container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    s = H.SETTINGS
    return write_mp4(tmp_path_factory.mktemp("retake-media") / "source.mp4", s["num_frames"], s["height"], s["width"])


def retake_args(source: Path, start: float = START, end: float = END) -> list[str]:
    """Our retake's flags: the harness' settings less the size (retake takes the source's)."""
    s = H.SETTINGS
    return [
        "--video-path", str(source), "--start-time", str(start), "--end-time", str(end),
        "--prompt", s["prompt"], "--negative-prompt", s["negative_prompt"], "--seed", str(s["seed"]),
        "--num-inference-steps", str(s["num_inference_steps"]),
        "--video-stg-blocks", *map(str, H.STG_BLOCKS), "--audio-stg-blocks", *map(str, H.STG_BLOCKS),
    ]  # fmt: skip


def run_ours(tiny, out: Path, source: Path, *extra: str, backend: str = "eager", dtype: str = "float32"):
    from safetensors.torch import load_file

    raw = out / f"retake-{backend}-{dtype}.safetensors"
    argv = [
        "retake", *H.checkpoint_args(tiny, distilled=False), *retake_args(source), *extra,
        "--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing",
        "--output-path", str(out / f"retake-{backend}-{dtype}.mp4"), "--raw-output", str(raw),
        "--prompt-cache", str(out / f"prompt-cache-{backend}-{dtype}"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return load_file(str(raw))


def run_reference_retake(tiny, source: Path) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.retake import RetakePipeline

    video_params, audio_params = H.guider_params()
    s = H.SETTINGS
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        pipeline = RetakePipeline(
            checkpoint_path=str(tiny.checkpoint), gemma_root=str(tiny.gemma_root), loras=[], device=torch.device("cpu")
        )
        video, audio = pipeline(
            video_path=str(source),
            prompt=s["prompt"],
            start_time=START,
            end_time=END,
            seed=s["seed"],
            negative_prompt=s["negative_prompt"],
            num_inference_steps=s["num_inference_steps"],
            video_guider_params=video_params,
            audio_guider_params=audio_params,
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


def _report(name: str, frames, audio) -> None:
    print(f"{name}: frames PSNR {frames.psnr_db:.1f} dB, audio cosine {audio.cosine:.5f} (PSNR {audio.psnr_db:.1f} dB)")


@pytest.mark.reference
def test_retake_reproduces_ltx_pipelines(tiny, tmp_path, source):
    reference = run_reference_retake(tiny, source)
    got = run_ours(tiny, tmp_path, source, dtype="bfloat16")
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report("retake reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_retake_ort_matches_eager(tiny, tmp_path, source):
    eager = run_ours(tiny, tmp_path, source, backend="eager")
    compiled = run_ours(tiny, tmp_path, source, backend="ort")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report("retake eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio
    assert compiled["audio"].shape[0] == 2


def test_temporal_region_mask_matches_ltx_pipelines():
    """Our port of the retake conditioning item builds the reference's masks, video and audio."""
    from ltx_core.types import VideoPixelShape
    from ltx_pipelines.retake import TemporalRegionMask as Reference

    from ltx_ascend.pipelines.retake import TemporalRegionMask

    shape = VideoPixelShape(batch=1, frames=17, height=64, width=96, fps=24.0)
    for tools in (sampling.video_tools(shape), sampling.audio_tools(shape)):
        for start, end in ((0.1, 0.3), (0.0, 0.05), (0.5, 0.7)):
            state = tools.create_initial_state(torch.device("cpu"), torch.float32)
            mine = TemporalRegionMask(start, end, shape.fps).apply_to(state, tools).denoise_mask
            theirs = Reference(start, end, shape.fps).apply_to(state, tools).denoise_mask
            assert torch.equal(mine, theirs)
            assert 0 < mine.sum() < mine.numel()


def test_video_input_matches_ltx_pipelines(source):
    from ltx_pipelines.utils.media_io import get_videostream_metadata, load_video_conditioning

    info = probe_video(source)
    assert (info.fps, info.frames, info.width, info.height) == get_videostream_metadata(str(source))
    for dtype in (torch.float32, torch.bfloat16):
        mine = load_video(source, info.height, info.width, info.frames, dtype, torch.device("cpu"))
        theirs = load_video_conditioning(str(source), info.height, info.width, info.frames, dtype, torch.device("cpu"))
        assert torch.equal(mine, theirs)


def test_source_without_audio(tiny, tmp_path):
    """No audio track: as ltx-pipelines, the audio is generated whole (no mask, no initial latent).
    (A mono track goes through the same up-mixing decode as a2vid_two_stage's, tested there.)"""
    s = H.SETTINGS
    video = write_mp4(tmp_path / "silent.mp4", s["num_frames"], s["height"], s["width"], audio_channels=None)
    got = run_ours(tiny, tmp_path, video, "--num-inference-steps", "1")
    assert got["video"].shape == (9, 128, 192, 3) and got["audio"].shape[0] == 2


def test_defaults_follow_the_reference_cli():
    import inspect

    from ltx_pipelines.retake import RetakePipeline
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS

    from ltx_ascend.pipelines import retake

    defaults = inspect.signature(RetakePipeline.__call__).parameters
    assert retake.DEFAULTS.num_inference_steps == defaults["num_inference_steps"].default
    assert defaults["negative_prompt"].default == retake.RETAKE_NEGATIVE_PROMPT
    assert retake.DEFAULTS.video_guider == LTX_2_3_PARAMS.video_guider_params
    assert retake.DEFAULTS.audio_guider == LTX_2_3_PARAMS.audio_guider_params
    assert retake.DEFAULTS.seed == 42  # ltx-pipelines' retake CLI: --seed default 42
    parser = cli.build_parser()
    args = parser.parse_args(["retake", "--video-path", "x.mp4", "--start-time", "0", "--end-time", "1"])
    assert args.negative_prompt == retake.RETAKE_NEGATIVE_PROMPT
    args = parser.parse_args(["ti2vid_two_stages"])
    assert args.negative_prompt == ours.DEFAULT_NEGATIVE_PROMPT


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--video-path", "{source}"], "needs --start-time and --end-time"),
        (["--start-time", "0.1", "--end-time", "0.2"], "needs --video-path"),
        (["--video-path", "missing.mp4", "--start-time", "0.1", "--end-time", "0.2"], "file not found"),
        (["--video-path", "{not_video}", "--start-time", "0.1", "--end-time", "0.2"], "cannot decode"),
        (["--video-path", "{ten_frames}", "--start-time", "0.1", "--end-time", "0.2"], "8k+1"),
        (["--video-path", "{odd_size}", "--start-time", "0.1", "--end-time", "0.2"], "multiple of 32"),
        (["--video-path", "{source}", "--start-time", "0.3", "--end-time", "0.1"], "less than --end-time"),
        (["--video-path", "{source}", "--start-time", "0.2", "--end-time", "0.2"], "less than --end-time"),
        (["--video-path", "{source}", "--start-time", "0.1", "--end-time", "2"], "inside the video"),
        (["--video-path", "{source}", "--start-time", "-0.1", "--end-time", "0.2"], "inside the video"),
        (["--video-path", "{source}", "--start-time", "0.1", "--end-time", "0.2", "--height", "256"], "--height"),
        (
            ["--video-path", "{source}", "--start-time", "0", "--end-time", "0.2", "--image", "{source}", "0", "1"],
            "image",
        ),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, source, extra, needle):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    paths = {
        "source": source,
        "not_video": not_video,
        "ten_frames": write_mp4(tmp_path / "ten.mp4", 10, 64, 64, audio_channels=None),
        "odd_size": write_mp4(tmp_path / "odd.mp4", 9, 64, 80, audio_channels=None),
    }
    extra = [arg.format(**paths) for arg in extra]
    out = tmp_path / "out"
    out.mkdir()
    argv = ["retake", *H.checkpoint_args(tiny, distilled=False), "--artifacts", str(tmp_path), *extra]
    argv += ["--output-path", str(out / "out.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(out.iterdir())
