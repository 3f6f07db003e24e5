"""`ltx-tiny`: a complete synthetic LTX-2.3 checkpoint set in the released layout, small and seeded.

No real weights are reachable from CI or a laptop, so every code path runs on this set: the same
key names and `config` metadata schema as the released files, small widths, seeded random weights,
bfloat16 like the released files. Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torchaudio
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from safetensors.torch import save_file

from ltx_ascend.atomic import atomic_path, file_lock
from ltx_ascend.checkpoints.gemma import embeddings_processor_configurator
from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, configurator_of
from ltx_ascend.checkpoints.presets import tiny_config, tiny_gemma_config, tiny_upsampler_config
from ltx_ascend.errors import OneLineParser, UserError, cli_entry

# File names mirror the released ones with "tiny" in place of "22b".
CHECKPOINT = "ltx-2.3-tiny-dev.safetensors"
DISTILLED_LORA = "ltx-2.3-tiny-distilled-lora.safetensors"
IC_LORA = "ltx-2.3-tiny-ic-lora-union-control.safetensors"
SPATIAL_UPSAMPLER = "ltx-2.3-tiny-spatial-upscaler-x2.safetensors"
GEMMA_ROOT = "gemma-3-tiny"
INDEX = "tiny_set.json"

LORA_RANK = 4
IC_LORA_REFERENCE_DOWNSCALE = 2  # the released union-control IC-LoRA takes a half-size reference video
GEMMA_SPECIAL_TOKENS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
TOKENIZER_VOCAB = 640
MODEL_VERSION = "2.3.0"
VOCODER_OUTPUT_GAIN = 0.01  # keeps the tiny waveform mostly inside the clamp, so audio errors stay visible


@dataclass(frozen=True)
class TinySet:
    """Where the files of a tiny set are."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def distilled_lora(self) -> Path:
        return self.root / DISTILLED_LORA

    @property
    def ic_lora(self) -> Path:
        return self.root / IC_LORA

    @property
    def spatial_upsampler(self) -> Path:
        return self.root / SPATIAL_UPSAMPLER

    @property
    def gemma_root(self) -> Path:
        return self.root / GEMMA_ROOT

    def checkpoint_set(self, *loras: LoraSpec) -> CheckpointSet:
        return CheckpointSet(self.checkpoint, self.gemma_root, self.spatial_upsampler, tuple(loras))

    def is_complete(self) -> bool:
        return (self.root / INDEX).is_file()


# ---------------------------------------------------------------------------------------------
# Deterministic weights


def _seeded(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int, scope: str) -> None:
    """Overwrite parameters with seeded values whatever their __init__ did (some use torch.empty).

    Matrices and kernels get N(0, 1/fan_in) so activations stay O(1) through depth; biases small
    noise; other vectors and scalars (norm gains, snake alphas, scale multipliers) keep their
    deterministic __init__ values.
    """
    for name, param in module.named_parameters():
        gen = _seeded(seed, f"{scope}.{name}")
        if param.ndim >= 2:
            fan_in = param[0].numel()
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
        elif name.endswith("bias"):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def _to_file_dtype(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bfloat16 like the released files; integer buffers keep their dtype."""
    return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _with_prefix(sd: dict[str, torch.Tensor], mapping: dict[str, str], default: str) -> dict[str, torch.Tensor]:
    """Module keys -> released file keys: the first matching module prefix is replaced."""
    out = {}
    for key, value in sd.items():
        for module_prefix, file_prefix in mapping.items():
            if key.startswith(module_prefix):
                out[file_prefix + key.removeprefix(module_prefix)] = value
                break
        else:
            out[default + key] = value
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file with a canonical header: safetensors keeps metadata in a Rust HashMap, so two keys
    come out in random order; sort them in place (same bytes, same length) for same-seed-same-bytes."""
    save_file(_to_file_dtype(tensors), str(path), metadata=metadata)
    if not metadata or len(metadata) < 2:
        return
    with path.open("r+b") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":")).encode()
        if len(canonical) > length:
            raise RuntimeError(f"canonical safetensors header of {path} grew ({len(canonical)} > {length})")
        f.seek(8)
        f.write(canonical.ljust(length, b" "))


