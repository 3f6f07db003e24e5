"""In-context LoRA: a distilled two-stage run conditioned on a reference (control) video whose tokens
join the stage-1 video sequence (Lightricks' ICLoraPipeline, on our sessions).

Stage 1 (half size, IC-LoRA fused, distilled sigmas) appends the reference video's latent tokens with
ltx-core's VideoConditionByReferenceLatent: the video is read at stage-1 size / the LoRA's
`reference_downscale_factor` metadata and its positions are scaled back up. Stage 2 upsamples x2 and
refines with the plain distilled transformer (no LoRA, no reference). With no checkpoint flags the
tiny set's IC-LoRA is the default `--lora`.

Self-attention mask: with the reference's defaults (attention strength 1.0, no mask) no conditioning
item sets `LatentState.attention_mask`, so the compiled DiT runs. `--conditioning-attention-mask`
sets one; no compiled DiT graph takes it, so stage 1 then runs the transformer eager (one warning line).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from ltx_core.components.noisers import GaussianNoiser
from ltx_core.conditioning import (
    ConditioningItem,
    ConditioningItemAttentionStrengthWrapper,
    VideoConditionByReferenceLatent,
)
from ltx_core.types import VideoLatentShape

from ltx_ascend.checkpoints.loader import LoraSpec, read_safetensors_metadata
from ltx_ascend.checkpoints.tiny import ensure_tiny_set
from ltx_ascend.engine import params as P
from ltx_ascend.engine import sampling
from ltx_ascend.engine.conditioning import image_conditionings
from ltx_ascend.engine.context import Output, Request, RunContext
from ltx_ascend.engine.stages import STAGE_1_DISTILLED, STAGE_2_DISTILLED, PipelineSpec
from ltx_ascend.errors import UserError
from ltx_ascend.pipelines.decode import decode
from ltx_ascend.pipelines.video_input import check_video_file, count_frames, load_video
from ltx_ascend.shapes import shape_profile

TWO_STAGE = True
DISTILLED = True  # ltx-pipelines' ic_lora takes --distilled-checkpoint-path
NEEDS_DISTILLED_LORA = False  # both stages run the distilled checkpoint; stage 2 fuses no LoRA
DEFAULTS = P.LTX_2_3
TINY_DEFAULTS = P.TINY
# Stage 1: half size with the IC-LoRA and the reference tokens, distilled sigmas, one pass a step;
# stage 2 (unless --skip-stage-2): the distilled tail without the LoRA. `ltx-plan` reads this.
STAGES = (STAGE_1_DISTILLED, STAGE_2_DISTILLED)

VIDEO_FLAG = "--video-conditioning"
MASK_FLAG = "--conditioning-attention-mask"
VAE_SPATIAL_MULTIPLE = 32  # the video VAE encodes sides that are multiples of 32


@dataclass(frozen=True)
class VideoInput:
    path: str
    strength: float


@dataclass(frozen=True)
class ICLoraInputs:
    """What `check` established: the reference videos and how they are read."""

    videos: tuple[VideoInput, ...]
    video_frames: tuple[int, ...]  # frames each reference video gives (<= num_frames)
    downscale_factor: int
    mask: VideoInput | None  # --conditioning-attention-mask (its STRENGTH scales the mask)
    skip_stage_2: bool


class _PathStrengthAction(argparse.Action):
    """`FLAG PATH STRENGTH` (repeatable when `append`), one-line errors."""

    def __init__(self, *args, append: bool = True, **kwargs):
        self.append = append
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) != 2:
            raise UserError(f"{option_string} takes PATH STRENGTH, got {' '.join(values) or 'nothing'}")
        try:
            item = VideoInput(values[0], float(values[1]))
        except ValueError:
            raise UserError(f"{option_string} {' '.join(values)}: STRENGTH must be a number, e.g. 1.0") from None
        if self.append:
            item = [*(getattr(namespace, self.dest) or []), item]
        setattr(namespace, self.dest, item)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        VIDEO_FLAG,
        nargs="+",
        action=_PathStrengthAction,
        dest="video_conditioning",
        default=[],
        metavar="PATH STRENGTH",
        help="reference (control) video for the IC-LoRA and its conditioning strength (required, repeatable)",
    )
    group.add_argument(
        MASK_FLAG,
        nargs="+",
        action=_PathStrengthAction,
        append=False,
        dest="conditioning_attention_mask",
        default=None,
        metavar="MASK_PATH STRENGTH",
        help="grayscale mask video (stage-1 size) scaling the reference's attention, times STRENGTH in [0, 1]; "
        "runs the stage-1 transformer eager (no compiled DiT takes a self-attention mask)",
    )
    group.add_argument(
        "--skip-stage-2", action="store_true", help="stop after stage 1: output at half height and width"
    )


def reference_downscale_factor(loras: list[LoraSpec]) -> int:
    """The LoRAs' `reference_downscale_factor` metadata (1 when absent); LoRAs must agree."""
    factor = 1
    for lora in loras:
        text = read_safetensors_metadata(lora.path, "LoRA").get("reference_downscale_factor", "1")
        try:
            scale = int(text)
        except ValueError:
            raise UserError(f"LoRA {lora.path}: reference_downscale_factor {text!r} is not an integer") from None
        if scale < 1:
            raise UserError(f"LoRA {lora.path}: reference_downscale_factor {scale} must be >= 1")
        if scale != 1:
            if factor not in (1, scale):
                raise UserError(
                    f"LoRA {lora.path}: reference_downscale_factor {scale} conflicts with {factor} of another "
                    "LoRA; LoRAs with different reference scales cannot be combined"
                )
            factor = scale
    return factor


