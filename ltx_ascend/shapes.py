"""The shape profile: the one place a pixel shape becomes latent sizes and token counts.

Export traces graphs at these shapes, compile passes them to ATC's --input_shape, the runtime
checks requests against them, and the pipelines allocate with them; no other code derives
shapes. The arithmetic is ltx-core's own (VideoLatentShape / AudioLatentShape).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape

from ltx_ascend.errors import UserError

LATENT_CHANNELS = 128
TEXT_TOKENS = 1024  # ltx-core's Gemma tokenizer pads every prompt to 1024 tokens
DEFAULT_FPS = 24.0
_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_shape(text: str) -> tuple[int, int, int]:
    """'41x1024x1536' -> (frames, height, width)."""
    match = _SHAPE.match(text)
    if not match:
        raise UserError(f"--shape {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 41x1024x1536")
    frames, height, width = (int(g) for g in match.groups())
    return frames, height, width


def check_pixel_shape(frames: int, height: int, width: int, *, two_stage: bool = False) -> None:
    """LTX-2.3's shape rules: 8k+1 frames; sides multiples of 32 (64 when stage 1 runs at half size)."""
    if frames < 1 or (frames - 1) % 8:
        lower = (max(frames, 1) - 1) // 8 * 8 + 1
        raise UserError(f"{frames} frames: the frame count must be 8k+1 (e.g. {lower} or {lower + 8})")
    multiple = 64 if two_stage else 32
    for name, side in (("height", height), ("width", width)):
        if side <= 0 or side % multiple:
            fix = max(multiple, round(side / multiple) * multiple)
            why = " (two-stage pipelines run stage 1 at half size)" if two_stage else ""
            raise UserError(f"{name} {side} must be a multiple of {multiple}{why}: try {fix}")


# The profile fields that set graph shapes; a component's graphs read a subset (components.py).
GRAPH_SHAPE_FIELDS = (
    "batch",
    "text_tokens",
    "conditioning_tokens",
    "latent_frames",
    "latent_height",
    "latent_width",
    "audio_latent_frames",
    "audio_mel_bins",
    "audio_channels",
)
TEMPORAL_SCALE, SPATIAL_SCALE = 8, 32  # LTX-2.3's video VAE: 8 frames and 32 x 32 pixels per latent cell



@dataclass(frozen=True)
class ShapeProfile:
    """Every size one stage of one pipeline needs, derived from a pixel shape."""

    frames: int
    height: int
    width: int
    batch: int
    stage: int | None
    fps: float
    text_tokens: int
    conditioning_tokens: int
    latent_frames: int
    latent_height: int
    latent_width: int
    audio_latent_frames: int
    audio_mel_bins: int
    audio_channels: int

    @property
    def key(self) -> str:
        """A short stable name for artifact folders: 41x512x768-b1-s1."""
        stage = f"-s{self.stage}" if self.stage else ""
        cond = f"-c{self.conditioning_tokens}" if self.conditioning_tokens else ""
        return f"{self.frames}x{self.height}x{self.width}-b{self.batch}{stage}{cond}"

    @property
    def video_latent_tokens(self) -> int:
        return self.latent_frames * self.latent_height * self.latent_width

    @property
    def video_tokens(self) -> int:
        """Tokens the DiT sees for video: the latent grid plus appended conditioning tokens."""
        return self.video_latent_tokens + self.conditioning_tokens

    @property
    def audio_tokens(self) -> int:
        return self.audio_latent_frames

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, LATENT_CHANNELS, self.latent_frames, self.latent_height, self.latent_width)

    @property
    def audio_latent_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.audio_channels, self.audio_latent_frames, self.audio_mel_bins)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"video_tokens": self.video_tokens, "audio_tokens": self.audio_tokens}

    def graph_shape(self, fields: tuple[str, ...] = GRAPH_SHAPE_FIELDS) -> dict[str, int]:
        """What of this profile changes a graph's static shapes (`fields`: those its component reads):
        the store keys artifacts by it, so requests that make the same graphs share one artifact
        (the frame rate, the stage number and the pixel sizes are not in it: the latent sizes are)."""
        unknown = set(fields) - set(GRAPH_SHAPE_FIELDS)
        if unknown:
            raise ValueError(f"not graph-shape fields: {sorted(unknown)}")
        return {name: getattr(self, name) for name in fields}


def shape_name(shape: dict[str, int]) -> str:
    """A readable folder name for a graph shape: the pixel size of a video latent grid (9x64x96), else
    the audio latent frames (a26) or the text tokens (t1024); then -b<batch> and -c<conditioning tokens>."""
    if "latent_frames" in shape:
        frames = (shape["latent_frames"] - 1) * TEMPORAL_SCALE + 1
        parts = [f"{frames}x{shape['latent_height'] * SPATIAL_SCALE}x{shape['latent_width'] * SPATIAL_SCALE}"]
    elif "audio_latent_frames" in shape:
        parts = [f"a{shape['audio_latent_frames']}"]
    else:
        parts = [f"t{shape.get('text_tokens', 0)}"]
    if "batch" in shape:
        parts.append(f"b{shape['batch']}")
    if shape.get("conditioning_tokens"):
        parts.append(f"c{shape['conditioning_tokens']}")
    return "-".join(parts)


def shape_profile(
    shape: str | tuple[int, int, int],
    *,
    stage: int | None = None,
    batch: int = 1,
    fps: float = DEFAULT_FPS,
    text_tokens: int = TEXT_TOKENS,
    conditioning_tokens: int = 0,
) -> ShapeProfile:
    """The profile of one stage. `shape` is the pipeline's output shape; `stage=1` of a two-stage
    pipeline runs at half height and width, `stage=2` (and `None`, one-stage) at full size."""
    frames, height, width = parse_shape(shape) if isinstance(shape, str) else shape
    if stage not in (None, 1, 2):
        raise UserError(f"--stage {stage}: choose 1 (half size) or 2 (full size) of a two-stage pipeline")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be >= 1")
    if conditioning_tokens < 0:
        raise UserError(f"--conditioning-tokens {conditioning_tokens}: must be >= 0")
    check_pixel_shape(frames, height, width, two_stage=stage is not None)
    if stage == 1:
        height, width = height // 2, width // 2
    pixel = VideoPixelShape(batch=batch, frames=frames, height=height, width=width, fps=fps)
    video = VideoLatentShape.from_pixel_shape(pixel, latent_channels=LATENT_CHANNELS)
    audio = AudioLatentShape.from_video_pixel_shape(pixel)
    return ShapeProfile(
        frames=frames,
        height=height,
        width=width,
        batch=batch,
        stage=stage,
        fps=fps,
        text_tokens=text_tokens,
        conditioning_tokens=conditioning_tokens,
        latent_frames=video.frames,
        latent_height=video.height,
        latent_width=video.width,
        audio_latent_frames=audio.frames,
        audio_mel_bins=audio.mel_bins,
        audio_channels=audio.channels,
    )