def _latent_statistics(channels: int, seed: int, scope: str) -> dict[str, torch.Tensor]:
    gen = _seeded(seed, scope)
    return {
        "mean-of-means": torch.randn(channels, generator=gen) * 0.05,
        "std-of-means": 1.0 + (torch.rand(channels, generator=gen) - 0.5) * 0.2,
    }


def _stft_buffers(n_fft: int, n_mels: int, sample_rate: int) -> dict[str, torch.Tensor]:
    """Causal Hann-window DFT bases and a Slaney mel filterbank: what the released vocoder stores."""
    n_freqs = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft
    forward = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :]
    inverse = torch.linalg.pinv(forward[:, 0, :]).T[:, None, :]
    mel = torchaudio.functional.melscale_fbanks(
        n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    ).T
    return {
        "mel_stft.stft_fn.forward_basis": forward.float(),
        "mel_stft.stft_fn.inverse_basis": inverse.float(),
        "mel_stft.mel_basis": mel.float(),
    }


def _build(configurator: Any, config: dict[str, Any], seed: int, scope: str) -> torch.nn.Module:
    """Build on CPU (buffers computed in __init__ must hold real values), then seed the weights."""
    with torch.device("cpu"):
        module = configurator.from_config(config)
    randomize_(module, seed, scope)
    return module


