"""Every number a flag takes is finite, checked before anything loads; a LoRA whose tensors are not
finite is refused when it is read; a non-finite latent or waveform is caught where it appears (a
one-line error naming the stage), never by the AAC encoder at the end of the run."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ltx_ascend.engine.text as text
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.tools import run as cli
from ltx_ascend.validation import NonFiniteError, check_finite, check_finite_tensor, finite_number
from tests.conftest import run_cli
from tests.test_run_inputs import guide_commands, media  # noqa: F401  (media: the shared fixture)


def _no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input checks finished")

    monkeypatch.setattr(text, "load_component", forbidden)


def _one_line_exit_2(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), err
    return lines[0]


NAN_FLAGS = [
    ("ti2vid_two_stages", ["--video-cfg-guidance-scale", "nan"], "--video-cfg-guidance-scale"),
    ("ti2vid_two_stages", ["--audio-stg-guidance-scale", "inf"], "--audio-stg-guidance-scale"),
    ("ti2vid_two_stages", ["--video-rescale-scale", "nan"], "--video-rescale-scale"),
    ("ti2vid_two_stages", ["--a2v-guidance-scale", "nan"], "--a2v-guidance-scale"),
    ("ti2vid_two_stages", ["--v2a-guidance-scale=-inf"], "--v2a-guidance-scale"),
    ("ti2vid_two_stages", ["--max-device-memory", "nan"], "--max-device-memory"),
    ("ti2vid_two_stages_hq", ["--distilled-lora-strength-stage-1", "nan"], "--distilled-lora-strength-stage-1"),
    ("ti2vid_two_stages_hq", ["--distilled-lora-strength-stage-2", "nan"], "--distilled-lora-strength-stage-2"),
    ("ic_lora", ["--video-conditioning", "{control}", "nan"], "--video-conditioning"),
    ("a2vid_two_stage", ["--audio-max-duration", "nan"], "--audio-max-duration"),
    ("a2vid_two_stage", ["--audio-start-time", "nan"], "--audio-start-time"),
    ("retake", ["--start-time", "nan"], "--start-time"),
    ("retake", ["--end-time", "inf"], "--end-time"),
]


@pytest.mark.parametrize(("pipeline", "extra", "flag"), NAN_FLAGS, ids=[" ".join(e) for _, e, _ in NAN_FLAGS])
def test_non_finite_flag_is_refused_before_anything_loads(
    tiny, media, tmp_path, monkeypatch, capsys, pipeline, extra, flag  # noqa: F811
):
    """Before the fix the guidance scales and strengths passed (NaN fails no comparison) and the run ended
    in av.error.ArgumentError from the AAC encoder; --audio-max-duration nan was a traceback."""
    monkeypatch.chdir(tmp_path)
    _no_model(monkeypatch)
    argv = guide_commands(tiny, media)[pipeline]
    extra = [e.format(control=media["control.mp4"]) for e in extra]
    if extra[0] in argv and extra[0] == "--video-conditioning":  # replace the guide's own conditioning
        i = argv.index(extra[0])
        argv = argv[:i] + argv[i + 3 :]
    code, _, err = run_cli(cli.main, [*argv, *extra, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, flag, "finite")
    assert not list(tmp_path.iterdir())  # nothing written


def _nan_lora(tiny, tmp_path):
    with safe_open(str(tiny.distilled_lora), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in list(f.keys())}
        metadata = f.metadata()
    first = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    path = tmp_path / "nan_lora.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path, first


def test_lora_with_nan_tensors_is_refused_when_read(tiny, media, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Before the fix a NaN LoRA fused into the DiT and the run died in the AAC encoder."""
    monkeypatch.chdir(tmp_path)
    _no_model(monkeypatch)
    lora, key = _nan_lora(tiny, tmp_path)
    argv = [*guide_commands(tiny, media)["ti2vid_one_stage"], "--lora", str(lora), "0.5"]
    code, _, err = run_cli(cli.main, [*argv, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, str(lora), key, "NaN")


def test_check_finite_walks_lists_and_items():
    check_finite({"--a": 1.0, "--b": [1.0, 2.0], "--c": None, "--d": True, "--e": "text"})
    with pytest.raises(UserError, match=r"--b nan: must be a finite"):
        check_finite({"--b": [1.0, float("nan")]})
    from ltx_ascend.engine.context import ImageInput

    with pytest.raises(UserError, match=r"--image x.png STRENGTH inf"):
        check_finite({"--image": [ImageInput("x.png", 0, float("inf"), 33)]})
    assert finite_number("0.8", "--lora F") == 0.8
    with pytest.raises(UserError, match="must be a number"):
        finite_number("abc", "--lora F")


def _fake_ctx(waveform):
    audio = types.SimpleNamespace(waveform=waveform, sampling_rate=16000)
    stack = types.SimpleNamespace(
        parallel=None,
        video_decoder=lambda profile, ranks: lambda latent, gen: iter([torch.zeros(1, 4, 4, 3, dtype=torch.uint8)]),
        audio=lambda profile: lambda latent: audio,
    )
    timings = types.SimpleNamespace(stage=lambda name: __import__("contextlib").nullcontext())
    return types.SimpleNamespace(stack=stack, main=True, timings=timings)


def test_non_finite_waveform_is_caught_at_decode_not_by_the_encoder():
    """Before the fix the NaN waveform went on to write_mp4 (av.error.ArgumentError from the AAC encoder)."""
    good = decode(_fake_ctx(torch.zeros(2, 100)), torch.zeros(1), torch.zeros(1), None, None)
    assert good.audio.waveform.shape == (2, 100)
    wave = torch.zeros(2, 100)
    wave[0, 7] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^decode \(audio waveform\): 1 of 200 values are NaN"):
        decode(_fake_ctx(wave), torch.zeros(1), torch.zeros(1), None, None)


def test_non_finite_latent_names_its_stage():
    latent = torch.zeros(3)
    check_finite_tensor(latent, "stage 1 (video latent)")
    latent[1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"stage 1 \(video latent\): 1 of 3"):
        check_finite_tensor(latent, "stage 1 (video latent)")
    with pytest.raises(UserError, match="pass a file with finite values"):
        check_finite_tensor(latent, "--audio-path a.wav", user_input=True)


def test_audio_file_with_nan_samples_is_refused_where_it_is_read(tmp_path):
    """A float WAV can carry NaN: refused as the user's file (exit 2), not found as a NaN latent later."""
    import av
    import numpy as np

    from ltx_ascend.pipelines.audio_input import decode_audio

    samples = np.zeros((1, 2 * 16000), np.float32)
    samples[0, 100] = np.nan
    with av.open(str(tmp_path / "nan.wav"), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=16000)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="stereo")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(UserError, match=r"--audio-path .*nan.wav: 1 of \d+ values are NaN or infinite"):
        decode_audio(tmp_path / "nan.wav", max_duration=0.5)
