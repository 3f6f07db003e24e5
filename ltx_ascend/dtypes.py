"""The one dtype table: names as manifests, CLIs and plans write them, and what they mean.

A manifest records a tensor's dtype by name (torch's and numpy's names agree for every dtype a
graph boundary carries); `--dtype` also takes the short aliases (`bf16`, `fp32`, ...). The graph
dtypes are the floating ones a component may be exported in.
"""

from __future__ import annotations

import torch

from ltx_ascend.errors import UserError

# Every dtype a graph boundary, a manifest or a plan names, with its torch dtype.
TORCH: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
GRAPH_DTYPES: dict[str, torch.dtype] = {n: TORCH[n] for n in ("float32", "float16", "bfloat16")}
"""What `ltx-export --dtype` (and a component's graph) may be."""

COMPUTE_DTYPES: dict[str, torch.dtype] = {**GRAPH_DTYPES, "float64": torch.float64}
"""What `ltx-run --dtype` may ask models to compute in."""

ALIASES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}


def name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16" (the manifest's spelling)."""
    return str(dtype).removeprefix("torch.")


def itemsize(dtype: str | torch.dtype) -> int:
    """Bytes per element (a plan's bytes moved, a memory model's sizes)."""
    return (TORCH[dtype] if isinstance(dtype, str) else dtype).itemsize


def parse(
    text: str | torch.dtype,
    table: dict[str, torch.dtype] = COMPUTE_DTYPES,
    flag: str = "--dtype",
    offered: tuple[str, ...] | None = None,
) -> torch.dtype:
    """A dtype from a flag's text (aliases accepted), or one line naming the choices (`offered`: the
    ones to suggest, when the table also accepts some the flag does not advertise)."""
    choices = ", ".join(offered or table)
    if isinstance(text, torch.dtype):
        if text not in table.values():
            raise UserError(f"{flag} {text}: unsupported; use one of {choices}")
        return text
    key = text.strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    if key not in table:
        raise UserError(f"{flag} {text}: unknown dtype; use one of {choices}")
    return table[key]
