"""What each pipeline samples, as data: its stages' shape, sigma schedule, guidance and sampler.

Each pipeline module lists its `STAGES` (`StageSpec`s); `sampling.sampling_stage` runs one, the
timing table names its row after it, and `ltx-plan` reads the same list at the pipeline's defaults
without loading a model. `tests/test_stages.py` runs every pipeline on the tiny set and checks that
the DiT evaluations and guidance passes each stage makes are the ones declared here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.types import VideoLatentShape, VideoPixelShape

from ltx_ascend.engine import params as P

# Pipeline name -> module. Each module declares itself in one `SPEC = PipelineSpec(...)`.
PIPELINES = {
    name: f"ltx_ascend.pipelines.{name}"
    for name in (
        "ti2vid_two_stages",
        "ti2vid_two_stages_hq",
        "ti2vid_one_stage",
        "distilled",
        "keyframe_interpolation",
        "a2vid_two_stage",
        "retake",
        "ic_lora",
    )
}

# The audio guider of a stage whose audio stays fixed (a2vid): no CFG, STG or modality pass for it.
FIXED_AUDIO_GUIDER = MultiModalGuiderParams()
EVALS_PER_STEP = {"euler": 1, "res2s": 2}  # res_2s evaluates at the point and at a midpoint

Schedule = Literal["ltx2", "ltx2-stage-tokens"] | tuple[float, ...]
Guidance = Literal["none", "guided", "video"]
Sampler = Literal["euler", "res2s"]


def passes_per_step(video_params: MultiModalGuiderParams, audio_params: MultiModalGuiderParams) -> int:
    """How many transformer passes a guided step runs (what a batched DiT graph should hold)."""
    cfg = video_params.cfg_scale != 1.0 or audio_params.cfg_scale != 1.0
    stg = video_params.stg_scale != 0.0 or audio_params.stg_scale != 0.0
    mod = video_params.modality_scale != 1.0 or audio_params.modality_scale != 1.0
    return 1 + int(cfg) + int(stg) + int(mod)


@dataclass(frozen=True)
class StageSpec:
    """One sampling stage.

    name: its row in the timing table and in ltx-plan.
    stage: the shape it runs at: 1 = half height and width (stage 1 of a two-stage pipeline),
        2 = the output size after the x2 upsampler, None = the output size of a one-stage pipeline.
    schedule: "ltx2" = LTX2Scheduler over --num-inference-steps at its default token count;
        "ltx2-stage-tokens" = the same, shifted for this stage's latent token count; or a fixed
        sigma table (the distilled ones), whose length sets the steps.
    guidance: "none" = one conditional pass a step; "guided" = CFG / STG / modality passes from the
        request's guiders; "video" = the video guider's passes, the audio fixed (not sampled).
    sampler: "euler", or "res2s" (two DiT evaluations a step, plus one at the end of a schedule that
        reaches 0).
    """

    name: str
    stage: int | None
    schedule: Schedule
    guidance: Guidance = "none"
    sampler: Sampler = "euler"

    def __post_init__(self) -> None:
        if isinstance(self.schedule, tuple) and self.schedule[-1] != 0.0:
            raise ValueError(f"{self.name}: a sigma table ends at 0 (the evaluation count assumes it)")

    def steps(self, num_inference_steps: int) -> int:
        return len(self.schedule) - 1 if isinstance(self.schedule, tuple) else num_inference_steps

    def passes(self, video_params: MultiModalGuiderParams, audio_params: MultiModalGuiderParams) -> int:
        if self.guidance == "none":
            return 1
        return passes_per_step(video_params, FIXED_AUDIO_GUIDER if self.guidance == "video" else audio_params)

    @property
    def evals_per_step(self) -> int:
        return EVALS_PER_STEP[self.sampler]

    def evaluations(self, steps: int) -> int:
        """DiT evaluations over `steps` steps (each runs `passes` passes). Every schedule here ends at
        sigma 0, where res_2s adds one last evaluation (ltx-pipelines' res2s loop does the same).
        A guider `skip_step` > 0 (0 at every default) reuses the last prediction on some steps: fewer."""
        return steps * self.evals_per_step + (1 if self.sampler == "res2s" else 0)

    def sigmas(self, num_inference_steps: int, shape: VideoPixelShape, device: torch.device) -> torch.Tensor:
        if isinstance(self.schedule, tuple):
            return torch.tensor(self.schedule, device=device)
        latent = None
        if self.schedule == "ltx2-stage-tokens":  # a meta tensor carries the stage's latent shape
            latent = torch.empty(VideoLatentShape.from_pixel_shape(shape).to_torch_shape(), device="meta")
        return LTX2Scheduler().execute(steps=num_inference_steps, latent=latent).to(dtype=torch.float32, device=device)

    def plan(
        self, num_inference_steps: int, video_params: MultiModalGuiderParams, audio_params: MultiModalGuiderParams
    ) -> PlannedStage:
        """This stage at a request's step count and guidance: what it will run."""
        steps = self.steps(num_inference_steps)
        return PlannedStage(
            name=self.name,
            stage=self.stage,
            sampler=self.sampler,
            steps=steps,
            passes=self.passes(video_params, audio_params),
            evals_per_step=self.evals_per_step,
            evaluations=self.evaluations(steps),
        )

    def at(self, defaults: P.PipelineDefaults) -> PlannedStage:
        """This stage at a pipeline's defaults (what ltx-plan counts)."""
        return self.plan(defaults.num_inference_steps, defaults.video_guider, defaults.audio_guider)


@dataclass(frozen=True)
class PlannedStage:
    """A stage at given settings: `evaluations` DiT evaluations of `passes` passes each."""

    name: str
    stage: int | None
    sampler: str
    steps: int
    passes: int
    evals_per_step: int
    evaluations: int

    @property
    def dit_passes(self) -> int:
        return self.evaluations * self.passes


# The stages every two-stage pipeline shares: stage 2 refines on the distilled sigma tail, one pass a step.
STAGE_1_DISTILLED = StageSpec("stage 1", 1, tuple(P.DISTILLED_SIGMA_VALUES))
STAGE_2_DISTILLED = StageSpec("stage 2", 2, tuple(P.STAGE_2_DISTILLED_SIGMA_VALUES))


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline module declares about itself (its `SPEC`), read by ltx-run, the engine and ltx-plan.

    stages: its sampling stages; run(ctx) -> Output: the pipeline.
    two_stage: stage 1 at half size, the x2 upsampler, stage 2 at full size.
    defaults / tiny_defaults: its settings for real checkpoints / the tiny set.
    distilled: takes --distilled-checkpoint-path (the checkpoint it runs) instead of a distilled LoRA.
    needs_distilled_lora: stage 2 fuses --distilled-lora (None: as two_stage).
    decodes_audio: the output's audio is decoded (a2vid keeps the input audio: no audio decoder runs).
    add_arguments(group): its own flags; check(args, request): its input checks (raising UserError;
        it may fill request.extra with decoded inputs).
    """

    name: str
    stages: tuple[StageSpec, ...]
    run: Callable
    two_stage: bool = False
    defaults: P.PipelineDefaults = P.LTX_2_3
    tiny_defaults: P.PipelineDefaults = P.TINY
    distilled: bool = False
    needs_distilled_lora: bool | None = None
    decodes_audio: bool = True
    add_arguments: Callable | None = None
    check: Callable | None = None

    @property
    def stage_2_lora(self) -> bool:
        """Stage 2 fuses the distilled LoRA (a second DiT weight set)."""
        return self.two_stage if self.needs_distilled_lora is None else self.needs_distilled_lora

    def defaults_for(self, tiny: bool) -> P.PipelineDefaults:
        return self.tiny_defaults if tiny else self.defaults


def pipeline_module(pipeline: str):
    return importlib.import_module(PIPELINES[pipeline])


def pipeline_spec(pipeline: str) -> PipelineSpec:
    """The pipeline's declaration (its module's `SPEC`)."""
    return pipeline_module(pipeline).SPEC


def declared_stages(pipeline: str, defaults: P.PipelineDefaults | None = None) -> list[PlannedStage]:
    """A pipeline's stages at `defaults` (its real-checkpoint defaults when None)."""
    spec = pipeline_spec(pipeline)
    return [stage.at(defaults or spec.defaults) for stage in spec.stages]