def check(args: argparse.Namespace, req: Request) -> None:
    videos = tuple(args.video_conditioning or ())
    if not videos:
        raise UserError(f"ic_lora needs {VIDEO_FLAG} PATH STRENGTH: the reference (control) video")
    if req.distilled_lora:
        raise UserError(
            "ic_lora takes no --distilled-lora: both stages run the distilled checkpoint (--distilled-checkpoint-path)"
        )
    mask: VideoInput | None = args.conditioning_attention_mask
    if mask is not None and not 0.0 <= mask.strength <= 1.0:
        raise UserError(f"{MASK_FLAG} {mask.path} {mask.strength}: STRENGTH must be in [0, 1]")
    for video in videos:
        check_video_file(video.path, VIDEO_FLAG)
    if mask is not None:
        check_video_file(mask.path, MASK_FLAG)

    if args.checkpoint_path is None and not args.lora:  # the tiny set: its IC-LoRA is the default --lora
        args.lora = [LoraSpec(ensure_tiny_set(Path(args.artifacts) / "tiny").ic_lora, P.DEFAULT_LORA_STRENGTH)]
    factor = reference_downscale_factor(list(args.lora or ()))
    height, width = req.height // 2, req.width // 2  # stage 1, where the reference joins
    if height % factor or width % factor:
        raise UserError(
            f"stage-1 size {height}x{width} (half of --height/--width) must be divisible by the IC-LoRA's "
            f"reference_downscale_factor {factor}"
        )
    if (height // factor) % VAE_SPATIAL_MULTIPLE or (width // factor) % VAE_SPATIAL_MULTIPLE:
        multiple = 2 * factor * VAE_SPATIAL_MULTIPLE
        raise UserError(
            f"--height {req.height} --width {req.width}: the reference video is read at half size / {factor} "
            f"= {height // factor}x{width // factor}, which the video VAE cannot encode (sides must be multiples "
            f"of 32): pass a height and width that are multiples of {multiple}"
        )

    frames = tuple(count_frames(v.path, req.num_frames, VIDEO_FLAG) for v in videos)
    if mask is not None:
        mask_frames = count_frames(mask.path, req.num_frames, MASK_FLAG)
        for video, count in zip(videos, frames, strict=True):
            latent_frames = (encodable_frames(count) - 1) // 8 + 1
            if mask_frames > 1 and latent_frames > 1 and (mask_frames - 1) % (latent_frames - 1):
                raise UserError(
                    f"{MASK_FLAG} {mask.path}: its {mask_frames} frames do not fit the {latent_frames} latent "
                    f"frames of {video.path} ({count} frames): (mask frames - 1) must be a multiple of "
                    f"{latent_frames - 1}"
                )
    req.extra["ic_lora"] = ICLoraInputs(videos, frames, factor, mask, bool(args.skip_stage_2))


def encodable_frames(frames: int) -> int:
    """The frames the video VAE encodes of a `frames`-long clip: it crops to 8k+1 (ltx-core's VideoEncoder)."""
    return (frames - 1) // 8 * 8 + 1


def mask_to_latent(mask: torch.Tensor, latent_frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """A pixel-space mask [B, 1, F, H, W] in [0, 1] -> per-token weights [B, F' * H' * W'] in the
    patchifier's (f, h, w) order: area-downsampled per frame, the first frame kept alone (causal VAE),
    the others averaged in groups of (F - 1) / (F' - 1) (ltx-pipelines' `_downsample_mask_to_latent`)."""
    b, _, f_pix = mask.shape[:3]
    spatial = torch.nn.functional.interpolate(
        mask.transpose(1, 2).reshape(b * f_pix, 1, *mask.shape[-2:]), size=(latent_height, latent_width), mode="area"
    )
    spatial = spatial.reshape(b, f_pix, 1, latent_height, latent_width).transpose(1, 2)
    latent = spatial[:, :, :1]
    if f_pix > 1 and latent_frames > 1:
        if (f_pix - 1) % (latent_frames - 1):
            raise UserError(
                f"attention mask: {f_pix} frames do not fit {latent_frames} latent frames ((F - 1) must divide evenly)"
            )
        group = (f_pix - 1) // (latent_frames - 1)
        rest = spatial[:, :, 1:].reshape(b, 1, latent_frames - 1, group, latent_height, latent_width).mean(dim=3)
        latent = torch.cat([latent, rest], dim=2)
    return latent.reshape(b, -1)


def reference_conditionings(ctx: RunContext, inputs: ICLoraInputs) -> list[ConditioningItem]:
    """The reference videos as VideoConditionByReferenceLatent items (attention-masked when asked),
    in ltx-pipelines' `_create_conditionings` order."""
    req, device, dtype = ctx.request, ctx.device, ctx.dtype
    height, width = req.height // 2 // inputs.downscale_factor, req.width // 2 // inputs.downscale_factor
    mask = None
    if inputs.mask is not None:
        pixels = load_video(inputs.mask.path, req.height // 2, req.width // 2, req.num_frames, dtype, device, MASK_FLAG)
        mask = ((pixels.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
    items: list[ConditioningItem] = []
    for video, count in zip(inputs.videos, inputs.video_frames, strict=True):
        frames = encodable_frames(count)  # what ltx-core's encoder keeps; a compiled encoder has that shape
        pixels = load_video(video.path, height, width, req.num_frames, dtype, device, VIDEO_FLAG)[:, :, :frames]
        encoder = ctx.stack.video_encoder(shape_profile((frames, height, width), fps=req.frame_rate))
        latent = encoder(pixels)
        del encoder
        item: ConditioningItem = VideoConditionByReferenceLatent(
            latent=latent, downscale_factor=inputs.downscale_factor, strength=video.strength
        )
        if mask is not None:
            shape = VideoLatentShape.from_torch_shape(latent.shape)
            weights = mask_to_latent(mask, shape.frames, shape.height, shape.width) * inputs.mask.strength
            item = ConditioningItemAttentionStrengthWrapper(item, attention_mask=weights)
        items.append(item)
    return items


def run(ctx: RunContext) -> Output:
    req, stack = ctx.request, ctx.stack
    inputs: ICLoraInputs = req.extra["ic_lora"]
    generator = ctx.generator()
    noiser = GaussianNoiser(generator=generator)

    with ctx.timings.stage("prompt"):
        (prompt,) = ctx.prompts.encode([req.prompt])

    # Stage 1: half size; image conditionings, then the reference videos (appended tokens).
    with ctx.timings.stage("stage 1 conditioning"):
        conditionings = image_conditionings(ctx, req.images, req.pixel_shape(stage=1), stage=1)
        conditionings += reference_conditionings(ctx, inputs)
    video, audio = sampling.sampling_stage(
        ctx, STAGES[0], conditionings, noiser, prompt, attention_masked=f"{MASK_FLAG} sets a self-attention mask"
    )
    if inputs.skip_stage_2:
        return decode(ctx, video.latent, audio.latent, req.profile(stage=1), generator)

    # Stage 2 refines with the plain distilled transformer: no IC-LoRA, no reference.
    plain = replace(stack, ckset=stack.ckset.with_loras(()))  # shares `used` / `folders` with `stack`
    video, audio = sampling.upsample_then_refine(
        ctx, STAGES[1], video, audio, noiser, prompt, image_conditionings, stack=plain
    )
    return decode(ctx, video.latent, audio.latent, req.profile(stage=2), generator)


SPEC = PipelineSpec(
    "ic_lora",
    STAGES,
    run,
    two_stage=TWO_STAGE,
    defaults=DEFAULTS,
    tiny_defaults=TINY_DEFAULTS,
    distilled=DISTILLED,
    needs_distilled_lora=NEEDS_DISTILLED_LORA,
    add_arguments=add_arguments,
    check=check,
)
