"""ltx-run ic_lora on the tiny set: Lightricks' ICLoraPipeline vs our eager (bf16), ORT vs eager (fp32),
the attention-mask path (eager fallback), and the input checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine import params as ours
from ltx_ascend.metrics import compare
from ltx_ascend.pipelines import ic_lora
from ltx_ascend.shapes import shape_name, shape_profile
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.reference import reference_shims

REFERENCE_FRAMES_PSNR_DB = 40.0
REFERENCE_AUDIO_MIN_COSINE = 0.99
COMPILED_FRAMES_PSNR_DB = 35.0
COMPILED_AUDIO_MIN_COSINE = 0.999

# The tiny IC-LoRA reads its reference at stage-1 size / 2: 128x256 -> stage 1 64x128 -> reference 32x64
# (the video VAE needs multiples of 32, so SETTINGS' 128x192 does not fit a factor-2 IC-LoRA).
SIZE = {"height": 128, "width": 256}
SETTINGS = {**H.SETTINGS, **SIZE}
LORA_STRENGTH = 1.0
VIDEO_STRENGTH = 1.0


def write_video(path: Path, frames: int = 9, height: int = 96, width: int = 160, gray: bool = False) -> Path:
    """A small deterministic H.264 mp4: moving colour ramps (or a grey ramp for a mask)."""
    y, x = np.mgrid[0:height, 0:width]
    container = av.open(str(path), "w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=24, options={"crf": "18", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            if gray:
                value = np.clip(x * 255 // width + 10 * i, 0, 255)
                image = np.repeat(value[..., None], 3, axis=-1)
            else:
                image = np.stack(
                    [(x * 255 // width + 8 * i) % 256, y * 255 // height, ((x + y + 16 * i) // 4 % 2) * 200]
                )
                image = image.transpose(1, 2, 0)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image.astype(np.uint8)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("ic_lora") / "control.mp4")


def checkpoint_args(tiny, *, lora: bool = True) -> list[str]:
    args = [
        "--distilled-checkpoint-path", str(tiny.checkpoint), "--gemma-root", str(tiny.gemma_root),
        "--spatial-upsampler-path", str(tiny.spatial_upsampler),
    ]  # fmt: skip
    return [*args, "--lora", str(tiny.ic_lora), str(LORA_STRENGTH)] if lora else args


def argv_for(tiny, control: Path, *extra: str) -> list[str]:
    return [
        "ic_lora", *checkpoint_args(tiny), *H.setting_args(**SIZE),
        "--video-conditioning", str(control), str(VIDEO_STRENGTH), *extra,
    ]  # fmt: skip


def run_ours(tiny, control: Path, out: Path, *extra: str, backend: str = "eager", dtype: str = "float32"):
    raw = out / f"ic_lora-{backend}-{dtype}.safetensors".replace("=", "-").replace(",", "_")
    argv = argv_for(tiny, control, *extra)
    argv += ["--backend", backend, "--dtype", dtype, "--artifacts", str(out / "artifacts"), "--build-missing"]
    argv += ["--output-path", str(raw.with_suffix(".mp4")), "--raw-output", str(raw)]
    argv += ["--prompt-cache", str(out / f"prompt-cache-{backend}-{dtype}")]
    assert cli.main(argv) == 0
    return load_file(str(raw))


def run_reference_ic_lora(
    tiny, control: Path, *, strength: float = VIDEO_STRENGTH, mask: tuple[Path, float] | None = None, **kwargs
) -> dict[str, torch.Tensor]:
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_core.model.video_vae import TilingConfig
    from ltx_pipelines.ic_lora import ICLoraPipeline, _load_mask_video

    s = SETTINGS
    with reference_shims(tiny.gemma_root), torch.inference_mode():
        if mask is not None:
            kwargs["conditioning_attention_strength"] = mask[1]
            kwargs["conditioning_attention_mask"] = _load_mask_video(
                str(mask[0]), s["height"] // 2, s["width"] // 2, s["num_frames"]
            )
        pipeline = ICLoraPipeline(
            distilled_checkpoint_path=str(tiny.checkpoint),
            spatial_upsampler_path=str(tiny.spatial_upsampler),
            gemma_root=str(tiny.gemma_root),
            loras=[LoraPathStrengthAndSDOps(str(tiny.ic_lora), LORA_STRENGTH, LTXV_LORA_COMFY_RENAMING_MAP)],
            device=torch.device("cpu"),
        )
        assert pipeline.reference_downscale_factor == 2
        video, audio = pipeline(
            prompt=s["prompt"],
            seed=s["seed"],
            height=s["height"],
            width=s["width"],
            num_frames=s["num_frames"],
            frame_rate=s["frame_rate"],
            images=[],
            video_conditioning=[(str(control), strength)],
            tiling_config=TilingConfig.default(),
            **kwargs,
        )
        return {"video": torch.cat(list(video)), "audio": audio.waveform.float()}


def _compare(name: str, reference, got, psnr: float, cosine: float) -> None:
    assert got["video"].shape == reference["video"].shape, (got["video"].shape, reference["video"].shape)
    frames = compare(reference["video"].float(), got["video"].float(), peak=255.0)
    audio = compare(reference["audio"], got["audio"], peak=2.0)
    print(f"{name}: frames PSNR {frames.psnr_db:.1f} dB, audio cosine {audio.cosine:.5f} (PSNR {audio.psnr_db:.1f} dB)")
    assert frames.psnr_db >= psnr, frames
    assert audio.cosine >= cosine, audio


@pytest.mark.reference
def test_ic_lora_reproduces_ltx_pipelines(tiny, control, tmp_path):
    reference = run_reference_ic_lora(tiny, control)
    got = run_ours(tiny, control, tmp_path, backend="eager", dtype="bfloat16")
    assert got["video"].shape == (9, 128, 256, 3)
    _compare("ic_lora reference vs eager bf16", reference, got, REFERENCE_FRAMES_PSNR_DB, REFERENCE_AUDIO_MIN_COSINE)


def test_ic_lora_ort_matches_eager(tiny, control, tmp_path, capsys):
    eager = run_ours(tiny, control, tmp_path, backend="eager")
    compiled = run_ours(tiny, control, tmp_path, backend="ort")
    H.assert_prompt_embeddings_match(tmp_path)  # the compiled text connectors ran, and match
    out = capsys.readouterr()
    assert "warning: dit" not in out.err and "dit=ort" in out.out
    # Stage 1's DiT carries the reference tokens: 9 frames at 32x64 (stage 1 / 2).
    tokens = shape_profile((9, 32, 64)).video_latent_tokens
    stage_1 = shape_profile((9, 128, 256), stage=1, conditioning_tokens=tokens)
    assert tokens == 4 and list((tmp_path / "artifacts" / "dit").glob(f"{shape_name(stage_1.graph_shape())}-float32-*"))
    # The reference video is encoded by a video-encoder graph at its own shape.
    assert list((tmp_path / "artifacts" / "video_encoder").glob("9x32x64-b1-float32-*"))
    _compare("ic_lora eager vs ort float32", eager, compiled, COMPILED_FRAMES_PSNR_DB, COMPILED_AUDIO_MIN_COSINE)


@pytest.mark.reference
def test_ic_lora_attention_mask_runs_eager_and_reproduces_ltx_pipelines(tiny, control, tmp_path, capsys):
    """The mask sets a self-attention mask no compiled DiT takes: one warning, stage 1 eager, same result."""
    mask = write_video(tmp_path / "mask.mp4", gray=True)
    reference = run_reference_ic_lora(tiny, control, strength=0.8, mask=(mask, 0.7), skip_stage_2=True)
    argv = argv_for(tiny, control, ic_lora.MASK_FLAG, str(mask), "0.7", "--skip-stage-2")
    argv[argv.index(str(control)) + 1] = "0.8"
    raw = tmp_path / "mask.safetensors"
    argv += ["--backend", "dit=ort", "--dtype", "bfloat16", "--artifacts", str(tmp_path / "artifacts")]
    argv += ["--output-path", str(tmp_path / "mask-out.mp4"), "--raw-output", str(raw)]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: dit:")]
    assert len(warnings) == 1 and ic_lora.MASK_FLAG in warnings[0] and "eager" in warnings[0], err
    got = load_file(str(raw))
    assert got["video"].shape == (9, 64, 128, 3)  # --skip-stage-2: stage-1 size
    _compare(
        "ic_lora mask reference vs eager bf16", reference, got, REFERENCE_FRAMES_PSNR_DB, REFERENCE_AUDIO_MIN_COSINE
    )


def test_tiny_default_lora_is_the_tiny_ic_lora(tmp_path, control):
    """No checkpoint flags: check() makes the tiny set's IC-LoRA the --lora (reference factor 2)."""
    argv = ["ic_lora", "--artifacts", str(tmp_path), "--video-conditioning", str(control), "1.0"]
    args = cli.build_parser().parse_args(argv)
    req = cli.request_from_args(args, ic_lora.TINY_DEFAULTS)
    ic_lora.check(args, req)
    tiny_ic_lora = tmp_path / "tiny" / Path(args.lora[0].path).name
    assert args.lora == [LoraSpec(tiny_ic_lora, ours.DEFAULT_LORA_STRENGTH)] and tiny_ic_lora.is_file()
    inputs = req.extra["ic_lora"]
    assert inputs.downscale_factor == 2 and inputs.video_frames == (9,)


