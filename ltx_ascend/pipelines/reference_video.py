"""Reference (control) videos for IC-LoRA, read as ltx-pipelines' `load_video_conditioning` reads them.

Frames are decoded with PyAV (`frame.to_rgb()`), at most `frame_cap` of them; each frame is resized
to fill the target and centre-cropped, then mapped to [-1, 1]. Every failure is a one-line UserError
naming the flag and the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.media import resize_and_center_crop


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
    try:
        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.type == "video")
            for count, frame in enumerate(container.decode(stream), start=1):
                yield torch.tensor(frame.to_rgb().to_ndarray(), dtype=torch.uint8).unsqueeze(0)
                if count == frame_cap:
                    break
    except av.error.FFmpegError as exc:
        raise UserError(f"{flag} {path}: cannot decode it ({exc})") from None


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
    flag: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[1, 3, F, height, width] in [-1, 1], F <= frame_cap: per frame, resize and crop in float32,
    `x / 127.5 - 1`, then cast (ltx-pipelines' `load_video_conditioning`)."""
    frames = [
        (resize_and_center_crop(f.to(device=device, dtype=torch.float32), height, width) / 127.5 - 1.0).to(dtype)
        for f in decode_frames(path, frame_cap, flag)
    ]
    if not frames:
        raise UserError(f"{flag} {path}: no frame decodes from it")
    return torch.cat(frames, dim=2)


def encodable_frames(frames: int) -> int:
    """The frames the video VAE encodes of a `frames`-long clip: it crops to 8k+1 (ltx-core's VideoEncoder)."""
    return (frames - 1) // 8 * 8 + 1


def mask_to_latent(mask: torch.Tensor, latent_frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """A pixel-space mask [B, 1, F, H, W] in [0, 1] -> per-token weights [B, F' * H' * W'] in the
    patchifier's (f, h, w) order: area-downsampled per frame, the first frame kept alone (causal VAE),
    the others averaged in groups of (F - 1) / (F' - 1) (ltx-pipelines' `_downsample_mask_to_latent`)."""
    b, _, f_pix = mask.shape[:3]
    spatial = torch.nn.functional.interpolate(
        mask.transpose(1, 2).reshape(b * f_pix, 1, *mask.shape[-2:]), size=(latent_height, latent_width), mode="area"
    )
    spatial = spatial.reshape(b, f_pix, 1, latent_height, latent_width).transpose(1, 2)
    latent = spatial[:, :, :1]
    if f_pix > 1 and latent_frames > 1:
        if (f_pix - 1) % (latent_frames - 1):
            raise UserError(
                f"attention mask: {f_pix} frames do not fit {latent_frames} latent frames ((F - 1) must divide evenly)"
            )
        group = (f_pix - 1) // (latent_frames - 1)
        rest = spatial[:, :, 1:].reshape(b, 1, latent_frames - 1, group, latent_height, latent_width).mean(dim=3)
        latent = torch.cat([latent, rest], dim=2)
    return latent.reshape(b, -1)
