"""The OpenAI Videos API's request and response shapes, and how they map onto a GenerationRequest.

A body comes as multipart/form-data (what the official `openai` client always posts: every value a
string, a nested dict as `name[key]` fields, a list as `name[]`, `input_reference` as a file part) or as
JSON (curl). Both become one flat dict of typed fields here; the settings themselves are checked by
the engine's own `validate` (the same check `ltx-run` runs), plus the served-shapes check."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ltx_ascend.errors import UserError
from ltx_ascend.shapes import parse_shape

# The LTX settings a body may carry beside OpenAI's own fields, and how a form string converts.
GUIDANCE_KEYS = {
    "cfg": float, "stg": float, "rescale": float, "modality": float, "skip_step": int, "stg_blocks": "int_list",
}  # fmt: skip
SCALAR_FIELDS: dict[str, Any] = {
    "prompt": str,
    "model": str,
    "pipeline": str,
    "seconds": float,
    "size": str,
    "negative_prompt": str,
    "seed": int,
    "num_inference_steps": int,
    "frame_rate": float,
    "num_frames": int,
}
DICT_FIELDS = ("guidance", "audio_guidance")
KNOWN = (*SCALAR_FIELDS, *DICT_FIELDS, "input_reference")
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_FORM_KEY = re.compile(r"^([a-z_]+)(?:\[([a-z_]*)\])?(?:\[\])?$")


@dataclass(frozen=True)
class Limits:
    """What one request may carry (bytes, characters, pixels); every one a 4xx when exceeded."""

    max_body_bytes: int = 16 << 20
    max_prompt_chars: int = 4000
    max_image_bytes: int = 10 << 20
    max_image_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class Shape:
    frames: int
    height: int
    width: int

    def describe(self, fps: float | None = None) -> str:
        text = f"{self.width}x{self.height} with {self.frames} frames"
        return f"{text} ({self.frames / fps:.3g} s at {fps:g} fps)" if fps else text


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """`--shapes 25x256x384,9x128x192` (FRAMESxHEIGHTxWIDTH, as ltx-export's --shape)."""
    shapes = []
    for item in text.split(","):
        if item.strip():
            try:
                shapes.append(Shape(*parse_shape(item)))
            except UserError:
                raise UserError(
                    f"--shapes {text!r}: {item.strip()!r} is not FRAMESxHEIGHTxWIDTH, e.g. 25x256x384"
                ) from None
    if not shapes:
        raise UserError("--shapes: name at least one FRAMESxHEIGHTxWIDTH, e.g. 25x256x384")
    return tuple(dict.fromkeys(shapes))


def frames_for_seconds(seconds: float, frame_rate: float) -> int:
    """round(seconds x frame_rate), then the nearest 8k+1 (LTX-2.3's frame rule); at least 1 frame."""
    n = math.floor(seconds * frame_rate + 0.5)
    k = max(0, math.floor((n - 1) / 8 + 0.5))
    return 8 * k + 1


def _convert(name: str, kind: Any, value: Any) -> Any:
    """A field's value as its type: JSON gives typed values, a form gives strings."""
    if kind == "int_list":
        items = value if isinstance(value, list | tuple) else [value]
        return [_convert(name, int, v) for v in items]
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{name}: expected a string, got {type(value).__name__}")
        return value
    if isinstance(value, bool | dict | list):
        raise UserError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r:.40}")
    try:
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except ValueError:
        raise UserError(
            f"{name}: expected {'an integer' if kind is int else 'a number'}, got {str(value)[:40]!r}"
        ) from None
    if not math.isfinite(number):
        raise UserError(f"{name}: {value!r} is not a finite number")
    return number


