"""Request-level settings: one generation's inputs, named as ltx-run's flags, and their one check.

`GenerationRequest` is what a caller fills (argv and HTTP alike; None means the pipeline's default);
`resolve_request` turns it into the pipelines' `Request` with every default filled, and
`check_request` checks every field before anything loads (sizes, 8k+1 frames, steps, frame rate,
images decode, frame indices in range). The pipeline's own checks (`PipelineSpec.check`) run after it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ltx_core.components.guiders import MultiModalGuiderParams

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.engine import params as P
from ltx_ascend.engine.context import ImageInput, Request
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import check_pixel_shape
from ltx_ascend.validation import check_finite, decode_image, utf8_text

GUIDER_FIELDS = ("cfg_scale", "stg_scale", "rescale_scale", "modality_scale")

DEFAULT_PROMPT = (
    "A red fox runs through fresh snow at dawn, the camera tracking low beside it; wind and soft footsteps."
)
# Guidance dict key -> (ltx-run flag suffix for the video / audio side, MultiModalGuiderParams field).
GUIDANCE_KEYS = {
    "cfg": ("{p}_cfg_guidance_scale", "cfg_scale"),
    "stg": ("{p}_stg_guidance_scale", "stg_scale"),
    "rescale": ("{p}_rescale_scale", "rescale_scale"),
    "modality": ("{x}_guidance_scale", "modality_scale"),
    "skip_step": ("{p}_skip_step", "skip_step"),
    "stg_blocks": ("{p}_stg_blocks", "stg_blocks"),
}
SIDES = {"video": "a2v", "audio": "v2a"}  # the cross-modal flag of each side


@dataclass(frozen=True)
class GenerationRequest:
    """One generation's settings, named as ltx-run's flags; None means the pipeline's default.
    `prompt` None is the demo prompt, "" an empty prompt. `extra` holds the pipeline's own flags by
    their argparse names (retake: video_path, start_time, end_time; a2vid_two_stage: audio_path, ...)."""

    prompt: str | None = None
    pipeline: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    frame_rate: float | None = None
    num_inference_steps: int | None = None
    video_guidance: dict | None = None  # keys: cfg, stg, rescale, modality, skip_step, stg_blocks
    audio_guidance: dict | None = None
    images: tuple[ImageInput, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def guidance_flags(self) -> dict[str, Any]:
        """The guidance as ltx-run's flag names (video_cfg_guidance_scale, a2v_guidance_scale, ...)."""
        flags = {}
        for side, cross in SIDES.items():
            given = getattr(self, f"{side}_guidance") or {}
            unknown = sorted(set(given) - set(GUIDANCE_KEYS))
            if unknown:
                raise UserError(f"{side}_guidance: unknown key {unknown[0]!r}; keys: {', '.join(GUIDANCE_KEYS)}")
            for key, (flag, _) in GUIDANCE_KEYS.items():
                flags[flag.format(p=side, x=cross)] = given.get(key)
        return flags


@dataclass(frozen=True)
class Progress:
    """After each sampling step: `step` of `total` steps done in `stage`, `fraction` of the request's."""

    stage: str
    step: int
    total: int
    fraction: float


def _guider(given: Mapping[str, Any] | None, base: MultiModalGuiderParams) -> MultiModalGuiderParams:
    values = {param: (given or {}).get(key) for key, (_, param) in GUIDANCE_KEYS.items()}
    return replace(base, **{k: v for k, v in values.items() if v is not None})


