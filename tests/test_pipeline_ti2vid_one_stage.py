"""ltx-run ti2vid_one_stage on the tiny set: eager bf16 vs Lightricks' TI2VidOneStagePipeline,
ORT vs eager in float32, and its input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.metrics import compare
from ltx_ascend.pipelines import ti2vid_one_stage as pipeline
from ltx_ascend.shapes import check_pixel_shape
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims

NAME = "ti2vid_one_stage"
REFERENCE_FRAMES_PSNR_DB = 40.0
REFERENCE_AUDIO_MIN_COSINE = 0.99
COMPILED_FRAMES_PSNR_DB = 35.0
COMPILED_AUDIO_MIN_COSINE = 0.999
# A first-frame image (replaces latent 0) and a keyframe image (appended tokens) at the last frame.
IMAGES = (("first.png", 0, 1.0), ("last.png", 8, 0.8))


def _write_images(folder: Path) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(7)
    out = []
    for name, frame, strength in IMAGES:
        ramp = np.linspace(0, 255, 160, dtype=np.float32)
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:100, None], 128.0), axis=-1)
        pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        out.append((str(folder / name), frame, strength))
    return out


def _image_args(images) -> list[str]:
    return [a for path, frame, strength in images for a in ("--image", path, str(frame), str(strength))]


def _run_ours(tiny: TinySet, out: Path, *extra: str, backend: str, dtype: str) -> dict[str, torch.Tensor]:
    raw = out / f"{NAME}-{backend}-{dtype}.safetensors"
    argv = [
        NAME, *H.checkpoint_args(tiny, distilled=False), *H.setting_args(), *extra,
        "--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing",
        "--output-path", str(out / f"{NAME}-{backend}-{dtype}.mp4"), "--raw-output", str(raw),
        "--prompt-cache", str(out / f"prompt-cache-{backend}-{dtype}"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return load_file(str(raw))


def run_reference_ti2vid_one_stage(tiny: TinySet, images) -> dict[str, torch.Tensor]:
    from ltx_pipelines.ti2vid_one_stage import TI2VidOneStagePipeline
    from ltx_pipelines.utils.args import ImageConditioningInput

    video_params, audio_params = H.guider_params()
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        reference = TI2VidOneStagePipeline(
            checkpoint_path=str(tiny.checkpoint), gemma_root=str(tiny.gemma_root), loras=[], device=torch.device("cpu")
        )
        video, audio = reference(
            **H.SETTINGS,
            video_guider_params=video_params,
            audio_guider_params=audio_params,
            images=[ImageConditioningInput(path, frame, strength) for path, frame, strength in images],
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


def _report(name: str, frames, audio) -> None:
    print(f"{name}: frames PSNR {frames.psnr_db:.1f} dB, audio cosine {audio.cosine:.5f} (PSNR {audio.psnr_db:.1f} dB)")


@pytest.mark.reference
def test_reproduces_ltx_pipelines(tiny, tmp_path):
    images = _write_images(tmp_path)
    reference = run_reference_ti2vid_one_stage(tiny, images)
    got = _run_ours(tiny, tmp_path, *_image_args(images), backend="eager", dtype="bfloat16")
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report(f"{NAME} reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_ort_matches_eager(tiny, tmp_path):
    images = _image_args(_write_images(tmp_path))
    eager = _run_ours(tiny, tmp_path, *images, backend="eager", dtype="float32")
    compiled = _run_ours(tiny, tmp_path, *images, backend="ort", dtype="float32")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report(f"{NAME} eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio


def test_defaults_equal_ltx_pipelines_constants():
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS as ref

    d = pipeline.DEFAULTS
    assert (d.height, d.width) == (ref.stage_1_height, ref.stage_1_width)
    assert (d.num_inference_steps, d.num_frames, d.frame_rate, d.seed) == (
        ref.num_inference_steps,
        ref.num_frames,
        ref.frame_rate,
        ref.seed,
    )
    assert d.video_guider == ref.video_guider_params
    assert d.audio_guider == ref.audio_guider_params
    assert not pipeline.TWO_STAGE and not pipeline.NEEDS_DISTILLED_LORA


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--distilled-lora", "x.safetensors", "0.8"], "--distilled-lora"),
        (["--height", "144"], "multiple of 32"),
        (["--num-frames", "10"], "8k+1"),
        (["--image", "missing.png", "0", "1.0"], "file not found"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, extra, needle):
    argv = [NAME, *H.checkpoint_args(tiny, distilled=False), *H.setting_args(), "--artifacts", str(tmp_path), *extra]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4"))


def test_one_stage_accepts_heights_of_32_multiples():
    """One stage runs at the output size, so 32-multiples (not 64) are valid, as in ltx-pipelines."""
    from ltx_pipelines.utils.helpers import assert_resolution

    assert_resolution(height=160, width=224, is_two_stage=False)
    check_pixel_shape(9, 160, 224, two_stage=pipeline.TWO_STAGE)