def _guidance(name: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise UserError(f"{name}: expected an object with keys {', '.join(GUIDANCE_KEYS)}")
    unknown = sorted(set(value) - set(GUIDANCE_KEYS))
    if unknown:
        raise UserError(f"{name}[{unknown[0]}]: unknown guidance key; known: {', '.join(GUIDANCE_KEYS)}")
    return {k: _convert(f"{name}[{k}]", GUIDANCE_KEYS[k], v) for k, v in value.items()}


def fields_from_json(body: Any) -> dict:
    if not isinstance(body, Mapping):
        raise UserError('the JSON body must be an object, e.g. {"prompt": "a red fox"}')
    return typed_fields(dict(body))


def fields_from_form(items: list[tuple[str, Any]]) -> dict:
    """Form fields (`guidance[cfg]`, `guidance[stg_blocks][]`, ...) as one nested dict, then typed.
    An uploaded file stays an object with `.read()`; the caller reads it within the size limit."""
    raw: dict[str, Any] = {}
    for key, value in items:
        match = _FORM_KEY.match(key)
        if not match:
            raise UserError(f"form field {key[:60]!r}: not a field this API knows; known: {', '.join(KNOWN)}")
        name, sub = match.group(1), match.group(2)
        listy = key.endswith("[]")
        if sub:
            target = raw.setdefault(name, {})
            if not isinstance(target, dict):
                raise UserError(f"form field {key}: {name} was also given as a plain value")
            if listy:
                target.setdefault(sub, []).append(value)
            else:
                target[sub] = value
        elif listy:
            raw.setdefault(name, []).append(value)
        else:
            if name in raw:
                raise UserError(f"form field {name}: given twice; send it once")
            raw[name] = value
    return typed_fields(raw)


def typed_fields(raw: dict) -> dict:
    unknown = sorted(set(raw) - set(KNOWN))
    if unknown:
        raise UserError(f"{unknown[0]}: not a field this API knows; known: {', '.join(KNOWN)}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if name in SCALAR_FIELDS:
            out[name] = _convert(name, SCALAR_FIELDS[name], value)
        elif name in DICT_FIELDS:
            out[name] = _guidance(name, value)
        else:
            out[name] = value
    if "prompt" not in out:
        raise UserError("prompt: required (the text the video shows)")
    return out


def parse_size(text: str) -> tuple[int, int]:
    """OpenAI's `size` "WIDTHxHEIGHT" -> (height, width)."""
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"size {text[:40]!r}: expected WIDTHxHEIGHT, e.g. 384x256")
    width, height = (int(g) for g in match.groups())
    return height, width


def decode_data_url(text: str) -> bytes:
    """`input_reference[image_url]` as a base64 data URL (an upload in the body); URLs are not fetched."""
    head, sep, payload = text.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise UserError(
            "input_reference[image_url]: only a base64 data URL (data:image/png;base64,...) is accepted; "
            "this server fetches no URLs: upload the image as the input_reference file instead"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("input_reference[image_url]: the data URL's base64 payload does not decode") from None


def check_image(data: bytes, limits: Limits) -> tuple[int, int]:
    """The upload is an image within the limits, decoded in memory: (width, height)."""
    import io

    from PIL import Image

    if len(data) > limits.max_image_bytes:
        raise UserError(f"input_reference: {len(data)} bytes, more than the limit of {limits.max_image_bytes}")
    if not data:
        raise UserError("input_reference: the upload is empty; send a PNG or JPEG")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise UserError(
                    f"input_reference: {width}x{height} pixels, more than the limit of {limits.max_image_pixels}"
                )
            image.verify()
    except UserError:
        raise
    except Exception as exc:  # PIL raises many types for bytes that are not an image
        raise UserError(
            f"input_reference: cannot decode it as an image ({type(exc).__name__}); send a PNG or JPEG"
        ) from None
    return width, height


@dataclass
class Video:
    """OpenAI's Video object, rendered from a job."""

    id: str
    model: str
    status: str
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    size: str
    seconds: str
    prompt: str | None
    error: dict | None = None
    remixed_from_video_id: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        body = {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "size": self.size,
            "seconds": self.seconds,
            "prompt": self.prompt,
            "error": self.error,
            "remixed_from_video_id": self.remixed_from_video_id,
        }
        return {**body, **self.extra}


def format_seconds(frames: int, frame_rate: float) -> str:
    return f"{frames / frame_rate:.4g}"


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None):
    """OpenAI's error shape: the client raises its APIStatusError subclass with this message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
