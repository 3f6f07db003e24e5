"""ltx-run ti2vid_two_stages_hq on the tiny set: eager bf16 vs Lightricks' TI2VidTwoStagesHQPipeline,
ORT vs eager in float32, the input checks, and our res_2s sampler vs ltx-pipelines' on random tensors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from ltx_core.components.diffusion_steps import Res2sDiffusionStep
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.types import LatentState
from PIL import Image

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.checkpoints.tiny import TinySet
from ltx_ascend.engine import params as P
from ltx_ascend.engine import res2s
from ltx_ascend.metrics import compare
from ltx_ascend.pipelines import ti2vid_two_stages_hq as pipeline
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims

NAME = "ti2vid_two_stages_hq"
REFERENCE_FRAMES_PSNR_DB = 40.0
REFERENCE_AUDIO_MIN_COSINE = 0.99
COMPILED_FRAMES_PSNR_DB = 35.0
COMPILED_AUDIO_MIN_COSINE = 0.999
STEPS = 2  # res_2s calls the DiT twice a step: 2 stage-1 steps keep the file fast


def hq_guider_params() -> tuple[MultiModalGuiderParams, MultiModalGuiderParams]:
    """LTX-2.3 HQ guidance with the tiny DiT's STG block (what `H.setting_args` passes)."""
    video = MultiModalGuiderParams(**{**P.LTX_2_3_HQ.video_guider.__dict__, "stg_blocks": H.STG_BLOCKS})
    audio = MultiModalGuiderParams(**{**P.LTX_2_3_HQ.audio_guider.__dict__, "stg_blocks": H.STG_BLOCKS})
    return video, audio


def _write_images(folder: Path) -> list[tuple[str, int, float]]:
    """A first-frame image (replaces latent 0) and a keyframe image (appended tokens) at frame 8."""
    rng = np.random.default_rng(11)
    images = []
    for name, frame, strength in (("first.png", 0, 1.0), ("last.png", 8, 0.7)):
        pixels = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((300, 180)).save(folder / name)
        images.append((str(folder / name), frame, strength))
    return images


