"""Media I/O: mp4 with an AAC audio track through PyAV, raw frames/waveform for verification,
and loading conditioning images. Every output is written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from ltx_core.types import Audio
from safetensors.torch import save_file

from ltx_ascend.atomic import atomic_path, check_writable_file
from ltx_ascend.errors import UserError
from ltx_ascend.validation import decode_image

AUDIO_CODEC = "aac"
AUDIO_RATE = 48000


def write_mp4(path: Path, frames: torch.Tensor, fps: float, audio: Audio | None) -> None:
    """frames: uint8 [F, H, W, 3]. Audio is resampled to 48 kHz stereo AAC by libswresample."""
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            # Every stream exists before the first packet: the mp4 header is written on first mux.
            audio_stream = _add_audio_stream(container) if audio is not None else None
            for frame in frames.cpu().numpy():
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
            if audio_stream is not None:
                _write_audio(container, audio_stream, audio)
        finally:
            container.close()


def _add_audio_stream(container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
    stream = container.add_stream(AUDIO_CODEC, rate=AUDIO_RATE)
    stream.layout = "stereo"
    return stream


def _write_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, audio: Audio) -> None:
    wave = audio.waveform.detach().float().cpu().clamp(-1, 1)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.shape[0] == 1:
        wave = wave.repeat(2, 1)
    resampler = av.AudioResampler(format=stream.format.name, layout="stereo", rate=AUDIO_RATE)
    source = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(wave.numpy().reshape(1, -1, order="F")), format="flt", layout="stereo"
    )
    source.sample_rate = int(audio.sampling_rate)
    source.pts = 0
    for frame in [*resampler.resample(source), *resampler.resample(None)]:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_raw(path: Path, frames: torch.Tensor, audio: Audio | None) -> None:
    """`video`: uint8 [F, H, W, 3]; `audio`: float32 [channels, samples] (+ its rate in metadata)."""
    tensors = {"video": frames.contiguous().cpu()}
    metadata = {}
    if audio is not None:
        tensors["audio"] = audio.waveform.detach().float().cpu().contiguous()
        metadata["audio_sampling_rate"] = str(int(audio.sampling_rate))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def collect_frames(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([c.cpu() for c in chunks])


def check_output_path(path: Path, suffix: str | None, flag: str) -> Path:
    """The suffix is right, and the file can be written (checked before any model loads)."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: must end in {suffix}")
    return check_writable_file(path, flag)


def _h264_round_trip(image: np.ndarray, crf: int) -> np.ndarray:
    """Encode one frame with libx264 at `crf` and decode it: conditioning images then carry the
    compression artifacts the model saw in training video (ltx-pipelines' `preprocess`)."""

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        image = image[:height, :width]
        stream.height, stream.width = height, width
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    finally:
        container.close()
    buffer.seek(0)
    container = av.open(buffer)
    try:
        stream = next(s for s in container.streams if s.type == "video")
        return next(container.decode(stream)).to_ndarray(format="rgb24")
    finally:
        container.close()


def resize_and_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[H, W, C] or [F, H, W, C] float -> [1, C, F, height, width]: fill the target, crop the centre."""
    x = frames[None] if frames.ndim == 3 else frames
    x = x.permute(0, 3, 1, 2)
    src_h, src_w = x.shape[-2:]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = math.ceil(src_h * scale), math.ceil(src_w * scale)
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.permute(1, 0, 2, 3)[None]


def load_image(
    path: str | Path | bytes, height: int, width: int, crf: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A conditioning image (a path, or encoded bytes decoded in memory) as a 1-frame video in [-1, 1]:
    [1, 3, 1, height, width] (grayscale, palette and alpha images converted to RGB: `validation.decode_image`)."""
    image = decode_image(path if isinstance(path, bytes) else Path(path), "--image")
    if crf:
        image = _h264_round_trip(image, crf)
    frames = resize_and_center_crop(torch.tensor(image, dtype=torch.float32, device=device), height, width)
    return (frames / 127.5 - 1.0).to(device=device, dtype=dtype)
