"""ltx-run keyframe_interpolation on the tiny set: Lightricks' KeyframeInterpolationPipeline vs our
eager bf16, ORT vs eager in float32 (DiT graphs sized for the appended keyframe tokens), input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltx_ascend.metrics import compare
from ltx_ascend.pipelines import keyframe_interpolation as pipeline
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


def keyframes(folder: Path) -> list[tuple[str, int, float]]:
    """Three deterministic gradients (not at the output size: they go through resize and crop) as
    keyframes at frames 0, 4 and 8 of the 9-frame test video; one below full strength."""
    y, x = np.mgrid[0:96, 0:160]
    specs = []
    for i, (frame, strength) in enumerate(((0, 1.0), (4, 0.8), (8, 1.0))):
        rgb = np.stack([(x * (i + 1)) % 256, (y * 2 + 60 * i) % 256, ((x + y) * (3 - i)) % 256], -1)
        path = folder / f"keyframe{i}.png"
        Image.fromarray(rgb.astype(np.uint8)).save(path)
        specs.append((str(path), frame, strength))
    return specs


def image_args(specs) -> list[str]:
    return [a for path, idx, strength in specs for a in ("--image", path, str(idx), str(strength))]


def run_reference_keyframe_interpolation(tiny, specs) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.keyframe_interpolation import KeyframeInterpolationPipeline
    from ltx_pipelines.utils.args import ImageConditioningInput

    video_params, audio_params = H.guider_params()
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        reference = KeyframeInterpolationPipeline(
            checkpoint_path=str(tiny.checkpoint),
            distilled_lora=H.distilled_lora(tiny),
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=[],
            device=torch.device("cpu"),
        )
        video, audio = reference(
            **H.SETTINGS,
            video_guider_params=video_params,
            audio_guider_params=audio_params,
            images=[ImageConditioningInput(path, idx, strength) for path, idx, strength in specs],
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


@pytest.mark.reference
def test_keyframe_interpolation_reproduces_ltx_pipelines(tiny, tmp_path):
    specs = keyframes(tmp_path)
    reference = run_reference_keyframe_interpolation(tiny, specs)
    got = H.run_ours("keyframe_interpolation", tiny, tmp_path, *image_args(specs), backend="eager", dtype="bfloat16")
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report("keyframe_interpolation reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_keyframe_interpolation_ort_matches_eager(tiny, tmp_path):
    specs = keyframes(tmp_path)
    eager = H.run_ours("keyframe_interpolation", tiny, tmp_path, *image_args(specs), backend="eager")
    compiled = H.run_ours("keyframe_interpolation", tiny, tmp_path, *image_args(specs), backend="ort")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report("keyframe_interpolation eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio
    # Three keyframes of one latent frame each: 3 x (2x3) tokens at stage 1, 3 x (4x6) at stage 2;
    # stage 1 runs its 4 guidance passes (cond, uncond, STG, modality) in one call.
    dits = sorted(p.name.split("-float32")[0] for p in (tmp_path / "artifacts" / "dit").iterdir())
    assert dits == ["9x128x192-b1-c72", "9x64x96-b4-c18"], dits


def test_conditioning_tokens_read_from_the_built_state():
    """The token count the DiT profile gets is what ltx-core's keyframe items append."""
    from ltx_core.conditioning import VideoConditionByKeyframeIndex
    from ltx_core.types import VideoPixelShape

    from ltx_ascend.engine import sampling

    shape = VideoPixelShape(batch=1, frames=9, height=64, width=96, fps=24.0)
    tools = sampling.video_tools(shape)
    state = tools.create_initial_state(torch.device("cpu"), torch.float32)
    assert sampling.conditioning_tokens(tools, state) == 0
    keyframe = torch.zeros(1, 128, 1, 2, 3)
    for frame in (0, 8):
        state = VideoConditionByKeyframeIndex(keyframes=keyframe, frame_idx=frame, strength=1.0).apply_to(state, tools)
    assert sampling.conditioning_tokens(tools, state) == 12
    assert state.attention_mask is None  # plain keyframe items: our mask-less DiT graph is exact


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "at least one --image"),
        (["--image", "IMAGE", "4", "1.5"], "STRENGTH must be in [0, 1]"),
        (["--image", "IMAGE", "9", "1.0"], "frame index must be in [0, 8]"),
        (["--image", "missing.png", "0", "1.0"], "file not found"),
        (["--image", "IMAGE", "four", "1.0"], "FRAME_IDX"),
        (["--image", "IMAGE", "0", "1.0", "--height", "160"], "multiple of 64"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, extra, needle):
    image = keyframes(tmp_path)[0][0]
    extra = [image if e == "IMAGE" else e for e in extra]
    argv = ["keyframe_interpolation", *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path)]
    argv += [*extra, "--output-path", str(tmp_path / "o.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4"))


def test_needs_distilled_lora(tiny, tmp_path, capsys):
    argv = ["keyframe_interpolation", *H.checkpoint_args(tiny, distilled=False), *H.setting_args()]
    argv += [*image_args(keyframes(tmp_path)[:1]), "--artifacts", str(tmp_path)]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2 and "--distilled-lora" in err, err


def test_module_attributes():
    assert pipeline.TWO_STAGE and not getattr(pipeline, "DISTILLED", False)
