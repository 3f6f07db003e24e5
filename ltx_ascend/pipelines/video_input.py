"""The one video reader: retake's source and IC-LoRA's reference videos and mask.

Reproduces ltx-pipelines' `get_videostream_metadata` and `load_video_conditioning`: frames decoded
with PyAV (`frame.to_rgb()`), at most `frame_cap` of them, each resized to fill the target and
centre-cropped in float32, mapped to [-1, 1], then cast. Every failure is a one-line UserError
naming the flag and the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.media import resize_and_center_crop

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


def check_video_file(path: str | Path, flag: str) -> None:
    """Cheap checks before anything is built: the file exists, opens as a container, has a video stream."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        with av.open(str(path)) as container:
            if not any(s.type == "video" for s in container.streams):
                raise UserError(f"{flag} {path}: has no video stream")
    except av.error.FFmpegError as exc:
        raise UserError(f"{flag} {path}: cannot open it as a video ({exc})") from None


def decode_frames(path: str | Path, frame_cap: int, flag: str) -> Iterator[torch.Tensor]:
    """uint8 frames [1, H, W, 3], the first `frame_cap` of the first video stream."""
    path = Path(path)
    container = _open(path, flag)
    try:
        stream = next(s for s in container.streams if s.type == "video")
        for count, frame in enumerate(container.decode(stream), start=1):
            yield torch.tensor(frame.to_rgb().to_ndarray(), dtype=torch.uint8).unsqueeze(0)
            if count == frame_cap:
                break
    except _AV_ERRORS as exc:
        raise UserError(f"{flag} {path}: cannot decode its frames ({exc})") from None
    finally:
        container.close()


def count_frames(path: str | Path, frame_cap: int, flag: str) -> int:
    """How many frames decode (at most `frame_cap`); a file with none is an error."""
    count = sum(1 for _ in decode_frames(path, frame_cap, flag))
    if not count:
        raise UserError(f"{flag} {path}: no frame decodes from it")
    return count


def load_video(
    path: str | Path,
    height: int,
    width: int,
    frame_cap: int,
    dtype: torch.dtype,
    device: torch.device | str,
    flag: str = "--video-path",
) -> torch.Tensor:
    """[1, 3, F, height, width] in [-1, 1], F <= frame_cap: per frame, resize and crop in float32,
    `x / 127.5 - 1`, then cast (ltx-pipelines' `load_video_conditioning`, argument order included)."""
    frames = [
        (resize_and_center_crop(f.to(device=device, dtype=torch.float32), height, width) / 127.5 - 1.0).to(dtype)
        for f in decode_frames(path, frame_cap, flag)
    ]
    if not frames:
        raise UserError(f"{flag} {path}: no frame decodes from it")
    return torch.cat(frames, dim=2)
