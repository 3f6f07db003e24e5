"""The Python API (`ltx_ascend.Engine`): generate on the tiny set, progress per step, cancellation
that leaves the engine usable, one call at a time, the one request validation, and ltx-run on top."""

from __future__ import annotations

import io
import threading
import time

import pytest
import torch
from PIL import Image

import ltx_ascend
from ltx_ascend import Cancelled, Engine, GenerationRequest, ImageInput, Progress, RunSettings, UserError
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H

SMALL = H.SMALL_REQUEST


def _settings(tiny, tmp, **overrides) -> RunSettings:
    return H.tiny_settings(tiny, tmp, **overrides)


@pytest.fixture(scope="module")
def engine(tiny, tmp_path_factory) -> Engine:
    return Engine(_settings(tiny, tmp_path_factory.mktemp("api")))


def test_names_are_importable_from_the_package():
    for name in ("Engine", "RunSettings", "GenerationRequest", "ImageInput", "Result", "Progress", "Cancelled"):
        assert getattr(ltx_ascend, name) is not None
    assert ltx_ascend.UserError is UserError
    with pytest.raises(AttributeError):
        ltx_ascend.NoSuchName  # noqa: B018


def test_generate_returns_frames_audio_and_timings_and_reports_progress(engine, tmp_path):
    seen: list[Progress] = []
    result = engine.generate(GenerationRequest(**SMALL), progress=seen.append)
    assert result.frames.dtype == torch.uint8 and tuple(result.frames.shape) == (9, 128, 192, 3)
    assert result.audio is not None and result.audio.dtype == torch.float32 and result.sample_rate > 0
    assert result.request.seed == 42 and result.request.pipeline == "ti2vid_two_stages"
    # stage 1: 2 steps, stage 2: the 3-step distilled tail; fractions climb to 1.
    assert [(p.stage, p.step, p.total) for p in seen] == [
        ("stage 1", 1, 2), ("stage 1", 2, 2), ("stage 2", 1, 3), ("stage 2", 2, 3), ("stage 2", 3, 3),
    ]  # fmt: skip
    assert [p.fraction for p in seen] == sorted(p.fraction for p in seen) and seen[-1].fraction == 1.0
    assert "stage 1" in result.timings.table()
    out = result.write_mp4(tmp_path / "x.mp4")
    assert out.is_file() and out.stat().st_size > 1000


def test_cancel_at_step_2_leaves_the_engine_usable(engine):
    reference = engine.generate(GenerationRequest(**SMALL))
    calls = []
    with pytest.raises(Cancelled):
        engine.generate(GenerationRequest(**SMALL), cancelled=lambda: len(calls) >= 2, progress=calls.append)
    assert len(calls) == 2  # stopped right after step 2, not at the end
    again = engine.generate(GenerationRequest(**SMALL))
    assert torch.equal(again.frames, reference.frames) and torch.equal(again.audio, reference.audio)


def test_calls_run_one_at_a_time(engine):
    """Two threads: the second call's first step comes after the first call's last step."""
    events: list[tuple[int, float]] = []
    lock = threading.Lock()

    def run(tag: int) -> None:
        def progress(p: Progress) -> None:
            with lock:
                events.append((tag, p.fraction))
            time.sleep(0.01)

        engine.generate(GenerationRequest(**SMALL), progress=progress)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tags = [tag for tag, _ in events]
    assert len(tags) == 10 and tags == sorted(tags, key=lambda t: t != tags[0])  # one call's steps, then the other's


@pytest.mark.parametrize(
    "fields,needle",
    [
        (dict(num_frames=10), "8k+1"),
        (dict(num_inference_steps=0), "--num-inference-steps 0"),
        (dict(frame_rate=float("nan")), "--frame-rate"),
        (dict(pipeline="ti2vid_one_stage"), "not served here"),
        (dict(video_guidance={"cfgg": 2.0}), "unknown key 'cfgg'"),
        (dict(extra={"video_path": "x.mp4"}), "unknown option 'video_path'"),
        (dict(images=(ImageInput(b"not an image", 0),)), "cannot decode"),
        (dict(images=(ImageInput("/no/such.png", 0),)), "file not found"),
    ],
)
def test_validate_raises_one_user_error(engine, fields, needle):
    with pytest.raises(UserError, match=None) as info:
        engine.validate(GenerationRequest(**{**SMALL, **fields}))
    assert needle in str(info.value)


def test_validate_fills_defaults_and_decodes_image_bytes(engine):
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(png, format="PNG")
    resolved = engine.validate(GenerationRequest(images=(ImageInput(png.getvalue(), -1),)))
    assert resolved.num_frames > 0 and resolved.seed is not None and resolved.prompt
    assert resolved.images[0].frame_idx == resolved.num_frames - 1  # -1 counts from the end
    assert resolved.video_guidance["cfg"] > 1


def test_run_settings_are_checked_once_on_construction(tiny, tmp_path):
    with pytest.raises(UserError, match="--streaming-prefetch-count -1"):
        _settings(tiny, tmp_path, streaming_prefetch_count=-1)
    with pytest.raises(UserError, match="backend 'gpu'"):
        _settings(tiny, tmp_path, backend="gpu")
    with pytest.raises(UserError, match="pipeline 'nope'"):
        _settings(tiny, tmp_path, pipelines=("nope",))
    settings = _settings(tiny, tmp_path)
    with pytest.raises(AttributeError):
        settings.backend = "ort"  # frozen


def test_ltx_run_output_equals_the_api_output(engine, tiny, tmp_path):
    """ltx-run goes through the API: same settings, same frames and audio as Engine.generate."""
    raw = tmp_path / "raw.safetensors"
    argv = [
        "ti2vid_two_stages", *H.checkpoint_args(tiny), "--backend", "eager", "--dtype", "float32",
        "--artifacts", str(engine.settings.artifacts), "--prompt-cache", str(engine.settings.prompt_cache),
        "--output-path", str(tmp_path / "o.mp4"), "--raw-output", str(raw),
        *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()],
    ]  # fmt: skip
    assert cli.main(argv) == 0
    from safetensors.torch import load_file

    ran = load_file(str(raw))
    result = engine.generate(GenerationRequest(**SMALL))
    assert torch.equal(ran["video"], result.frames) and torch.equal(ran["audio"], result.audio)
    different = engine.generate(GenerationRequest(**{**SMALL, "seed": 43}))
    assert not torch.equal(different.frames, result.frames)  # the comparison can fail
