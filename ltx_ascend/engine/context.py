"""What one `ltx-run` invocation shares across its stages: models, prompts, timings, settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.types import Audio, VideoPixelShape

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine.params import DEFAULT_IMAGE_CRF
from ltx_ascend.engine.stack import ModelStack
from ltx_ascend.engine.text import PromptEncoder
from ltx_ascend.engine.timing import Timings
from ltx_ascend.shapes import ShapeProfile, shape_profile


@dataclass(frozen=True)
class ImageInput:
    """An image to condition frame `frame_idx` on: a path (ltx-run's --image) or the encoded image
    bytes (an upload), decoded in memory."""

    source: str | Path | bytes
    frame_idx: int
    strength: float = 1.0
    crf: int = DEFAULT_IMAGE_CRF

    @property
    def path(self) -> str | Path | bytes:
        """What PIL opens (the bytes wrapped by `media.load_image`); kept under ltx-run's old name."""
        return self.source

    @property
    def label(self) -> str:
        """How messages name it: the path, or the size of the bytes."""
        if isinstance(self.source, bytes):
            return f"<image bytes, {len(self.source)} B>"
        return str(self.source)


@dataclass
class Request:
    """The user's settings, named as ltx-pipelines names them."""

    prompt: str
    negative_prompt: str
    seed: int
    height: int
    width: int
    num_frames: int
    frame_rate: float
    num_inference_steps: int
    video_guider: MultiModalGuiderParams
    audio_guider: MultiModalGuiderParams
    images: list[ImageInput] = field(default_factory=list)
    distilled_lora: tuple[LoraSpec, ...] = ()
    extra: dict = field(default_factory=dict)  # pipeline-specific inputs (audio path, video path, ...)

    def pixel_shape(self, stage: int | None = None) -> VideoPixelShape:
        """Stage 1 of a two-stage pipeline runs at half height and width."""
        scale = 2 if stage == 1 else 1
        return VideoPixelShape(
            batch=1, frames=self.num_frames, height=self.height // scale, width=self.width // scale, fps=self.frame_rate
        )

    def profile(self, stage: int | None = None, *, batch: int = 1, conditioning_tokens: int = 0) -> ShapeProfile:
        return shape_profile(
            (self.num_frames, self.height, self.width),
            stage=stage,
            batch=batch,
            fps=self.frame_rate,
            conditioning_tokens=conditioning_tokens,
        )


@dataclass
class RunContext:
    request: Request
    stack: ModelStack
    prompts: PromptEncoder
    timings: Timings
    main: bool = True  # rank 0 of a multi-device run (or the only process): the one that decodes and writes
    # (stage name, steps done, steps of the stage) after every sampling step: progress and cancellation.
    on_step: Callable[[str, int, int], None] | None = None

    def step_done(self, stage: str, step: int, total: int) -> None:
        if self.on_step is not None:
            self.on_step(stage, step, total)

    @property
    def device(self) -> torch.device:
        return self.stack.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stack.dtype

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.request.seed)


@dataclass
class Output:
    frames: torch.Tensor  # uint8 [F, H, W, 3]
    audio: Audio | None