def resolve_request(
    request: GenerationRequest,
    defaults: P.PipelineDefaults,
    distilled_lora: tuple[LoraSpec, ...] = (),
    negative_prompt: str = P.DEFAULT_NEGATIVE_PROMPT,
) -> Request:
    """The pipelines' Request: every None filled from the pipeline's `defaults`."""
    pick = lambda value, default: default if value is None else value  # noqa: E731
    request.guidance_flags()  # unknown guidance keys are refused
    return Request(
        prompt=DEFAULT_PROMPT if request.prompt is None else request.prompt,
        negative_prompt=pick(request.negative_prompt, negative_prompt),
        seed=pick(request.seed, defaults.seed),
        height=pick(request.height, defaults.height),
        width=pick(request.width, defaults.width),
        num_frames=pick(request.num_frames, defaults.num_frames),
        frame_rate=pick(request.frame_rate, defaults.frame_rate),
        num_inference_steps=pick(request.num_inference_steps, defaults.num_inference_steps),
        video_guider=_guider(request.video_guidance, defaults.video_guider),
        audio_guider=_guider(request.audio_guidance, defaults.audio_guider),
        images=list(request.images),
        distilled_lora=tuple(distilled_lora),
    )


NEGATIVE_INDEX_NOTE = (
    "note: --image {path} {given}: a negative frame index counts from the end, so it is frame {frame} of "
    "{frames}; ltx-pipelines 1.0.0 passes {given} to ltx-core literally, which places that keyframe before "
    "the first frame"
)


def check_image(image: ImageInput, num_frames: int, note: Callable[[str], None] = print) -> ImageInput:
    """The image exists (or its bytes are given), decodes, and its frame index is in range; a negative
    index counts from the end (Python style: -1 is the last frame), as the LTX-2.3 Ascend guide's
    keyframe command means it."""
    name = image.label
    source = image.source if isinstance(image.source, bytes) else Path(image.source)
    decode_image(source, f"--image {name}" if isinstance(image.source, bytes) else "--image")  # RGB, >= 2x2
    if not isinstance(image.frame_idx, int) or not -num_frames <= image.frame_idx < num_frames:
        raise UserError(
            f"--image {name} {image.frame_idx}: frame index must be in [0, {num_frames - 1}] "
            f"(or [-{num_frames}, -1] counted from the end)"
        )
    if not math.isfinite(image.strength):
        raise UserError(f"--image {name}: STRENGTH {image.strength} must be a finite number, e.g. 1.0")
    if image.frame_idx < 0:
        frame = image.frame_idx + num_frames
        note(NEGATIVE_INDEX_NOTE.format(path=name, given=image.frame_idx, frame=frame, frames=num_frames))
        return replace(image, frame_idx=frame)
    return image


def check_request(req: Request, two_stage: bool, note: Callable[[str], None] = print) -> None:
    """Every request-level check that needs no model (the pipeline's own `check` follows)."""
    check_pixel_shape(req.num_frames, req.height, req.width, two_stage=two_stage)
    if not isinstance(req.num_inference_steps, int) or req.num_inference_steps < 1:
        raise UserError(f"--num-inference-steps {req.num_inference_steps}: must be >= 1")
    if not (math.isfinite(req.frame_rate) and req.frame_rate > 0):
        raise UserError(f"--frame-rate {req.frame_rate:g}: must be a positive number of frames per second, e.g. 24")
    numbers = {"--seed": req.seed, "--frame-rate": req.frame_rate}
    for side, guider in (("video", req.video_guider), ("audio", req.audio_guider)):
        numbers.update({f"{side} guidance {k}": getattr(guider, k) for k in GUIDER_FIELDS})
    numbers.update({f"--image {image.label} STRENGTH": image.strength for image in req.images})
    check_finite(numbers)  # a NaN passes every range check and would only show at the encoder
    utf8_text(req.prompt, "--prompt")
    utf8_text(req.negative_prompt, "--negative-prompt")
    req.images = [check_image(image, req.num_frames, note) for image in req.images]


def pipeline_options(spec) -> argparse.ArgumentParser:
    """A parser holding only the pipeline's own flags (`PipelineSpec.add_arguments`), for their defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    if spec.add_arguments is not None:
        spec.add_arguments(parser.add_argument_group())
    return parser


def option_defaults(spec) -> dict[str, Any]:
    """The pipeline's own flags and their defaults (dest -> default), and any parser-level defaults it
    sets (retake: negative_prompt "")."""
    parser = pipeline_options(spec)
    found = {a.dest: a.default for a in parser._actions}
    return {**found, **parser._defaults}
