"""The DiT's export entry: one graph, or the block chain (input / shared block / output) when it is big,
or (`split`) the block chain with the block graph cut at its attention cores (export/dit_split.py).

Its own module so that the two layouts' modules need not know each other: `dit_blocks` builds on
`dit`'s feeds and masks, and this one picks between them.
"""

from __future__ import annotations

import torch

from ltx_ascend.checkpoints.loader import CheckpointSet, read_model_config
from ltx_ascend.errors import UserError
from ltx_ascend.export.dit import WHOLE_DIT_MAX_BYTES, build_whole_items, dit_weight_bytes
from ltx_ascend.export.dit_blocks import build_block_items
from ltx_ascend.export.items import ExportItem, ExportOptions
from ltx_ascend.shapes import ShapeProfile


def build_items(
    ckset: CheckpointSet | None, profile: ShapeProfile, dtype: torch.dtype, options: ExportOptions
) -> list[ExportItem]:
    """`--dit-layout auto` takes blocks above `WHOLE_DIT_MAX_BYTES` of weights (and for random weights)."""
    config = options.random_config if ckset is None else read_model_config(ckset.checkpoint)
    if config is None:
        raise UserError("the DiT needs --checkpoint-path, or --random-weights with a config")
    layout = options.dit_layout
    if layout == "auto":
        layout = "blocks" if dit_weight_bytes(config, dtype) > WHOLE_DIT_MAX_BYTES else "whole"
    if layout in ("blocks", "split") or (ckset is None and options.dit_layout == "auto"):
        return build_block_items(ckset, config, profile, dtype, options.seed, options)
    return build_whole_items(ckset, config, profile, dtype, options)