def _core_state_dict(config: dict[str, Any], gemma_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Every core component under its released key prefix, in one state dict."""
    sd: dict[str, torch.Tensor] = {}
    dit = _build(configurator_of("dit"), config, seed, "dit")
    sd |= _with_prefix(dit.state_dict(), {}, "model.diffusion_model.")
    connectors = _build(embeddings_processor_configurator(gemma_config), config, seed, "text_connectors")
    sd |= _with_prefix(
        connectors.state_dict(),
        {
            "feature_extractor.": "text_embedding_projection.",
            "video_connector.": "model.diffusion_model.video_embeddings_connector.",
            "audio_connector.": "model.diffusion_model.audio_embeddings_connector.",
        },
        "",
    )
    for part in ("encoder", "decoder"):
        vae = _build(configurator_of(f"video_{part}"), config, seed, f"video_{part}")
        vae_sd = {k: v for k, v in vae.state_dict().items() if not k.startswith("per_channel_statistics.")}
        sd |= _with_prefix(vae_sd, {}, f"vae.{part}.")
        audio = _build(configurator_of(f"audio_{part}"), config, seed, f"audio_{part}")
        audio_sd = {k: v for k, v in audio.state_dict().items() if not k.startswith("per_channel_statistics.")}
        sd |= _with_prefix(audio_sd, {}, f"audio_vae.{part}.")
    latent_channels = config["vae"]["latent_channels"]
    audio_stat_channels = config["audio_vae"]["model"]["params"]["ddconfig"]["ch"]
    sd |= _with_prefix(_latent_statistics(latent_channels, seed, "vae.stats"), {}, "vae.per_channel_statistics.")
    sd |= _with_prefix(
        _latent_statistics(audio_stat_channels, seed, "audio_vae.stats"), {}, "audio_vae.per_channel_statistics."
    )
    vocoder = _build(configurator_of("vocoder"), config, seed, "vocoder")
    with torch.no_grad():  # random generators saturate the [-1, 1] clamp; quieten their last convs
        for generator in (vocoder.vocoder, vocoder.bwe_generator):
            generator.conv_post.weight.mul_(VOCODER_OUTPUT_GAIN)
    bwe = config["vocoder"]["bwe"]
    vocoder_sd = vocoder.state_dict() | _stft_buffers(bwe["n_fft"], bwe["num_mels"], bwe["input_sampling_rate"])
    sd |= _with_prefix(vocoder_sd, {}, "vocoder.")
    return sd


def _lora_state_dict(dit_keys: list[str], shapes: dict[str, torch.Size], seed: int, scope: str) -> dict:
    """Rank-4 A/B pairs on every linear of the transformer blocks, in the released LoRA key layout."""
    sd = {}
    for key in dit_keys:
        if not key.startswith("transformer_blocks.") or not key.endswith(".weight") or len(shapes[key]) != 2:
            continue
        out_f, in_f = shapes[key]
        stem = "diffusion_model." + key.removesuffix(".weight")
        gen = _seeded(seed, f"{scope}.{key}")
        sd[f"{stem}.lora_A.weight"] = torch.randn(LORA_RANK, in_f, generator=gen) / math.sqrt(in_f)
        sd[f"{stem}.lora_B.weight"] = torch.randn(out_f, LORA_RANK, generator=gen) * (0.1 / math.sqrt(LORA_RANK))
    return sd


# ---------------------------------------------------------------------------------------------
# Gemma root


def _tokenizer_corpus() -> list[str]:
    """Deterministic English text: ltx-core's own Gemma system prompts plus a few video prompts."""
    prompts = resources.files("ltx_core.text_encoders.gemma.encoders").joinpath("prompts")
    lines = []
    for name in sorted(p.name for p in prompts.iterdir() if p.name.endswith(".txt")):
        lines += [line.strip() for line in prompts.joinpath(name).read_text().splitlines() if line.strip()]
    lines += [
        "A red fox runs through fresh snow at dawn, the camera tracking low beside it.",
        "Waves crash on black volcanic rocks while seabirds circle overhead; wind and surf.",
        "A woman in a yellow raincoat laughs as she opens an umbrella on a busy city street.",
        "0123456789 frames, seconds, 24 fps, 48 kHz stereo audio.",
    ]
    return lines


def _write_gemma_root(root: Path, seed: int) -> None:
    import sentencepiece as spm
    from transformers import Gemma3Config, Gemma3ImageProcessor, GemmaTokenizer, GemmaTokenizerFast
    from transformers.models.gemma3 import Gemma3ForConditionalGeneration

    root.mkdir(parents=True)
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus()),
        model_writer=model_bytes,
        model_type="bpe",
        vocab_size=TOKENIZER_VOCAB,
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=list(GEMMA_SPECIAL_TOKENS),
        num_threads=1,
        minloglevel=2,
    )
    (root / "tokenizer.model").write_bytes(model_bytes.getvalue())
    extra = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    slow = GemmaTokenizer(vocab_file=str(root / "tokenizer.model"), extra_special_tokens=extra)
    slow.save_pretrained(str(root))
    GemmaTokenizerFast.from_pretrained(str(root), extra_special_tokens=extra).save_pretrained(str(root))
    special_ids = {tok: slow.convert_tokens_to_ids(tok) for tok in GEMMA_SPECIAL_TOKENS}
    vision = tiny_gemma_config(len(slow), special_ids)["vision_config"]
    size = {"height": vision["image_size"], "width": vision["image_size"]}
    Gemma3ImageProcessor(size=size).save_pretrained(str(root))

    gemma_config = tiny_gemma_config(len(slow), special_ids)
    (root / "config.json").write_text(json.dumps(gemma_config, indent=2, sort_keys=True) + "\n")
    with torch.device("cpu"):
        model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(gemma_config))
    randomize_(model, seed, "gemma")
    # The released Gemma-3 layout ltx-core's GEMMA_LLM_KEY_OPS expects; lm_head is tied to embed_tokens.
    sd = _with_prefix(
        {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")},
        {
            "model.language_model.": "language_model.model.",
            "model.vision_tower.": "vision_tower.",
            "model.multi_modal_projector.": "multi_modal_projector.",
        },
        "",
    )
    save_file(_to_file_dtype(sd), str(root / "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# The set


def write_tiny_set(out: str | Path, seed: int = 0, dit: dict[str, int] | None = None) -> TinySet:
    """Write the whole set to `out` atomically (a reader never sees half a set). `dit`: other DiT widths
    or depth (`presets.tiny_config`'s heads, video_head_dim, audio_head_dim, layers) for a held-out set."""
    out = Path(out)
    with atomic_path(out) as tmp, torch.inference_mode(False), torch.no_grad():
        tmp.mkdir()
        _write_gemma_root(tmp / GEMMA_ROOT, seed)
        gemma_config = json.loads((tmp / GEMMA_ROOT / "config.json").read_text())
        config = tiny_config(**(dit or {}))
        core = _core_state_dict(config, gemma_config, seed)
        # model_version: ltx-pipelines picks the LTX-2.3 defaults (steps, STG block 28) from it.
        metadata = {"config": json.dumps(config), "model_version": MODEL_VERSION}
        _save(core, tmp / CHECKPOINT, metadata)

        upsampler_config = tiny_upsampler_config()
        upsampler = _build(LatentUpsamplerConfigurator, upsampler_config, seed, "spatial_upsampler")
        save_file(
            _to_file_dtype(upsampler.state_dict()),
            str(tmp / SPATIAL_UPSAMPLER),
            metadata={"config": json.dumps(upsampler_config)},
        )

        dit_keys = sorted(
            k.removeprefix("model.diffusion_model.") for k in core if k.startswith("model.diffusion_model.")
        )
        shapes = {k: core["model.diffusion_model." + k].shape for k in dit_keys}
        save_file(_to_file_dtype(_lora_state_dict(dit_keys, shapes, seed, "distilled_lora")), str(tmp / DISTILLED_LORA))
        save_file(
            _to_file_dtype(_lora_state_dict(dit_keys, shapes, seed, "ic_lora")),
            str(tmp / IC_LORA),
            metadata={"reference_downscale_factor": str(IC_LORA_REFERENCE_DOWNSCALE)},
        )
        index = {
            "seed": seed,
            "preset": "tiny",
            **({"dit": dit} if dit else {}),
            "files": {
                "checkpoint": CHECKPOINT,
                "distilled_lora": DISTILLED_LORA,
                "ic_lora": IC_LORA,
                "spatial_upsampler": SPATIAL_UPSAMPLER,
                "gemma_root": GEMMA_ROOT,
            },
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return TinySet(out)


def ensure_tiny_set(out: str | Path, seed: int = 0) -> TinySet:
    """The tiny set at `out`, written first if it is not there (one writer at a time: a concurrent run
    waits for it instead of swapping the folder under the other's feet)."""
    tiny = TinySet(Path(out))
    if tiny.is_complete():
        return tiny
    with file_lock(Path(out).parent / ".locks" / f"{Path(out).name}.lock"):
        return tiny if tiny.is_complete() else write_tiny_set(out, seed)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="ltx-tiny",
        description="Write a tiny synthetic LTX-2.3 checkpoint set (released layout, seeded random weights).",
    )
    parser.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed: same seed, same bytes (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder path")
    start = time.perf_counter()
    tiny = write_tiny_set(out, args.seed)
    elapsed = time.perf_counter() - start
    print(f"wrote tiny LTX-2.3 set to {tiny.root} ({_dir_size(tiny.root) / 2**20:.1f} MiB, {elapsed:.1f} s)")
    for label, path in (
        ("checkpoint", tiny.checkpoint),
        ("distilled LoRA", tiny.distilled_lora),
        ("IC-LoRA", tiny.ic_lora),
        ("spatial upsampler", tiny.spatial_upsampler),
        ("Gemma root", tiny.gemma_root),
    ):
        print(f"  {label:<18} {path}")
    return 0