def test_constants_equal_ltx_pipelines():
    from ltx_pipelines.utils import constants as ref

    assert ours.DISTILLED_SIGMA_VALUES == ref.DISTILLED_SIGMA_VALUES
    assert ours.STAGE_2_DISTILLED_SIGMA_VALUES == ref.STAGE_2_DISTILLED_SIGMA_VALUES
    assert ours.DEFAULT_LORA_STRENGTH == ref.DEFAULT_LORA_STRENGTH
    params = ref.LTX_2_3_PARAMS
    assert (ic_lora.DEFAULTS.height, ic_lora.DEFAULTS.width) == (params.stage_2_height, params.stage_2_width)
    assert (ic_lora.DEFAULTS.num_frames, ic_lora.DEFAULTS.frame_rate) == (params.num_frames, params.frame_rate)
    assert ic_lora.DEFAULTS.seed == params.seed


def test_mask_to_latent_matches_ltx_pipelines():
    from ltx_core.types import VideoLatentShape
    from ltx_pipelines.ic_lora import ICLoraPipeline

    mask = torch.rand(1, 1, 17, 64, 96, generator=torch.Generator().manual_seed(0))
    expected = ICLoraPipeline._downsample_mask_to_latent(mask, VideoLatentShape(1, 128, 3, 2, 3))
    assert torch.equal(ic_lora.mask_to_latent(mask, 3, 2, 3), expected)


