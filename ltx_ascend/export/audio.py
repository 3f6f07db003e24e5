"""The audio path as graphs: the audio VAE decoder (latent -> log-mel) and the vocoder (log-mel -> waveform).

ltx-core decodes audio with `decode_audio(latent, audio_decoder, vocoder)`: `AudioDecoder.forward`
un-normalizes the latent with its per-channel statistics itself (patchify, `un_normalize`,
unpatchify), decodes to a stereo log-mel `[B, 2, 4 * T - 3, 64]` (causal: the first latent frame
gives one mel frame) and crops/pads to that shape; the vocoder is then called on that mel as is.
So both graph forms are the ltx-core modules behind tuple-returning wrappers, with one graph input
each: `audio_latent` [B, 8, T, 16] -> `mel`, and `mel` -> `waveform` [B, 2, samples].

LTX-2.3's vocoder is `VocoderWithBWE`: a 16 kHz BigVGAN-v2 style generator (snake-beta
activations with kaiser-sinc anti-aliasing), a causal STFT done as a conv1d over stored DFT
bases, a mel projection with `log(clamp(.))`, a second (bandwidth extension) generator and a
Hann-sinc x3 resampler, summed, clamped to [-1, 1] and sliced to 48 kHz length. No complex op
appears anywhere (the STFT is real convolution), so nothing in these graphs needs the CPU that
the NPU leaves complex64 mel spectrograms to (docs/reference-figures.md). The STFT's phase (`atan2`, not in ATC's
registry) and energy (`torch.norm`) are computed by ltx-core but never used by the vocoder: the
tracer records them and the exporter's dead-code elimination drops them (the tests check that no
Atan/ReduceL2 node is left).

The vocoder is exported in float32 whatever the pipeline dtype: on NPU it runs with float32
weights and inputs and without autocast (torch.autocast on NPU covers fp16/bf16 only, docs/reference-figures.md;
`runtime.device` casts the vocoder to float32 and feeds it float32), so the host casts the
decoder's mel to float32 before this graph. The builder takes `dtype` like every builder and
records the override in `item.notes`.

Export-time forms (`audio_export_forms`, active only inside the wrappers' `forward`, i.e. while
tracing; the references run plain ltx-core) fix three tracing hazards, each mathematically identical:

* `F.pad` in constant mode (`CausalConv2d` in the decoder, the STFT's causal left pad) traces
  through torch's symbolic to a Pad whose pads come from a ConstantOfShape/Concat/Reshape chain
  that torch's constant folding leaves in place; ONNX shape inference stops there, and every
  later shape, down to the declared graph output, becomes dynamic (`Sliceout_dim_0`). We emit
  Pad with a constant `pads` input instead (`_ConstantPad`).
* `F.pad(mode="replicate")` (the anti-aliasing filters and the resampler) exports as Pad
  mode "edge": older CANN ONNX Pad plugins reject it ("Mode attr of Pad only supports constant"),
  newer ones pass it on to PadV3, and the exporter loses the output shape either way; we build it
  from edge slices and Concat.
* `UpSample1d` / `LowPassFilter1d` convolve each channel with one shared filter through a grouped
  (transposed) conv whose weight is `filter.expand(x.shape[1], -1, -1)`: traced, the weight's
  shape is a Where/Equal/Expand subgraph, and the exporter fails with "convolution for kernel of
  unknown shape" once the input's shape is not static. The export forms concatenate the filter to
  a static `[C, 1, K]` weight (folded to an initializer) with the channel count read as a Python
  int, keeping the grouped Conv/ConvTranspose (ATC maps `group` to Conv2D/Conv2DTranspose groups).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from ltx_core.model.audio_vae import AudioDecoder
from ltx_core.model.audio_vae import vocoder as ltx_vocoder

from ltx_ascend import dtypes
from ltx_ascend.checkpoints.loader import CheckpointSet, load_component
from ltx_ascend.components import REGISTRY
from ltx_ascend.export.items import ExportItem, seeded
from ltx_ascend.shapes import ShapeProfile

AUDIO_PEAK = 2.0  # the waveform is clamped to [-1, 1]
# On NPU the vocoder runs in float32, no autocast (docs/reference-figures.md): the registry fixes its graph dtype.
VOCODER_DTYPE = REGISTRY["vocoder"].graph_dtype
LATENT_SEED = 0

_torch_pad = F.pad  # the real one, for the eager path and the modes we leave alone


# ---------------------------------------------------------------------------------------------
# Export-time forms


class _ConstantPad(torch.autograd.Function):
    """Zero padding that exports as one Pad with a constant `pads` input (shape inference sees it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: tuple[int, ...], rank: int) -> torch.Tensor:
        return _torch_pad(x, pad)

    @staticmethod
    def symbolic(g, x, pad: tuple[int, ...], rank: int):
        begins, ends = [0] * rank, [0] * rank
        for i in range(len(pad) // 2):  # F.pad lists (begin, end) from the last dim backwards
            begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
        pads = g.op("Constant", value_t=torch.tensor(begins + ends, dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="constant")


def _replicate_pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """`F.pad(x, pad, mode="replicate")` as edge slices and Concat: no Pad "edge" node."""
    for i in range(len(pad) // 2):
        dim = x.dim() - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        if before < 0 or after < 0:
            raise ValueError(f"replicate padding must be >= 0, got {tuple(pad)}")
        first = x.narrow(dim, 0, 1)
        last = x.narrow(dim, int(x.shape[dim]) - 1, 1)
        x = torch.cat([first] * before + [x] + [last] * after, dim=dim)
    return x


def export_pad(
    input: torch.Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None
) -> torch.Tensor:
    """`F.pad` with static pads: constant (zero) and replicate modes in export form, others unchanged."""
    pad = tuple(int(p) for p in pad)  # amounts computed from traced sizes become constants
    if mode == "constant" and not value:
        return _ConstantPad.apply(input, pad, input.dim())
    if mode == "replicate":
        return _replicate_pad(input, pad)
    return _torch_pad(input, pad, mode=mode, value=value)


def _channel_copies(filt: torch.Tensor, channels: int) -> torch.Tensor:
    """`filt.expand(channels, -1, -1)` as a static `[channels, 1, K]` tensor (constant-folded)."""
    return torch.cat([filt] * channels, dim=0)


def _upsample_forward(self: ltx_vocoder.UpSample1d, x: torch.Tensor) -> torch.Tensor:
    """`UpSample1d.forward` with a static filter and replicate pad (see the module docstring)."""
    channels = int(x.shape[1])
    x = _replicate_pad(x, (self.pad, self.pad))
    filt = _channel_copies(self.filter.to(dtype=x.dtype, device=x.device), channels)
    x = self.ratio * F.conv_transpose1d(x, filt, stride=self.stride, groups=channels)
    return x[..., self.pad_left : -self.pad_right]


def _lowpass_forward(self: ltx_vocoder.LowPassFilter1d, x: torch.Tensor) -> torch.Tensor:
    """`LowPassFilter1d.forward` with a static filter and static padding."""
    channels = int(x.shape[1])
    if self.padding:
        x = export_pad(x, (self.pad_left, self.pad_right), mode=self.padding_mode)
    return F.conv1d(x, _channel_copies(self.filter, channels), stride=self.stride, groups=channels)


@contextlib.contextmanager
def audio_export_forms() -> Iterator[None]:
    """Trace the audio decoder and vocoder with the forms above; restores everything on exit."""
    saved = (F.pad, ltx_vocoder.UpSample1d.forward, ltx_vocoder.LowPassFilter1d.forward)
    F.pad = export_pad
    ltx_vocoder.UpSample1d.forward = _upsample_forward
    ltx_vocoder.LowPassFilter1d.forward = _lowpass_forward
    try:
        yield
    finally:
        F.pad, ltx_vocoder.UpSample1d.forward, ltx_vocoder.LowPassFilter1d.forward = saved


# ---------------------------------------------------------------------------------------------
# Graph forms


class AudioDecoderGraph(torch.nn.Module):
    """`AudioDecoder.forward(latent)` -> (log-mel,): un-normalization is inside the decoder."""

    input_names = ("audio_latent",)
    output_names = ("mel",)

    def __init__(self, decoder: AudioDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, audio_latent: torch.Tensor) -> tuple[torch.Tensor]:
        with audio_export_forms():
            return (self.decoder(audio_latent),)


class VocoderGraph(torch.nn.Module):
    """`VocoderWithBWE.forward(mel)` (or a plain `Vocoder`) -> (waveform in [-1, 1],)."""

    input_names = ("mel",)
    output_names = ("waveform",)

    def __init__(self, vocoder: torch.nn.Module) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor]:
        with audio_export_forms():
            return (self.vocoder(mel),)


# ---------------------------------------------------------------------------------------------
# Sample feeds and items


def audio_latent_sample(profile: ShapeProfile, seed: int = LATENT_SEED) -> torch.Tensor:
    """A deterministic unpatchified audio latent ~N(0, 1), like the denoised one the pipelines decode."""
    return seeded(seed, *profile.audio_latent_shape)


def decoded_mel(ckset: CheckpointSet, profile: ShapeProfile, seed: int = LATENT_SEED) -> torch.Tensor:
    """The vocoder's input as `decode_audio` feeds it: the audio decoder's output on the sample latent
    (float32, the dtype the vocoder runs in). The decoder is loaded, run once and dropped."""
    decoder = load_component("audio_decoder", ckset, dtype=VOCODER_DTYPE)
    with torch.no_grad():
        return decoder(audio_latent_sample(profile, seed)).contiguous()


def build_audio_decoder_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """The audio VAE decoder at the profile's audio latent shape, in `dtype`."""
    decoder = load_component("audio_decoder", ckset, dtype=dtype)
    latent = audio_latent_sample(profile).to(dtype)

    def reference(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        # decode_audio's first step: audio_decoder(latent).
        with torch.no_grad():
            return (decoder(feeds["audio_latent"]),)

    return [
        ExportItem(
            component="audio_decoder",
            module=AudioDecoderGraph(decoder).eval(),
            input_names=AudioDecoderGraph.input_names,
            output_names=AudioDecoderGraph.output_names,
            sample={"audio_latent": latent},
            reference=reference,
            notes={
                "latent_shape": list(profile.audio_latent_shape),
                "un_normalization": "inside the graph (AudioDecoder applies its per-channel statistics)",
                "mel_sample_rate": decoder.sample_rate,
                "mel_hop_length": decoder.mel_hop_length,
            },
        )
    ]


def build_vocoder_items(ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype) -> list[ExportItem]:
    """The vocoder (with bandwidth extension for LTX-2.3) on the decoder's mel at the profile.

    Always float32, whatever `dtype` asks for: the NPU runs the vocoder in float32 with no
    autocast, so a half-precision graph would be one nobody runs. `notes` records both dtypes.
    """
    vocoder = load_component("vocoder", ckset, dtype=VOCODER_DTYPE)
    mel = decoded_mel(ckset, profile)

    def reference(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        # decode_audio's second step: vocoder(decoded_audio) (its .squeeze(0) is done by the host).
        with torch.no_grad():
            return (vocoder(feeds["mel"]),)

    notes = {
        "dtype": dtypes.name(VOCODER_DTYPE),
        "requested_dtype": dtypes.name(dtype),
        "dtype_reason": "the vocoder runs in float32 on NPU without autocast; cast the decoder's mel to float32",
        "mel_shape": list(mel.shape),
        "output_sampling_rate": vocoder.output_sampling_rate,
        "bandwidth_extension": isinstance(vocoder, ltx_vocoder.VocoderWithBWE),
    }
    if isinstance(vocoder, ltx_vocoder.VocoderWithBWE):
        notes["input_sampling_rate"] = vocoder.input_sampling_rate
    return [
        ExportItem(
            component="vocoder",
            module=VocoderGraph(vocoder).eval(),
            input_names=VocoderGraph.input_names,
            output_names=VocoderGraph.output_names,
            sample={"mel": mel},
            reference=reference,
            peak=AUDIO_PEAK,
            notes=notes,
        )
    ]