def run_reference_ti2vid_two_stages_hq(tiny: TinySet, images=()) -> dict[str, torch.Tensor]:
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.ti2vid_two_stages_hq import TI2VidTwoStagesHQPipeline
    from ltx_pipelines.utils.args import ImageConditioningInput

    video_params, audio_params = hq_guider_params()
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        reference = TI2VidTwoStagesHQPipeline(
            checkpoint_path=str(tiny.checkpoint),
            distilled_lora=H.distilled_lora(tiny),
            distilled_lora_strength_stage_1=pipeline.DISTILLED_LORA_STRENGTH_STAGE_1,
            distilled_lora_strength_stage_2=pipeline.DISTILLED_LORA_STRENGTH_STAGE_2,
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=(),
            device=torch.device("cpu"),
        )
        video, audio = reference(
            **{**H.SETTINGS, "num_inference_steps": STEPS},
            video_guider_params=video_params,
            audio_guider_params=audio_params,
            images=[ImageConditioningInput(path, frame, strength) for path, frame, strength in images],
            tiling_config=TilingConfig.default(),
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


def _report(name: str, frames, audio) -> None:
    print(f"{name}: frames PSNR {frames.psnr_db:.1f} dB, audio cosine {audio.cosine:.5f} (PSNR {audio.psnr_db:.1f} dB)")


@pytest.mark.reference
def test_reproduces_ltx_pipelines(tiny, tmp_path):
    images = _write_images(tmp_path)
    reference = run_reference_ti2vid_two_stages_hq(tiny, images)
    image_args = [a for path, frame, strength in images for a in ("--image", path, str(frame), str(strength))]
    got = H.run_ours(
        NAME, tiny, tmp_path, "--num-inference-steps", str(STEPS), *image_args, backend="eager", dtype="bfloat16"
    )
    assert got["video"].shape == reference["video"].shape == (9, 128, 192, 3)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    _report(f"{NAME} reference vs eager bf16", frames, audio)
    assert frames.psnr_db >= REFERENCE_FRAMES_PSNR_DB, frames
    assert audio.cosine >= REFERENCE_AUDIO_MIN_COSINE, audio


def test_ort_matches_eager(tiny, tmp_path):
    eager = H.run_ours(NAME, tiny, tmp_path, "--num-inference-steps", str(STEPS), backend="eager")
    compiled = H.run_ours(NAME, tiny, tmp_path, "--num-inference-steps", str(STEPS), backend="ort")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    frames = compare(eager["video"].float(), compiled["video"].float(), peak=255.0)
    audio = compare(eager["audio"], compiled["audio"], peak=2.0)
    _report(f"{NAME} eager vs ort float32", frames, audio)
    assert frames.psnr_db >= COMPILED_FRAMES_PSNR_DB, frames
    assert audio.cosine >= COMPILED_AUDIO_MIN_COSINE, audio


def test_defaults_equal_ltx_pipelines_constants():
    from ltx_pipelines.utils.args import hq_2_stage_arg_parser
    from ltx_pipelines.utils.constants import LTX_2_3_HQ_PARAMS as ref

    d = pipeline.DEFAULTS
    assert (d.height, d.width) == (ref.stage_2_height, ref.stage_2_width)
    assert (d.num_inference_steps, d.num_frames, d.frame_rate, d.seed) == (
        ref.num_inference_steps,
        ref.num_frames,
        ref.frame_rate,
        ref.seed,
    )
    assert (d.video_guider, d.audio_guider) == (ref.video_guider_params, ref.audio_guider_params)
    t = pipeline.TINY_DEFAULTS
    assert (t.num_inference_steps, t.video_guider, t.audio_guider) == (
        ref.num_inference_steps,
        ref.video_guider_params,
        ref.audio_guider_params,
    )
    theirs = {a.dest: a.default for a in hq_2_stage_arg_parser()._actions}
    assert theirs["distilled_lora_strength_stage_1"] == pipeline.DISTILLED_LORA_STRENGTH_STAGE_1
    assert theirs["distilled_lora_strength_stage_2"] == pipeline.DISTILLED_LORA_STRENGTH_STAGE_2
    assert pipeline.TWO_STAGE


def test_stage_strength_flags_pick_the_distilled_lora_strength_per_stage(tiny, tmp_path):
    argv = [NAME, *H.checkpoint_args(tiny), *H.setting_args(), "--distilled-lora-strength-stage-1", "0.1"]
    args = cli.build_parser().parse_args(argv)
    req = cli.request_from_args(args, pipeline.DEFAULTS)
    pipeline.check(args, req)
    lora = Path(tiny.distilled_lora)
    assert pipeline._stage_lora(req, 1) == (LoraSpec(lora, 0.1),)
    assert pipeline._stage_lora(req, 2) == (LoraSpec(lora, pipeline.DISTILLED_LORA_STRENGTH_STAGE_2),)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--distilled-lora", "second.safetensors", "0.5"], "one distilled LoRA"),
        (["--num-inference-steps", "1"], "needs >= 2"),
        (["--height", "160"], "multiple of 64"),
        (["--num-frames", "10"], "8k+1"),
        (["--image", "missing.png", "0", "1.0"], "file not found"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, tmp_path, capsys, extra, needle):
    argv = [NAME, *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path), *extra]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.mp4"))


def test_one_step_schedule_is_nan_in_ltx_core():
    """Why --num-inference-steps 1 is refused: the schedule the reference builds for it is NaN."""
    from ltx_core.components.schedulers import LTX2Scheduler

    assert torch.isnan(LTX2Scheduler().execute(latent=torch.empty(1, 128, 2, 2, 3, device="meta"), steps=1)[0])
    assert not torch.isnan(LTX2Scheduler().execute(latent=torch.empty(1, 128, 2, 2, 3, device="meta"), steps=2)).any()


def test_needs_distilled_lora(tiny, tmp_path, capsys):
    argv = [NAME, *H.checkpoint_args(tiny, distilled=False), *H.setting_args(), "--artifacts", str(tmp_path)]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2 and "--distilled-lora" in err and len(err.strip().splitlines()) == 1


# --- res_2s on random tensors against ltx_pipelines.utils.res2s / samplers ------------------------


@pytest.mark.parametrize("h", [0.0, 1e-12, 1e-4, 0.05, 0.3, 0.49, 0.7, 1.5, 6.0, 6.56])
def test_res2s_coefficients_equal_ltx_pipelines(h):
    from ltx_pipelines.utils.res2s import get_res2s_coefficients, phi

    assert res2s.coefficients(h) == get_res2s_coefficients(h, {}, 0.5)
    for j in (1, 2, 3):
        assert res2s.phi(j, -h) == phi(j, -h)


def _state(tokens: int, channels: int, seed: int, dtype: torch.dtype, conditioned: int = 0) -> LatentState:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, tokens, 1)
    mask[:, :conditioned] = 0.0
    return LatentState(
        latent=torch.randn(1, tokens, channels, generator=g).to(dtype),
        denoise_mask=mask,
        positions=torch.zeros(1, 3, tokens, 2),
        clean_latent=torch.randn(1, tokens, channels, generator=g).to(dtype),
    )


