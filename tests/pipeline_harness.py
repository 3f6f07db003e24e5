"""Run our pipelines and Lightricks' reference on the tiny set with the same settings."""

from __future__ import annotations

from pathlib import Path

import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
from safetensors.torch import load_file

from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.tools import run as cli
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


def tiny_settings(tiny: TinySet, tmp: Path, **overrides):
    """RunSettings over the tiny set's files, float32 eager, stores under `tmp` (the API and resident tests)."""
    from ltx_ascend import RunSettings
    from ltx_ascend.checkpoints.loader import LoraSpec

    base = dict(
        checkpoint_path=tiny.checkpoint,
        gemma_root=tiny.gemma_root,
        spatial_upsampler_path=tiny.spatial_upsampler,
        distilled_lora=(LoraSpec(tiny.distilled_lora, DISTILLED_LORA_STRENGTH),),
        artifacts=tmp / "artifacts",
        prompt_cache=tmp / "prompt-cache",
        backend="eager",
        dtype="float32",
    )
    return RunSettings(**{**base, **overrides})


# one small generation (9x128x192, 2 steps) the API and resident tests run through Engine and ltx-run alike
SMALL_REQUEST = dict(
    prompt="a red fox runs through fresh snow",
    negative_prompt="blurry",
    seed=42,
    height=128,
    width=192,
    num_frames=9,
    frame_rate=24.0,
    num_inference_steps=2,
)


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


def run_ours(
    pipeline: str,
    tiny: TinySet,
    out: Path,
    *extra: str,
    backend: str = "eager",
    dtype: str = "float32",
    prompt_cache: Path | None = None,
    distilled: bool = True,
):
    """Our `ltx-run PIPELINE` in-process; returns the raw output tensors (video uint8, audio float).
    Each backend's runs get their own prompt cache unless `prompt_cache` names a shared one.
    `distilled=False` for a pipeline without a distilled stage (no --distilled-lora)."""
    raw = out / f"{pipeline}-{backend}-{dtype}.safetensors"
    prompt_cache = prompt_cache or out / f"prompt-cache-{backend}-{dtype}"
    argv = [
        pipeline, *checkpoint_args(tiny, distilled=distilled), *setting_args(), *extra,
        "--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing",
        "--prompt-cache", str(prompt_cache),
        "--output-path", str(out / f"{pipeline}-{backend}-{dtype}.mp4"), "--raw-output", str(raw),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return load_file(str(raw))


def prompt_embeddings(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    """prompt -> {"video", "audio"} contexts from a run's prompt cache (the prompt is in each file's metadata)."""
    from safetensors import safe_open

    found = {}
    for path in sorted(cache.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            found[f.metadata()["prompt"]] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return found


def compare_prompt_embeddings(out: Path, backend: str, dtype: str = "float32") -> list:
    """Compiled vs eager text contexts of the same prompts (each run's own cache, see `run_ours`):
    the frames and audio hardly depend on the prompt on the tiny set, the contexts do."""
    from ltx_ascend.metrics import compare

    eager = prompt_embeddings(out / f"prompt-cache-eager-{dtype}")
    compiled = prompt_embeddings(out / f"prompt-cache-{backend}-{dtype}")
    assert eager and set(eager) == set(compiled), (sorted(eager), sorted(compiled))
    return [compare(eager[p][k], compiled[p][k]) for p in sorted(eager) for k in ("video", "audio")]


def assert_prompt_embeddings_match(out: Path, backend: str = "ort", dtype: str = "float32") -> None:
    """Every text context of the compiled run within the float32 export tolerance of the eager run's."""
    from ltx_ascend.metrics import TOLERANCES

    for context in compare_prompt_embeddings(out, backend, dtype):
        assert context.passes(TOLERANCES[dtype]), f"text context differs: {context}"


def guider_params():
    from ltx_core.components.guiders import MultiModalGuiderParams

    from ltx_ascend.engine.params import LTX_2_3

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
