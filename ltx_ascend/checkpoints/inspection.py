"""`ltx-inspect`: check a checkpoint set and summarise it, reading headers only (no weights).

Before an hour of export and compile, a user wants to know the files are what they think:
every component present under its key prefix, config metadata there, LoRAs that actually touch
the transformer (with their rank), a Gemma root ltx-core can use. `--load` also builds every
component through ltx-core's builders on CPU, one at a time.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import safetensors
import torch
from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP

from ltx_ascend.checkpoints.args import add_checkpoint_args, checkpoint_set_from_args
from ltx_ascend.checkpoints.loader import (
    ALL_COMPONENTS,
    CheckpointSet,
    LoraSpec,
    builder_for,
    load_component,
    validate_lora,
    validate_set,
)
from ltx_ascend.errors import OneLineParser, cli_entry


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def component_rows(ckset: CheckpointSet) -> list[tuple[str, int, int, str]]:
    """(component, tensors, elements, dtypes) per component, from the safetensors headers (buffers included)."""
    rows = []
    for component in ALL_COMPONENTS:
        if (component == "spatial_upsampler" and ckset.spatial_upsampler is None) or (
            component == "text_encoder" and ckset.gemma_root is None
        ):
            continue
        builder = builder_for(component, ckset.with_loras(()))
        paths = builder.model_path if isinstance(builder.model_path, tuple) else (builder.model_path,)
        count, params, dtypes = 0, 0, Counter()
        for path in paths:
            for key, (dtype, shape) in _header(Path(path)).items():
                if builder.model_sd_ops is not None and builder.model_sd_ops.apply_to_key(key) is None:
                    continue
                count += 1
                params += math.prod(shape)
                dtypes[dtype] += 1
        rows.append((component, count, params, ",".join(sorted(dtypes))))
    return rows


def lora_summary(lora: LoraSpec, checkpoint: Path) -> str:
    """Tensor count, rank(s) and how many transformer weights the LoRA touches."""
    touched = validate_lora(lora, checkpoint)
    header = _header(lora.path)
    ranks = sorted({shape[0] for key, (_, shape) in header.items() if key.endswith(".lora_A.weight")})
    stray = [k for k in header if LTXV_LORA_COMFY_RENAMING_MAP.apply_to_key(k) is None]
    rank = ",".join(map(str, ranks))
    return (
        f"{lora.path.name}: {len(header)} tensors, rank {rank}, strength {lora.strength:g}, touches {touched} weights"
        + (f", {len(stray)} unmapped keys" if stray else "")
    )


def _table(rows: list[tuple[str, int, int, str]]) -> str:
    lines = [f"{'component':<18} {'tensors':>8} {'elements':>14}  dtype", "-" * 52]
    lines += [f"{c:<18} {n:>8} {p:>14,}  {d}" for c, n, p, d in rows]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="ltx-inspect", description=__doc__.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--load", action="store_true", help="also build every component on CPU through ltx-core")
    args = parser.parse_args(argv)
    ckset = checkpoint_set_from_args(args)
    loras = [*(args.distilled_lora or ()), *ckset.loras]
    validate_set(ckset.with_loras(loras))
    print(f"checkpoint {ckset.checkpoint}")
    print(_table(component_rows(ckset)))
    for lora in loras:
        print("LoRA " + lora_summary(lora, ckset.checkpoint))
    if args.load:
        for component, *_ in component_rows(ckset):
            start = time.perf_counter()
            model = load_component(component, ckset, dtype=torch.float32)
            params = sum(p.numel() for p in model.parameters())
            print(f"loaded {component:<18} {params:>14,} parameters in {time.perf_counter() - start:.2f} s")
            del model
    return 0
