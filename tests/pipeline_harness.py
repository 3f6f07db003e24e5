"""Run our pipelines and Lightricks' reference on the tiny set with the same settings."""

from __future__ import annotations

from pathlib import Path

import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
from safetensors.torch import load_file

from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.pipelines import cli
from tests.reference import reference_shims

# Small, fast settings every pipeline test shares (two-stage: stage 1 at 64x96).
SETTINGS = {
    "prompt": "a red fox runs through fresh snow",
    "negative_prompt": "blurry, low quality",
    "seed": 42,
    "height": 128,
    "width": 192,
    "num_frames": 9,
    "frame_rate": 24.0,
    "num_inference_steps": 3,
}
STG_BLOCKS = [1]  # the tiny DiT has 2 blocks; LTX-2.3 perturbs block 28 of 48
DISTILLED_LORA_STRENGTH = 0.8


def checkpoint_args(tiny: TinySet, *, distilled: bool = True) -> list[str]:
    args = [
        "--checkpoint-path", str(tiny.checkpoint),
        "--gemma-root", str(tiny.gemma_root),
        "--spatial-upsampler-path", str(tiny.spatial_upsampler),
    ]  # fmt: skip
    if distilled:
        args += ["--distilled-lora", str(tiny.distilled_lora), str(DISTILLED_LORA_STRENGTH)]
    return args


def setting_args(**overrides) -> list[str]:
    s = {**SETTINGS, **overrides}
    return [
        "--prompt", s["prompt"], "--negative-prompt", s["negative_prompt"], "--seed", str(s["seed"]),
        "--height", str(s["height"]), "--width", str(s["width"]), "--num-frames", str(s["num_frames"]),
        "--frame-rate", str(s["frame_rate"]), "--num-inference-steps", str(s["num_inference_steps"]),
        "--video-stg-blocks", *map(str, STG_BLOCKS), "--audio-stg-blocks", *map(str, STG_BLOCKS),
    ]  # fmt: skip


def run_ours(pipeline: str, tiny: TinySet, out: Path, *extra: str, backend: str = "eager", dtype: str = "float32"):
    """Our `ltx-run PIPELINE` in-process; returns the raw output tensors (video uint8, audio float)."""
    raw = out / f"{pipeline}-{backend}-{dtype}.safetensors"
    argv = [
        pipeline, *checkpoint_args(tiny), *setting_args(), *extra,
        "--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing",
        "--output-path", str(out / f"{pipeline}-{backend}-{dtype}.mp4"), "--raw-output", str(raw),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return load_file(str(raw))


def guider_params():
    from ltx_core.components.guiders import MultiModalGuiderParams

    from ltx_ascend.pipelines.params import LTX_2_3

    video = MultiModalGuiderParams(**{**LTX_2_3.video_guider.__dict__, "stg_blocks": STG_BLOCKS})
    audio = MultiModalGuiderParams(**{**LTX_2_3.audio_guider.__dict__, "stg_blocks": STG_BLOCKS})
    return video, audio


def distilled_lora(tiny: TinySet) -> list[LoraPathStrengthAndSDOps]:
    return [LoraPathStrengthAndSDOps(str(tiny.distilled_lora), DISTILLED_LORA_STRENGTH, LTXV_LORA_COMFY_RENAMING_MAP)]


def run_reference_ti2vid_two_stages(tiny: TinySet) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.ti2vid_two_stages import TI2VidTwoStagesPipeline

    video_params, audio_params = guider_params()
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        pipeline = TI2VidTwoStagesPipeline(
            checkpoint_path=str(tiny.checkpoint),
            distilled_lora=distilled_lora(tiny),
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=[],
            device=torch.device("cpu"),
        )
        video, audio = pipeline(
            **SETTINGS,
            video_guider_params=video_params,
            audio_guider_params=audio_params,
            images=[],
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}
