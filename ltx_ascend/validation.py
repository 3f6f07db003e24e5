"""Request checks that need no model: pure functions of plain values that raise `UserError`.

One place for them so that every front end runs the same checks: ltx-run's argv today, the resident
API's `Engine.validate` and the HTTP service (which hands in bytes and strings, never a Namespace).
Each check names the flag (or field) it refuses and says what to pass instead.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ltx_ascend.errors import UserError

# -- numbers ------------------------------------------------------------------------------------


def finite_number(value: Any, what: str, *, example: str = "1.0") -> float:
    """`value` (a number or its text) as a finite float; NaN, inf and non-numbers are refused."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {value}: must be a number, e.g. {example}") from None
    if not math.isfinite(number):
        raise UserError(f"{what} {value}: must be a finite number (not NaN or infinity), e.g. {example}")
    return number


def _numbers_in(value: Any) -> Iterable[tuple[str, float]]:
    """(label, number) for every float in a flag's value: the value itself, the items of a list, and
    the float fields of a dataclass item (an --image's STRENGTH, a LoRA's strength)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float):
        yield "", value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers_in(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        path = getattr(value, "path", None)
        for f in dataclasses.fields(value):
            number = getattr(value, f.name)
            if isinstance(number, float):
                yield f"{'' if path is None else f'{path} '}{f.name.upper()}", number


def check_finite(values: Mapping[str, Any]) -> None:
    """Every number among `values` (flag or field name -> value) is finite, checked before anything loads.

    A NaN guidance scale or strength passes every range check (all comparisons are False) and only
    shows at the end of the run, as an encoder error on a NaN waveform."""
    for name, value in values.items():
        for label, number in _numbers_in(value):
            if not math.isfinite(number):
                shown = f"{name} {label}".strip()
                raise UserError(f"{shown} {number}: must be a finite number (not NaN or infinity)")


def flag_values(namespace_vars: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """argparse dests -> `--flag-names` (with `flags` overriding, e.g. images -> --image)."""
    flags = flags or {}
    return {flags.get(dest, "--" + dest.replace("_", "-")): value for dest, value in namespace_vars.items()}


def positive(value: float | int, what: str, *, example: str) -> float | int:
    """A finite number > 0 (a count, a size, a bandwidth)."""
    if (isinstance(value, float) and not math.isfinite(value)) or not value > 0:
        raise UserError(f"{what} {value:g}: must be > 0, e.g. {example}")
    return value


def ascii_int(text: str, what: str, *, minimum: int | None = None) -> int:
    """A whole number written in ASCII digits (an optional leading '-').

    `str.isdigit` takes '²' and `int` takes Arabic-Indic digits: neither is a number a user meant."""
    body = text[1:] if text.startswith("-") else text
    if not body or not body.isascii() or not body.isdigit():
        raise UserError(f"{what}={text!r} is not a whole number (ASCII digits 0-9)")
    number = int(text)
    if minimum is not None and number < minimum:
        raise UserError(f"{what}={text!r} must be >= {minimum}")
    return number


def env_int(environ: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    """An integer environment variable (RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them)."""
    text = environ[name].strip()
    try:
        return ascii_int(text, name, minimum=minimum)
    except UserError:
        raise UserError(
            f"environment {name}={environ[name]!r} is not a whole number >= {minimum}: torchrun sets it; "
            f"unset it to run on one device"
        ) from None


# -- text ---------------------------------------------------------------------------------------


def utf8_text(text: str, what: str) -> str:
    """Text that encodes as UTF-8. Bytes of argv that are not UTF-8 arrive as lone surrogates, which
    fail later (the prompt cache key, the tokenizer): refused here in one line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(
            f"{what}: not valid UTF-8 (byte {exc.object[exc.start]!r} at character {exc.start}); "
            "pass the text in UTF-8 (check the terminal's or the file's encoding)"
        ) from None
    return text


