"""ltx-run distilled on the tiny set (its checkpoint stands in for the distilled one): Lightricks'
DistilledPipeline vs our eager bf16, ORT vs eager in float32, and the pipeline's input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.metrics import compare
from ltx_ascend.pipelines import distilled as pipeline
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims
from tests.test_pipelines import (
    COMPILED_AUDIO_MIN_COSINE,
    COMPILED_FRAMES_PSNR_DB,
    REFERENCE_AUDIO_MIN_COSINE,
    REFERENCE_FRAMES_PSNR_DB,
    _report,
)

# The distilled pipeline takes no negative prompt, steps or guidance: only these settings apply.
SETTINGS = {k: H.SETTINGS[k] for k in ("prompt", "seed", "height", "width", "num_frames", "frame_rate")}


def write_images(folder: Path) -> list[Path]:
    """Two deterministic gradients (not at the output size: they go through resize and crop)."""
    y, x = np.mgrid[0:96, 0:160]
    paths = []
    for i in range(2):
        rgb = np.stack([(x * (i + 1)) % 256, (y * 2 + 60 * i) % 256, ((x + y) * (2 - i)) % 256], -1)
        paths.append(folder / f"image{i}.png")
        Image.fromarray(rgb.astype(np.uint8)).save(paths[-1])
    return paths


def image_specs(folder: Path) -> list[tuple[str, int, float]]:
    """A first-frame image (replaces latent 0) and a keyframe at frame 8 (appends tokens)."""
    first, last = write_images(folder)
    return [(str(first), 0, 1.0), (str(last), 8, 0.9)]


def checkpoint_args(tiny: TinySet) -> list[str]:
    return [
        "--distilled-checkpoint-path", str(tiny.checkpoint),
        "--gemma-root", str(tiny.gemma_root),
        "--spatial-upsampler-path", str(tiny.spatial_upsampler),
    ]  # fmt: skip


def setting_args() -> list[str]:
    s = SETTINGS
    return [
        "--prompt", s["prompt"], "--seed", str(s["seed"]), "--height", str(s["height"]), "--width", str(s["width"]),
        "--num-frames", str(s["num_frames"]), "--frame-rate", str(s["frame_rate"]),
    ]  # fmt: skip


def run_ours(tiny: TinySet, out: Path, images, *, backend: str, dtype: str) -> dict[str, torch.Tensor]:
    raw = out / f"distilled-{backend}-{dtype}.safetensors"
    argv = ["distilled", *checkpoint_args(tiny), *setting_args()]
    for path, idx, strength in images:
        argv += ["--image", path, str(idx), str(strength)]
    argv += [
        "--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing",
        "--output-path", str(out / f"distilled-{backend}-{dtype}.mp4"), "--raw-output", str(raw),
        "--prompt-cache", str(out / f"prompt-cache-{backend}-{dtype}"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return load_file(str(raw))


def run_reference_distilled(tiny: TinySet, images) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.distilled import DistilledPipeline
    from ltx_pipelines.utils.args import ImageConditioningInput

    with reference_shims(tiny.gemma_root), torch.inference_mode():
        reference = DistilledPipeline(
            distilled_checkpoint_path=str(tiny.checkpoint),
            gemma_root=str(tiny.gemma_root),
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            loras=[],
            device=torch.device("cpu"),
        )
        video, audio = reference(
            **SETTINGS,
            images=[ImageConditioningInput(path, idx, strength) for path, idx, strength in images],
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


@pytest.mark.reference
def test_distilled_reproduces_ltx_pipelines(tiny, tmp_path):
    images = image_specs(tmp_path)  # both image kinds: latent-0 replacement and an appended keyframe
    reference = run_reference_distilled(tiny, images)
    got = run_ours(tiny, tmp_path, images, backend="eager", dtype="bfloat16")
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report("distilled reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_distilled_ort_matches_eager(tiny, tmp_path):
    images = image_specs(tmp_path)  # the keyframe at frame 8 makes both DiT graphs carry appended tokens
    eager = run_ours(tiny, tmp_path, images, backend="eager", dtype="float32")
    compiled = run_ours(tiny, tmp_path, images, backend="ort", dtype="float32")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report("distilled eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio
    dits = sorted(p.name.split("-float32")[0] for p in (tmp_path / "artifacts" / "dit").iterdir())
    assert dits == ["9x128x192-b1-c24", "9x64x96-b1-c6"], dits  # one keyframe latent: 2x3, then 4x6 tokens


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--distilled-lora", "lora.safetensors", "0.8"], "--distilled-lora"),
        (["--checkpoint-path", "other.safetensors"], "--distilled-checkpoint-path"),
        (["--video-cfg-guidance-scale", "3.0"], "--video-cfg-guidance-scale"),
        (["--a2v-guidance-scale", "3.0"], "without guidance"),
        (["--image", "IMAGE", "0", "1.5"], "STRENGTH must be in [0, 1]"),
        (["--height", "160"], "multiple of 64"),
        (["--image", "missing.png", "0", "1.0"], "file not found"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, extra, needle):
    image = write_images(tmp_path)[0]
    extra = [str(image) if e == "IMAGE" else e for e in extra]
    argv = ["distilled", *checkpoint_args(tiny), *setting_args(), "--artifacts", str(tmp_path), *extra]
    argv += ["--output-path", str(tmp_path / "o.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4"))


def test_module_attributes():
    assert pipeline.TWO_STAGE and pipeline.DISTILLED and not pipeline.NEEDS_DISTILLED_LORA


def test_sigmas_equal_ltx_pipelines_constants():
    from ltx_pipelines.utils import constants as ref

    from ltx_ascend.engine import params

    assert params.DISTILLED_SIGMA_VALUES == ref.DISTILLED_SIGMA_VALUES
    assert params.STAGE_2_DISTILLED_SIGMA_VALUES == ref.STAGE_2_DISTILLED_SIGMA_VALUES
