"""Audio inputs: decode an audio (or video) file's audio stream into float [-1, 1] samples.

The decoding reproduces ltx-pipelines' `decode_audio_from_file` (seek to the start time, keep the
codec frames that overlap the window, trim to the exact start and duration), and adds the checks a
user needs: a file that does not decode, or that has more than two channels, is a one-line error;
mono is up-mixed to stereo, the layout LTX-2.3's audio VAE encodes. One difference: the read window
(`max_duration`) is measured from the first decoded sample at or after the start, not in stream
timestamps, so an mp3 whose first frame starts at 25 ms (encoder delay) still yields the full window.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
from ltx_core.types import Audio

from ltx_ascend.errors import UserError
from ltx_ascend.validation import check_finite_tensor

ENCODER_CHANNELS = 2  # LTX-2.3's audio VAE encodes stereo mel spectrograms

_INT_FORMAT_MAX = {
    "u8": 128.0,
    "u8p": 128.0,
    "s16": 32768.0,
    "s16p": 32768.0,
    "s32": 2147483648.0,
    "s32p": 2147483648.0,
}


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 [channels, samples] in [-1, 1]."""
    arr = frame.to_ndarray().astype(np.float32)
    if frame.format.name in _INT_FORMAT_MAX:
        arr = arr / _INT_FORMAT_MAX[frame.format.name]
    if not frame.format.is_planar:  # interleaved: (1, samples * channels)
        arr = arr.reshape(-1, len(frame.layout.channels)).T
    return arr


def _open(path: Path, flag: str) -> av.container.InputContainer:
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{flag} {path}: cannot decode it as a media file ({exc})") from None


def decode_audio(
    path: str | Path,
    *,
    start_time: float = 0.0,
    max_duration: float | None = None,
    flag: str = "--audio-path",
    required: bool = True,
) -> Audio | None:
    """The audio stream of `path` from `start_time`, at most `max_duration` seconds, as
    Audio(waveform float32 [1, 2, samples], original sampling rate). None when the file has no
    audio stream and `required` is False."""
    path = Path(path)
    container = _open(path, flag)
    try:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            if required:
                raise UserError(f"{flag} {path}: has no audio stream")
            return None
        channels = stream.codec_context.channels
        if channels > ENCODER_CHANNELS:
            raise UserError(
                f"{flag} {path}: {channels} audio channels; only mono or stereo is supported (down-mix it first)"
            )
        rate = stream.rate
        end_time = math.inf
        if max_duration:
            end_time = start_time + max_duration
        elif stream.duration is not None:
            end_time = float(stream.duration * stream.time_base)
        container.seek(int(start_time / stream.time_base), stream=stream)
        samples, first_time = [], None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            frame_time = float(frame.pts * stream.time_base)
            if frame_time + frame.samples / frame.sample_rate < start_time:
                continue
            if first_time is None:
                first_time = frame_time
                if max_duration:  # the window is measured from the first decoded sample, not stream time 0
                    end_time = max(start_time, first_time) + max_duration
            if frame_time > end_time:
                break
            samples.append(_frame_to_float(frame))
    except (av.error.FFmpegError, ValueError) as exc:
        raise UserError(f"{flag} {path}: cannot decode its audio ({exc})") from None
    finally:
        container.close()

    if not samples:
        if required:
            fix = "pass a file with an audio track" if start_time <= 0 else "pass an earlier start or a longer file"
            raise UserError(f"{flag} {path}: no audio from {start_time:g} s on; {fix}")
        return None
    audio = np.concatenate(samples, axis=-1)
    # Codec frames need not align with the window: trim the head to start_time, the tail to max_duration.
    skip = round((start_time - first_time) * rate)
    if skip > 0:
        audio = audio[..., skip:]
    if max_duration is not None:
        audio = audio[..., : round(max_duration * rate)]
    # A float file can hold NaN: refused here, naming the file, not as a NaN latent several stages on.
    check_finite_tensor(torch.from_numpy(audio), f"{flag} {path}", user_input=True)
    if audio.shape[0] == 1:  # mono: the same signal on both channels
        audio = np.repeat(audio, ENCODER_CHANNELS, axis=0)
    return Audio(waveform=torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0), sampling_rate=rate)


def duration_s(audio: Audio) -> float:
    return audio.waveform.shape[-1] / audio.sampling_rate
