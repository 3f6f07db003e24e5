"""The tiny set is a valid LTX-2.3 checkpoint set as far as ltx-core's builders are concerned."""

from __future__ import annotations

import hashlib
import json

import pytest
import safetensors
import torch
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from ltx_core.model.transformer.modality import Modality
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape
from ltx_pipelines.utils.types import PipelineComponents

from ltx_ascend.checkpoints.loader import ALL_COMPONENTS, LoraSpec, load_component
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.checkpoints.tiny import write_tiny_set

SHAPE = VideoPixelShape(batch=1, frames=9, height=64, width=96, fps=24.0)


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(root)}


def test_layout_metadata_and_size(tiny):
    with safetensors.safe_open(str(tiny.checkpoint), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    # The released schema: same sections and the same keys in every section as the 22B config.
    ref = config_22b()
    assert config.keys() == ref.keys()
    assert config["transformer"].keys() == ref["transformer"].keys()
    for flag in ("apply_gated_attention", "cross_attention_adaln", "rope_type", "frequencies_precision"):
        assert config["transformer"][flag] == ref["transformer"][flag]
    assert "bwe" in config["vocoder"]
    prefixes = {
        "model.diffusion_model.",
        "vae.encoder.",
        "vae.decoder.",
        "vae.per_channel_statistics.",
        "audio_vae.encoder.",
        "audio_vae.decoder.",
        "audio_vae.per_channel_statistics.",
        "vocoder.",
        "text_embedding_projection.",
    }
    assert {p for p in prefixes if any(k.startswith(p) for k in keys)} == prefixes
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)
    assert dtypes == {"BF16"}
    total = sum(p.stat().st_size for p in _files(tiny.root))
    assert total < 60 * 2**20
    for name in ("config.json", "tokenizer.model", "preprocessor_config.json", "model.safetensors"):
        assert (tiny.gemma_root / name).is_file()


@pytest.mark.parametrize("component", ALL_COMPONENTS)
def test_loads_through_ltx_core_with_nothing_on_meta(tiny, component):
    model = load_component(component, tiny.checkpoint_set(), dtype=torch.float32)
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def _latent_inputs():
    components = PipelineComponents(dtype=torch.float32, device=torch.device("cpu"))
    vshape = VideoLatentShape.from_pixel_shape(SHAPE, latent_channels=128, scale_factors=components.video_scale_factors)
    vtools = VideoLatentTools(components.video_patchifier, vshape, SHAPE.fps)
    atools = AudioLatentTools(components.audio_patchifier, AudioLatentShape.from_video_pixel_shape(SHAPE))
    return (
        vshape,
        vtools.create_initial_state(torch.device("cpu"), torch.float32),
        atools.create_initial_state(torch.device("cpu"), torch.float32),
    )


def test_every_component_forward_is_finite(tiny):
    ckset = tiny.checkpoint_set()
    finite = lambda t: bool(torch.isfinite(t).all())  # noqa: E731

    with torch.no_grad():
        # Gemma -> text connectors
        encoder = load_component("text_encoder", ckset)
        hidden, mask = encoder.encode("a red fox runs through snow")
        assert all(finite(h) for h in hidden)
        del encoder
        connectors = load_component("text_connectors", ckset)
        out = connectors.process_hidden_states(hidden, mask)
        assert finite(out.video_encoding) and finite(out.audio_encoding)
        del connectors

        # DiT on patchified latents with the text context
        vshape, vstate, astate = _latent_inputs()
        dit = load_component("dit", ckset)
        sigma = torch.tensor([0.7])

        def modality(state, context):
            latent = torch.randn_like(state.latent)
            return Modality(
                latent=latent,
                sigma=sigma,
                timesteps=sigma.expand(latent.shape[:2]),
                positions=state.positions,
                context=context,
            )

        vx, ax = dit(
            modality(vstate, out.video_encoding),
            modality(astate, out.audio_encoding),
            BatchedPerturbationConfig.empty(1),
        )
        assert vx.shape == vstate.latent.shape and finite(vx)
        assert ax.shape == astate.latent.shape and finite(ax)
        del dit

        # Video VAE round trip
        video = torch.rand(1, 3, SHAPE.frames, SHAPE.height, SHAPE.width) * 2 - 1
        latent = load_component("video_encoder", ckset)(video)
        assert latent.shape == (1, 128, vshape.frames, vshape.height, vshape.width) and finite(latent)
        decoded = load_component("video_decoder", ckset)(latent)
        assert decoded.shape == video.shape and finite(decoded)
        upsampled = load_component("spatial_upsampler", ckset)(latent)
        assert upsampled.shape[-2:] == (2 * vshape.height, 2 * vshape.width) and finite(upsampled)

        # Audio VAE + vocoder with bandwidth extension
        mel = torch.randn(1, 2, 33, 64)
        audio_latent = load_component("audio_encoder", ckset)(mel)
        assert finite(audio_latent)
        mel_out = load_component("audio_decoder", ckset)(audio_latent)
        assert finite(mel_out)
        wave = load_component("vocoder", ckset)(mel_out)
        assert wave.shape[1] == 2 and wave.shape[-1] > 0 and finite(wave)


def test_lora_fuses_into_the_transformer(tiny):
    base = load_component("dit", tiny.checkpoint_set())
    fused = load_component("dit", tiny.checkpoint_set(LoraSpec(tiny.distilled_lora, 1.0)))
    name = "transformer_blocks.0.attn1.to_q.weight"
    base_w, fused_w = base.state_dict()[name], fused.state_dict()[name]
    assert not torch.equal(base_w, fused_w)
    untouched = "patchify_proj.weight"
    assert torch.equal(base.state_dict()[untouched], fused.state_dict()[untouched])


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again = write_tiny_set(tmp_path / "again", seed=0)
    assert _digest(again.root) == _digest(tiny.root)
    other = write_tiny_set(tmp_path / "other", seed=1)
    key = "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"
    with (
        safetensors.safe_open(str(tiny.checkpoint), "pt") as a,
        safetensors.safe_open(str(other.checkpoint), "pt") as b,
    ):
        assert not torch.equal(a.get_tensor(key), b.get_tensor(key))
        assert a.keys() == b.keys()