def utf8_file(path: str | Path, what: str) -> str:
    """A text file's content; a binary or non-UTF-8 file is one line, not a UnicodeDecodeError."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{what}: cannot read {path} ({exc.strerror}): pass a file that exists") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what}: {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "pass the text file written for it"
        ) from None


# -- files --------------------------------------------------------------------------------------


def same_file(a: str | Path, b: str | Path) -> bool:
    """`a` and `b` are one file: the same inode if both exist (hard links, symlinks, `./x` vs `x`),
    else the same resolved path."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def files_under(root: str | Path | None) -> list[Path]:
    """Every file under a folder input (a Gemma root): an output must not land on any of them."""
    if root is None:
        return []
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def check_distinct_outputs(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | Iterable[str | Path] | None]
) -> None:
    """Each output path is a file of its own: not another output, not any input (same file, not just
    the same string), so a run never writes frames over the LoRA it read or JSON into its mp4."""
    given = [(flag, Path(path)) for flag, path in outputs.items() if path is not None]
    for i, (flag, path) in enumerate(given):
        for other_flag, other in given[:i]:
            if same_file(path, other):
                raise UserError(f"{flag} {path} is also {other_flag}: give each output its own file")
    sources: list[tuple[str, Path]] = []
    for flag, value in inputs.items():
        if value is None:
            continue
        items = [value] if isinstance(value, (str, Path)) else list(value)
        sources += [(flag, Path(item)) for item in items]
    for flag, path in given:
        for source_flag, source in sources:
            if same_file(path, source):
                raise UserError(
                    f"{flag} {path} is the input {source_flag} {source}: writing it would destroy the input; "
                    "pass another output path"
                )


# -- images -------------------------------------------------------------------------------------

MIN_IMAGE_SIDE = 2  # libx264 (the conditioning round trip) needs even sides of at least 2 pixels


def decode_image(source: str | Path | bytes, what: str):
    """A conditioning image (a path, or an upload's bytes) as RGB uint8 [H, W, 3] (numpy).

    Grayscale, palette, 16-bit and alpha images are converted to RGB, as an operator expects (ltx-pipelines
    1.0.0 slices the array's last axis, which turns a grayscale image into three columns and fails later).
    An image smaller than 2x2 pixels is refused."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    shown = "the uploaded image" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise UserError(f"{what} {shown}: file not found")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: PIL's RGB conversion clips, so scale
                array = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if im.mode.startswith("I;16") else max(float(array.max()), 1.0)
                im = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8))
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{what} {shown}: cannot decode it as an image ({exc}); pass a PNG or JPEG") from None
    if rgb.width < MIN_IMAGE_SIDE or rgb.height < MIN_IMAGE_SIDE:
        raise UserError(
            f"{what} {shown}: {rgb.width}x{rgb.height} pixels is too small (at least {MIN_IMAGE_SIDE}x"
            f"{MIN_IMAGE_SIDE}); pass the conditioning frame at a real size"
        )
    return np.asarray(rgb, dtype=np.uint8)


# -- tensors ------------------------------------------------------------------------------------


class NonFiniteError(RuntimeError):
    """A stage produced NaN or infinity although every input number was checked finite first."""


def check_finite_tensor(tensor: Any, where: str, *, user_input: bool = False) -> None:
    """Catch a non-finite latent or waveform where it appears, naming the stage, instead of letting it
    reach the AAC encoder at the very end. `user_input`: the tensor came straight from a user's file
    (UserError); otherwise it is ours to explain (NonFiniteError, an internal error)."""
    import torch

    if tensor is None or not torch.is_floating_point(tensor):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if not bad:
        return
    message = f"{where}: {bad} of {tensor.numel()} values are NaN or infinite"
    if user_input:
        raise UserError(f"{message}; pass a file with finite values")
    raise NonFiniteError(
        f"{message} (every input number was checked finite: the weights, an artifact or ltx-ascend; "
        "check the artifacts with ltx-verify)"
    )


def check_finite_safetensors(path: str | Path, what: str) -> None:
    """Every floating tensor of a .safetensors file is finite (a LoRA, read one tensor at a time)."""
    import safetensors
    import torch

    with safetensors.safe_open(str(path), framework="pt") as f:
        for key in list(f.keys()):
            tensor = f.get_tensor(key)
            if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
                raise UserError(
                    f"{what} {path}: tensor {key} holds NaN or infinite values; the file is damaged or was "
                    "saved from a diverged training run: pass a good copy"
                )