def _lora_with_factor(tiny, path: Path, factor: int) -> Path:
    save_file(load_file(str(tiny.ic_lora)), str(path), metadata={"reference_downscale_factor": str(factor)})
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no-video", "needs --video-conditioning"),
        ("missing-video", "file not found"),
        ("not-a-video", "cannot open it as a video"),
        ("audio-only", "has no video stream"),
        ("strength", "STRENGTH must be a number"),
        ("arity", "takes PATH STRENGTH"),
        ("vae-size", "multiples of 128"),
        ("factor-3", "divisible by the IC-LoRA's reference_downscale_factor 3"),
        ("conflict", "conflicts with"),
        ("mask-strength", "must be in [0, 1]"),
        ("mask-frames", "do not fit"),
        ("distilled-lora", "takes no --distilled-lora"),
    ],
)
def test_input_checks_are_one_line_errors(tiny, control, tmp_path, capsys, case, needle):
    video = ["--video-conditioning", str(control), "1.0"]
    base = ["ic_lora", *checkpoint_args(tiny, lora=case != "factor-3"), *H.setting_args(**SIZE)]
    extra: list[str] = video
    if case == "no-video":
        extra = []
    elif case == "missing-video":
        extra = ["--video-conditioning", str(tmp_path / "missing.mp4"), "1.0"]
    elif case == "not-a-video":
        (tmp_path / "text.mp4").write_text("not a video\n")
        extra = ["--video-conditioning", str(tmp_path / "text.mp4"), "1.0"]
    elif case == "audio-only":
        wav = tmp_path / "tone.wav"
        with av.open(str(wav), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=16000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        extra = ["--video-conditioning", str(wav), "1.0"]
    elif case == "strength":
        extra = ["--video-conditioning", str(control), "strong"]
    elif case == "arity":
        extra = ["--video-conditioning", str(control)]
    elif case == "vae-size":
        extra = [*video, "--height", "192"]  # stage 1 96 -> reference 48: not a multiple of 32
    elif case == "factor-3":
        extra = [*video, "--lora", str(_lora_with_factor(tiny, tmp_path / "x3.safetensors", 3)), "1.0"]
    elif case == "conflict":
        extra = [*video, "--lora", str(_lora_with_factor(tiny, tmp_path / "x4.safetensors", 4)), "1.0"]
    elif case == "mask-strength":
        extra = [*video, "--conditioning-attention-mask", str(control), "1.5"]
    elif case == "mask-frames":
        long = write_video(tmp_path / "long.mp4", frames=17)
        mask = write_video(tmp_path / "short.mp4", frames=4, gray=True)
        extra = ["--video-conditioning", str(long), "1.0", "--num-frames", "17"]
        extra += ["--conditioning-attention-mask", str(mask), "1.0"]
    elif case == "distilled-lora":
        extra = [*video, "--distilled-lora", str(tiny.distilled_lora), "0.8"]
    argv = [*base, *extra, "--artifacts", str(tmp_path / "artifacts"), "--output-path", str(tmp_path / "o.mp4")]
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o.mp4").exists()


def test_reference_downscale_factor_reads_lora_metadata(tiny, tmp_path):
    assert ic_lora.reference_downscale_factor([LoraSpec(tiny.ic_lora, 1.0)]) == 2
    assert ic_lora.reference_downscale_factor([LoraSpec(tiny.distilled_lora, 1.0)]) == 1  # no metadata: 1
    assert ic_lora.reference_downscale_factor([]) == 1


def test_namespace_flags_parse():
    args = cli.build_parser().parse_args(
        ["ic_lora", "--video-conditioning", "a.mp4", "0.5", "--video-conditioning", "b.mp4", "1", "--skip-stage-2"]
    )
    assert isinstance(args, argparse.Namespace)
    assert [(v.path, v.strength) for v in args.video_conditioning] == [("a.mp4", 0.5), ("b.mp4", 1.0)]
    assert args.skip_stage_2 and args.conditioning_attention_mask is None