def _toy_denoiser():
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(5)) * 0.2

    def fn(video_state, audio_state, sigmas, step_index):  # keyword names: the reference calls it so
        sigma = float(sigmas[step_index])
        v = torch.tanh(video_state.latent.float() @ weight) * (1 - sigma) + 0.1 * video_state.latent.float()
        a = audio_state.latent.float() * (0.5 * sigma) - 0.2
        return v.to(video_state.latent.dtype), a.to(audio_state.latent.dtype)

    return fn


SCHEDULES = {
    "stage-2 distilled tail": P.STAGE_2_DISTILLED_SIGMA_VALUES,
    "to zero": [1.0, 0.95, 0.8, 0.4, 0.1, 0.0],
    "no final zero": [1.0, 0.98, 0.95, 0.5],
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("legacy_mode", [True, False])
@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float32])
def test_res2s_loop_equals_ltx_pipelines(schedule, legacy_mode, model_dtype):
    from ltx_pipelines.utils.samplers import res2s_audio_video_denoising_loop

    sigmas = torch.tensor(SCHEDULES[schedule])
    video, audio = _state(24, 16, 1, model_dtype, conditioned=4), _state(7, 16, 2, model_dtype)
    ref_v, ref_a = res2s_audio_video_denoising_loop(
        sigmas, video, audio, Res2sDiffusionStep(), _toy_denoiser(), model_dtype=model_dtype, legacy_mode=legacy_mode
    )
    our_v, our_a = res2s.res2s_loop(
        sigmas,
        video,
        audio,
        _toy_denoiser(),
        high_precision=torch.float64,
        model_dtype=model_dtype,
        legacy_mode=legacy_mode,
    )
    assert our_v.latent.dtype == ref_v.latent.dtype == model_dtype
    assert torch.equal(our_v.latent, ref_v.latent)
    assert torch.equal(our_a.latent, ref_a.latent)


def test_res2s_loop_in_float32_stays_close_to_the_float64_reference(monkeypatch):
    """The NPU policy's float32 accumulators (no float64 there) stay close to the float64 reference,
    given the same noise (a float32 draw is another random sequence, so the noise is drawn in float64
    and rounded here)."""
    from ltx_pipelines.utils.samplers import res2s_audio_video_denoising_loop

    draw = res2s.sde_noise
    monkeypatch.setattr(res2s, "sde_noise", lambda like, g, dtype: draw(like, g, torch.float64).to(dtype))

    sigmas = torch.tensor(SCHEDULES["to zero"])
    video, audio = _state(24, 16, 1, torch.float32, conditioned=4), _state(7, 16, 2, torch.float32)
    ref_v, ref_a = res2s_audio_video_denoising_loop(
        sigmas, video, audio, Res2sDiffusionStep(), _toy_denoiser(), model_dtype=torch.float32
    )
    our_v, our_a = res2s.res2s_loop(
        sigmas, video, audio, _toy_denoiser(), high_precision=torch.float32, model_dtype=torch.float32
    )
    assert compare(ref_v.latent, our_v.latent).cosine > 0.99999
    assert compare(ref_a.latent, our_a.latent).cosine > 0.99999


def test_res2s_reads_high_precision_from_the_device_policy(monkeypatch):
    """`run` hands res2s the policy's high-precision dtype, never a hard-coded float64."""
    seen = []

    def fake_loop(sigmas, video, audio, denoise, *, high_precision, **_):
        seen.append(high_precision)
        raise _Stop

    class _Stop(Exception):
        pass

    monkeypatch.setattr(res2s, "res2s_loop", fake_loop)  # the stage runner looks it up there
    ctx = _fake_context(argparse.Namespace(high_precision_dtype=torch.float32))
    with pytest.raises(_Stop):
        pipeline.run(ctx)
    assert seen == [torch.float32]


def _fake_context(policy):
    """A RunContext whose models are stubs: enough to reach the stage-1 sampler."""
    from ltx_ascend.engine.context import Request, RunContext
    from ltx_ascend.engine.text import PromptEmbeddings
    from ltx_ascend.engine.timing import Timings

    video, audio = hq_guider_params()
    req = Request(
        prompt="p", negative_prompt="n", seed=1, height=128, width=192, num_frames=9, frame_rate=24.0,
        num_inference_steps=2, video_guider=video, audio_guider=audio,
        distilled_lora=(LoraSpec(Path("lora.safetensors"), 0.8),),
    )  # fmt: skip
    emb = PromptEmbeddings(torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))

    class Stack:
        device, dtype = torch.device("cpu"), torch.float32

        def __init__(self):
            self.policy = policy

        def dit(self, profile, loras=()):
            return None

    class Prompts:
        def encode(self, prompts):
            return [emb, emb]

    return RunContext(req, Stack(), Prompts(), Timings())
