"""The tiny set is a valid LTX-2.3 checkpoint set for Lightricks' own two-stage pipeline."""

from __future__ import annotations

import pytest
import torch
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
from ltx_core.model.video_vae import TilingConfig

from tests.reference import reference_shims

pytestmark = pytest.mark.reference


def _run(tiny):
    from ltx_pipelines.ti2vid_two_stages import TI2VidTwoStagesPipeline

    with reference_shims(tiny.gemma_root), torch.inference_mode():
        pipeline = TI2VidTwoStagesPipeline(
            checkpoint_path=str(tiny.checkpoint),
            distilled_lora=[LoraPathStrengthAndSDOps(str(tiny.distilled_lora), 0.8, LTXV_LORA_COMFY_RENAMING_MAP)],
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=[],
            device=torch.device("cpu"),
        )
        guidance = MultiModalGuiderParams(
            cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1]
        )
        video, audio = pipeline(
            prompt="a red fox runs through fresh snow",
            negative_prompt="blurry, low quality",
            seed=42,
            height=128,
            width=192,
            num_frames=9,
            frame_rate=24.0,
            num_inference_steps=3,
            video_guider_params=guidance,
            audio_guider_params=guidance,
            images=[],
            tiling_config=TilingConfig.default(),
        )
        frames = torch.cat(list(video))
    return frames, audio


def test_ti2vid_two_stages_reference_runs_on_tiny_set(tiny):
    frames, audio = _run(tiny)
    assert frames.shape == (9, 128, 192, 3)
    assert frames.dtype == torch.uint8
    assert frames.float().std() > 0  # not a constant image
    waveform = audio.waveform
    assert waveform.shape[0] == 2 and waveform.shape[-1] > 0
    assert torch.isfinite(waveform.float()).all()
    assert audio.sampling_rate == 48000
