"""Video inputs: probe a video file's stream and decode its frames as a [-1, 1] pixel video.

Reproduces ltx-pipelines' `get_videostream_metadata` and `load_video_conditioning` (RGB frames,
resized to fill and centre-cropped, normalised), with one-line errors for files that do not decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.media import resize_and_center_crop

_AV_ERRORS = (av.error.FFmpegError, UnicodeDecodeError, ValueError, StopIteration)


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def _open(path: Path, flag: str) -> av.container.InputContainer:
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        return av.open(str(path))
    except _AV_ERRORS as exc:
        raise UserError(f"{flag} {path}: cannot decode it as a video ({exc})") from None


def probe_video(path: str | Path, flag: str = "--video-path") -> VideoInfo:
    """fps, frame count (counted by decoding when the container lacks it), width and height; the
    first frame is decoded, so a file that opens but does not decode fails here."""
    path = Path(path)
    container = _open(path, flag)
    try:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise UserError(f"{flag} {path}: has no video stream")
        if not stream.average_rate:
            raise UserError(f"{flag} {path}: the video stream has no frame rate")
        fps = float(stream.average_rate)
        frames = stream.frames or 0
        width, height = stream.codec_context.width, stream.codec_context.height
        if frames == 0:
            frames = sum(1 for _ in container.decode(stream))
        else:
            next(container.decode(stream))
    except _AV_ERRORS as exc:
        raise UserError(f"{flag} {path}: cannot decode it as a video ({exc})") from None
    finally:
        container.close()
    if frames < 1:
        raise UserError(f"{flag} {path}: the video stream has no frames")
    return VideoInfo(fps=fps, frames=frames, width=width, height=height)


def load_video(
    path: str | Path,
    height: int,
    width: int,
    frame_cap: int,
    dtype: torch.dtype,
    device: torch.device,
    flag: str = "--video-path",
) -> torch.Tensor:
    """The first `frame_cap` frames as [1, 3, F, height, width] in [-1, 1]."""
    path = Path(path)
    container = _open(path, flag)
    frames = []
    try:
        stream = next(s for s in container.streams if s.type == "video")
        for frame in container.decode(stream):
            frames.append(frame.to_rgb().to_ndarray())
            if len(frames) == frame_cap:
                break
    except _AV_ERRORS as exc:
        raise UserError(f"{flag} {path}: cannot decode its frames ({exc})") from None
    finally:
        container.close()
    if not frames:
        raise UserError(f"{flag} {path}: no frames decoded")
    pixels = torch.from_numpy(np.stack(frames)).to(device=device, dtype=torch.float32)
    pixels = resize_and_center_crop(pixels, height, width)
    return (pixels / 127.5 - 1.0).to(device=device, dtype=dtype)
