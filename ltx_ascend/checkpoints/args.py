"""The checkpoint flags every command shares, spelled as Lightricks' ltx-pipelines spells them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec
from ltx_ascend.errors import UserError


class _LoraAction(argparse.Action):
    """`--lora PATH STRENGTH`, repeatable; the strength must parse as a float."""

    def __call__(self, parser, namespace, values, option_string=None):
        path, strength = values
        try:
            value = float(strength)
        except ValueError:
            raise UserError(f"{option_string} {path} {strength}: STRENGTH must be a number, e.g. 0.8") from None
        if not math.isfinite(value):
            raise UserError(f"{option_string} {path} {strength}: STRENGTH must be a finite number, e.g. 0.8")
        specs = list(getattr(namespace, self.dest) or [])
        specs.append(LoraSpec(Path(path), value))
        setattr(namespace, self.dest, specs)


def add_checkpoint_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("checkpoint set")
    group.add_argument(
        "--checkpoint-path", type=Path, required=required, help="LTX-2.3 .safetensors (dev or distilled)"
    )
    group.add_argument("--gemma-root", type=Path, help="Gemma-3 folder (config.json, tokenizer.model, weights)")
    group.add_argument("--spatial-upsampler-path", type=Path, help="x2 spatial latent upsampler .safetensors")
    group.add_argument(
        "--distilled-lora",
        nargs=2,
        metavar=("PATH", "STRENGTH"),
        action=_LoraAction,
        dest="distilled_lora",
        help="distilled LoRA for the stage-2 transformer",
    )
    group.add_argument(
        "--lora",
        nargs=2,
        metavar=("PATH", "STRENGTH"),
        action=_LoraAction,
        dest="lora",
        default=[],
        help="LoRA fused into the transformer (repeatable)",
    )


def checkpoint_set_from_args(args: argparse.Namespace) -> CheckpointSet:
    return CheckpointSet(
        checkpoint=args.checkpoint_path,
        gemma_root=args.gemma_root,
        spatial_upsampler=args.spatial_upsampler_path,
        loras=tuple(args.lora or ()),
    )
