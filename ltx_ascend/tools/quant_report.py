"""`ltx-verify --quantization w8a8`: how far a W8A8 block is from the float block, at the real width.

Each row is one LTX-2.3 block built at the released config's sizes (4096 wide, 32 heads) with seeded
random weights (one seed per block: no checkpoint needed), run eager in float32 and with its
linears quantized exactly as the exported graphs do (export/quantize.py), on the same sample
activations. `outlier_channels` multiplies that many channels of the incoming hidden states by
`outlier_scale`, the activation outliers real DiT checkpoints have and random weights lack, to show
what they cost per-token W8A8 and what `smooth_alpha` (SmoothQuant) wins back.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from ltx_ascend.export.dit_blocks import build_block_items
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.metrics import compare
from ltx_ascend.shapes import ShapeProfile

MIN_COSINE = 0.999


def _block_item(config: dict, profile: ShapeProfile, seed: int, options: ExportOptions):
    items = build_block_items(None, config, profile, torch.float32, seed, options)
    return next(i for i in items if i.variant == "block")


def _with_outliers(sample: dict[str, torch.Tensor], channels: int, scale: float) -> dict[str, torch.Tensor]:
    if not channels:
        return sample
    out = dict(sample)
    for name in ("video_x", "audio_x"):
        x = sample[name].clone()
        picked = torch.randperm(x.shape[-1], generator=torch.Generator().manual_seed(1))[:channels]
        x[..., picked] *= scale
        out[name] = x
    return out


def quantization_report(
    config: dict[str, Any],
    profile: ShapeProfile,
    *,
    blocks: int = 1,
    skip: tuple[str, ...] = (),
    smooth_alpha: float | None = None,
    outlier_channels: int = 0,
    outlier_scale: float = 50.0,
) -> list[dict[str, Any]]:
    """Rows per block and output (and the output minus the block's input): cosine, rel. L2 of W8A8 vs float32."""
    from ltx_ascend.export.dit_blocks import DiTBlockGraph, block_feeds
    from ltx_ascend.export.quantize import quantizable, quantize_module_, smooth_scales

    one_block = {**config, "transformer": {**config["transformer"], "num_layers": 1}}
    rows = []
    for seed in tqdm(range(blocks), desc="blocks", unit="block"):
        item = _block_item(one_block, profile, seed, ExportOptions())
        graph, sample = item.module, _with_outliers(item.sample, outlier_channels, outlier_scale)
        reference = item.reference(sample)
        block = graph.block
        names = quantizable(block, skip)
        smooth = None
        if smooth_alpha is not None:  # calibrated on the activations the block is then measured on
            feeds = [sample[n] for n in graph.input_names]
            smooth = smooth_scales(block, lambda graph=graph, feeds=feeds: graph(*feeds), names, smooth_alpha)
        quantize_module_(block, skip, smooth)
        with torch.no_grad():
            outputs = DiTBlockGraph(block)(*block_feeds(block, sample).values())
        for name, ref, out in zip(item.output_names, reference, outputs, strict=True):
            # The block's own contribution too: x_out = x + update, and the residual x flatters the cosine.
            x_in = sample[name.replace("_x_out", "_x")]
            for label, a, b in ((name, ref, out), (f"{name} - x", ref - x_in, out - x_in)):
                c = compare(a, b)
                rows.append({"block_seed": seed, "output": label, "cosine": c.cosine, "rel_l2": c.rel_l2})
        del item, graph, block
    return rows


def format_rows(rows: list[dict[str, Any]], title: str) -> str:
    lines = [title, f"{'block':>5}  {'output':<16} {'cosine':>10} {'rel L2':>10}  pass (cosine >= {MIN_COSINE})"]
    for r in rows:
        ok = "yes" if r["cosine"] >= MIN_COSINE else "NO"
        lines.append(f"{r['block_seed']:>5}  {r['output']:<16} {r['cosine']:>10.6f} {r['rel_l2']:>10.2e}  {ok}")
    return "\n".join(lines)
