"""Defaults and sigma tables of Lightricks' ltx-pipelines 1.0.0 (utils/constants.py), by value.

ltx-pipelines is the reference, not a dependency of the product; `tests/test_pipeline_params.py`
checks every value here against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltx_core.components.guiders import MultiModalGuiderParams

DISTILLED_SIGMA_VALUES = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]
STAGE_2_DISTILLED_SIGMA_VALUES = [0.909375, 0.725, 0.421875, 0.0]
DEFAULT_IMAGE_CRF = 33
DEFAULT_LORA_STRENGTH = 1.0
DEFAULT_NEGATIVE_PROMPT = (
    "blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, "
    "grainy texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, "
    "deformed facial features, asymmetrical face, missing facial features, extra limbs, disfigured hands, "
    "wrong hand count, artifacts around text, inconsistent perspective, camera shake, incorrect depth of "
    "field, background too sharp, background clutter, distracting reflections, harsh shadows, inconsistent "
    "lighting direction, color banding, cartoonish rendering, 3D CGI look, unrealistic materials, uncanny "
    "valley effect, incorrect ethnicity, wrong gender, exaggerated expressions, wrong gaze direction, "
    "mismatched lip sync, silent or muted audio, distorted voice, robotic voice, echo, background noise, "
    "off-sync audio, incorrect dialogue, added dialogue, repetitive speech, jittery movement, awkward "
    "pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted camera, flat lighting, "
    "inconsistent tone, cinematic oversaturation, stylized filters, or AI artifacts."
)


@dataclass(frozen=True)
class PipelineDefaults:
    seed: int = 10
    height: int = 1024  # output size; two-stage pipelines run stage 1 at half
    width: int = 1536
    num_frames: int = 121
    frame_rate: float = 24.0
    num_inference_steps: int = 30
    video_guider: MultiModalGuiderParams = field(
        default_factory=lambda: MultiModalGuiderParams(
            cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, skip_step=0, stg_blocks=[28]
        )
    )
    audio_guider: MultiModalGuiderParams = field(
        default_factory=lambda: MultiModalGuiderParams(
            cfg_scale=7.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, skip_step=0, stg_blocks=[28]
        )
    )


LTX_2_3 = PipelineDefaults()
LTX_2_3_HQ = PipelineDefaults(
    num_inference_steps=15,
    height=1088,
    width=1920,
    video_guider=MultiModalGuiderParams(
        cfg_scale=3.0, stg_scale=0.0, rescale_scale=0.45, modality_scale=3.0, skip_step=0, stg_blocks=[]
    ),
    audio_guider=MultiModalGuiderParams(
        cfg_scale=7.0, stg_scale=0.0, rescale_scale=1.0, modality_scale=3.0, skip_step=0, stg_blocks=[]
    ),
)

# The tiny default (no checkpoint flags): a shape that runs in seconds on 2 CPU cores; the STG
# block is the tiny DiT's last (it has 2 blocks, LTX-2.3 has 48 and perturbs block 28).
TINY = PipelineDefaults(
    height=256,
    width=384,
    num_frames=25,
    video_guider=MultiModalGuiderParams(
        cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, skip_step=0, stg_blocks=[1]
    ),
    audio_guider=MultiModalGuiderParams(
        cfg_scale=7.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, skip_step=0, stg_blocks=[1]
    ),
)
