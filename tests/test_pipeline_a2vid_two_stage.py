"""ltx-run a2vid_two_stage on the tiny set: Lightricks' reference vs our eager bf16, ORT vs eager fp32,
mono up-mixing, and the input checks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ltx_ascend.metrics import compare
from ltx_ascend.pipelines.audio_input import decode_audio
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims

REFERENCE_FRAMES_PSNR_DB = 40.0
REFERENCE_AUDIO_MIN_COSINE = 0.99
COMPILED_FRAMES_PSNR_DB = 35.0
COMPILED_AUDIO_MIN_COSINE = 0.999
AUDIO_RATE = 44100  # not the encoder's 16 kHz: the resampling is exercised too
AUDIO_SECONDS = 0.5  # the tiny settings' video lasts 9 / 24 = 0.375 s


def sine(channels: int, seconds: float = AUDIO_SECONDS, rate: int = AUDIO_RATE) -> np.ndarray:
    """A deterministic chord, int16 [channels, samples]: a different tone per channel."""
    t = np.arange(round(seconds * rate)) / rate
    waves = [0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 3 * f * t) for f in (220.0, 330.0, 440.0)]
    return (np.stack(waves[:channels]) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int = AUDIO_RATE) -> Path:
    """16-bit PCM WAV via PyAV; samples int16 [channels, samples]."""
    layout = {1: "mono", 2: "stereo", 3: "3.0"}[samples.shape[0]]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("a2vid-media")
    return {
        "stereo": write_wav(folder / "stereo.wav", sine(2)),
        "mono": write_wav(folder / "mono.wav", sine(1)),
        "three": write_wav(folder / "three.wav", sine(3)),
        "short": write_wav(folder / "short.wav", sine(2, seconds=0.2)),
    }


def run_reference_a2vid_two_stage(tiny, audio_path: Path) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.a2vid_two_stage import A2VidPipelineTwoStage

    video_params, _ = H.guider_params()
    settings = dict(H.SETTINGS)
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        pipeline = A2VidPipelineTwoStage(
            checkpoint_path=str(tiny.checkpoint),
            distilled_lora=H.distilled_lora(tiny),
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=[],
            device=torch.device("cpu"),
        )
        video, audio = pipeline(
            **settings,
            video_guider_params=video_params,
            images=[],
            audio_path=str(audio_path),
            audio_start_time=0.0,
            audio_max_duration=settings["num_frames"] / settings["frame_rate"],  # the reference CLI's default
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float(), "rate": audio.sampling_rate}


def _report(name: str, frames, audio) -> None:
    print(f"{name}: frames PSNR {frames.psnr_db:.1f} dB, audio cosine {audio.cosine:.5f} (PSNR {audio.psnr_db:.1f} dB)")


@pytest.mark.reference
def test_a2vid_two_stage_reproduces_ltx_pipelines(tiny, tmp_path, media):
    reference = run_reference_a2vid_two_stage(tiny, media["stereo"])
    got = H.run_ours(
        "a2vid_two_stage", tiny, tmp_path, "--audio-path", str(media["stereo"]), backend="eager", dtype="bfloat16"
    )
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    assert got["audio"].shape == reference["audio"].shape  # the input audio, carried through
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report("a2vid_two_stage reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_a2vid_two_stage_ort_matches_eager(tiny, tmp_path, media):
    args = ("--audio-path", str(media["stereo"]))
    eager = H.run_ours("a2vid_two_stage", tiny, tmp_path, *args, backend="eager")
    compiled = H.run_ours("a2vid_two_stage", tiny, tmp_path, *args, backend="ort")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report("a2vid_two_stage eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio


def test_mono_audio_is_upmixed_to_stereo(tiny, tmp_path, media):
    """Mono decodes as the same signal on both channels (the audio VAE encodes stereo), exactly what a
    stereo file with twin channels decodes to, and the pipeline runs on it and outputs that stereo."""
    twin = write_wav(tmp_path / "twin.wav", np.repeat(sine(1), 2, axis=0))
    video_s = H.SETTINGS["num_frames"] / H.SETTINGS["frame_rate"]
    mono, stereo = (decode_audio(p, max_duration=video_s) for p in (media["mono"], twin))
    assert mono.waveform.shape == stereo.waveform.shape and mono.waveform.shape[1] == 2
    assert torch.equal(mono.waveform, stereo.waveform)
    got = H.run_ours(
        "a2vid_two_stage", tiny, tmp_path, "--audio-path", str(media["mono"]), "--num-inference-steps", "1"
    )
    assert got["video"].shape == (9, 128, 192, 3)
    assert torch.equal(got["audio"], mono.waveform[0])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "needs --audio-path"),
        (["--audio-path", "missing.wav"], "file not found"),
        (["--audio-path", "{not_media}"], "cannot decode"),
        (["--audio-path", "{three}"], "3 audio channels"),
        (["--audio-path", "{short}"], "the video lasts"),
        (["--audio-path", "{stereo}", "--audio-start-time", "0.3"], "the video lasts"),
        (["--audio-path", "{stereo}", "--audio-start-time", "-1"], "must be >= 0"),
        (["--audio-path", "{stereo}", "--audio-max-duration", "0"], "must be > 0"),
        (["--audio-path", "{no_audio}"], "no audio stream"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, media, extra, needle):
    not_media = tmp_path / "notes.wav"
    not_media.write_text("not audio")
    no_audio = tmp_path / "silent.mp4"
    with av.open(str(no_audio), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    paths = {**{k: str(v) for k, v in media.items()}, "not_media": str(not_media), "no_audio": str(no_audio)}
    extra = [arg.format(**paths) for arg in extra]
    argv = ["a2vid_two_stage", *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path), *extra]
    argv += ["--output-path", str(tmp_path / "out.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4")) or [p.name for p in tmp_path.glob("*.mp4")] == ["silent.mp4"]


def test_decode_audio_matches_ltx_pipelines(media):
    from ltx_pipelines.utils.media_io import decode_audio_from_file

    for start, duration in ((0.0, 0.375), (0.1, 0.2), (0.0, None)):
        ours = decode_audio(media["stereo"], start_time=start, max_duration=duration)
        theirs = decode_audio_from_file(str(media["stereo"]), torch.device("cpu"), start, duration)
        assert ours.sampling_rate == theirs.sampling_rate
        assert torch.equal(ours.waveform, theirs.waveform)
