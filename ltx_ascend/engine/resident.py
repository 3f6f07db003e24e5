"""`Engine`: load once, generate many. Built from `RunSettings`; `generate(GenerationRequest)` returns a
`Result` (uint8 frames, waveform, timing table) and `Result.write_mp4` writes what ltx-run writes.

`Engine.validate` is the one request validation (ltx-run and the HTTP service call it alike);
`generate` runs one request at a time per engine (a lock: a second thread waits for the first),
reports each sampling step to `progress`, and checks `cancelled` between steps, stopping with
`Cancelled` and leaving the engine usable. Bad input raises `UserError`; nothing here prints unless
the caller passes `log=print` (ltx-run does) and nothing configures logging.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from ltx_core.types import Audio

from ltx_ascend.checkpoints.gemma import read_gemma_config
from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, read_model_config, validate_set
from ltx_ascend.checkpoints.tiny import TinySet, ensure_tiny_set
from ltx_ascend.engine import params as P
from ltx_ascend.engine.artifact_finder import ArtifactFinder
from ltx_ascend.engine.context import Output, Request, RunContext
from ltx_ascend.engine.loading import ModelLoader
from ltx_ascend.engine.lookups import check_lookups
from ltx_ascend.engine.memory_policy import COMPONENTS as MEMORY_COMPONENTS
from ltx_ascend.engine.memory_policy import MemoryPolicy, choose_policy, file_weight_bytes
from ltx_ascend.engine.parallel import BroadcastPrompts, Parallel
from ltx_ascend.engine.request import (
    GenerationRequest,
    Progress,
    check_request,
    option_defaults,
    resolve_request,
)
from ltx_ascend.engine.settings import RunSettings
from ltx_ascend.engine.stack import BackendChoice, ModelStack
from ltx_ascend.engine.stages import PipelineSpec, pipeline_spec
from ltx_ascend.engine.step_cache import StepCacheSpec
from ltx_ascend.engine.text import PromptEncoder
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import Cancelled, UserError
from ltx_ascend.media import write_mp4
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.shapes import shape_profile

logger = logging.getLogger(__name__)

TINY_DISTILLED_LORA_STRENGTH = 0.8


@dataclass
class Result:
    """One generation: frames uint8 [F, H, W, 3], the waveform [channels, samples] and its rate, the
    timing table, and the request as it ran (every default filled in)."""

    frames: torch.Tensor
    audio: torch.Tensor | None
    sample_rate: int | None
    frame_rate: float
    timings: Timings
    request: GenerationRequest
    backends: dict[str, str] = field(default_factory=dict)  # component -> what ran it

    def write_mp4(self, path: str | Path) -> Path:
        """The mp4 ltx-run writes for these settings (atomically: a failed write leaves nothing)."""
        path = Path(path)
        audio = None if self.audio is None else Audio(waveform=self.audio, sampling_rate=self.sample_rate)
        write_mp4(path, self.frames, self.frame_rate, audio)
        return path

    @property
    def audio_object(self) -> Audio | None:
        return None if self.audio is None else Audio(waveform=self.audio, sampling_rate=self.sample_rate)


@dataclass
class Prepared:
    """A validated request: what `Engine.run` runs. `options` is the argparse-style view the pipeline
    module's own `check` reads (its flags, the guidance flags, the checkpoint flags)."""

    request: GenerationRequest  # resolved: defaults filled in
    pipeline: str
    spec: PipelineSpec
    internal: Request
    options: argparse.Namespace
    loras: tuple[LoraSpec, ...]  # the transformer's LoRAs for this request (the pipeline may add some)

    @property
    def two_stage(self) -> bool:
        return self.spec.two_stage


class Engine:
    """Load once, generate many; one call at a time (see the module docstring)."""

    def __init__(self, settings: RunSettings, *, log: Callable[[str], None] | None = None) -> None:
        if not isinstance(settings, RunSettings):
            raise TypeError(f"Engine takes RunSettings, got {type(settings).__name__}")
        self.settings = settings
        self.log = log or logger.info
        self._lock = threading.Lock()
        self._tiny: TinySet | None = None
        self._validated: set[tuple] = set()
        self._parallel: Parallel | None = None
        self._policy = settings.policy
        self._world_ready = False
        self._closed = False
        # Load-time state, made once (after the process group of a multi-device run is open) and
        # shared by every request: found artifacts, and the models and sessions kept by placement.
        self._finder: ArtifactFinder | None = None
        self._loader: ModelLoader | None = None
        self.memory: MemoryPolicy | None = None
        # The ltx-prepare command a missing artifact's warning names (ltx-run sets it from its command line).
        self.prepare_hint: str | None = None

    # -- validation ------------------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> GenerationRequest:
        """The one request validation: fills defaults, checks every field, raises UserError; loads nothing."""
        return self.prepare(request).request

    def prepare(self, request: GenerationRequest) -> Prepared:
        """`validate`, keeping what `run` needs."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"generate takes a GenerationRequest, got {type(request).__name__}")
        s = self.settings
        pipeline = request.pipeline or s.pipelines[0]
        if pipeline not in s.pipelines:
            raise UserError(f"pipeline {pipeline!r} is not served here; this engine runs {', '.join(s.pipelines)}")
        spec = pipeline_spec(pipeline)
        two_stage = spec.two_stage
        defaults = spec.defaults_for(s.tiny)
        options = option_defaults(spec)
        negative = options.pop("negative_prompt", P.DEFAULT_NEGATIVE_PROMPT)
        unknown = sorted(set(request.extra) - set(options))
        if unknown:
            known = ", ".join(sorted(options)) or "none"
            raise UserError(f"{pipeline}: unknown option {unknown[0]!r} (its options: {known})")
        req = resolve_request(request, defaults, s.distilled_lora, negative)
        check_request(req, two_stage, note=self.log)
        ns = argparse.Namespace(
            **{**options, **request.extra},
            **request.guidance_flags(),
            pipeline=pipeline,
            checkpoint_path=s.checkpoint,
            distilled_checkpoint_path=s.distilled_checkpoint_path,
            gemma_root=s.gemma_root,
            spatial_upsampler_path=s.spatial_upsampler_path,
            distilled_lora=list(s.distilled_lora) or None,
            lora=list(s.loras),
            artifacts=s.artifacts,
            prompt=request.prompt,
            negative_prompt=req.negative_prompt,
            seed=request.seed,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            frame_rate=request.frame_rate,
            num_inference_steps=request.num_inference_steps,
            images=list(request.images),
        )
        if spec.check is not None:
            spec.check(ns, req)
        if not s.tiny:
            if two_stage and s.spatial_upsampler_path is None:
                raise UserError(f"{pipeline} needs --spatial-upsampler-path (the x2 latent upsampler)")
            if spec.stage_2_lora and not req.distilled_lora:
                raise UserError(f"{pipeline} needs --distilled-lora PATH STRENGTH for stage 2")
        resolved = replace(
            request,
            pipeline=pipeline,
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            seed=req.seed,
            height=req.height,
            width=req.width,
            num_frames=req.num_frames,
            frame_rate=req.frame_rate,
            num_inference_steps=req.num_inference_steps,
            video_guidance=_guidance_dict(req.video_guider),
            audio_guidance=_guidance_dict(req.audio_guider),
            images=tuple(req.images),
        )
        return Prepared(resolved, pipeline, spec, req, ns, tuple(ns.lora or ()))

    # -- loading ---------------------------------------------------------------------------------

    def _tiny_set(self) -> TinySet:
        if self._tiny is None:
            self.log(f"no --checkpoint-path: using the tiny LTX-2.3 set under {self.settings.artifacts / 'tiny'}")
            self._tiny = ensure_tiny_set(self.settings.artifacts / "tiny")
        return self._tiny

    def _checkpoints(self, prepared: Prepared) -> tuple[CheckpointSet, Request]:
        """The checkpoint set this request runs on (the tiny set's paths filled in), checked once per
        distinct set of LoRAs; and the request with the tiny set's distilled LoRA when it needs one."""
        s, req, spec = self.settings, prepared.internal, prepared.spec
        checkpoint, gemma, upsampler = s.checkpoint, s.gemma_root, s.spatial_upsampler_path
        if s.tiny:
            tiny = self._tiny_set()
            checkpoint, gemma, upsampler = (
                tiny.checkpoint,
                gemma or tiny.gemma_root,
                upsampler or tiny.spatial_upsampler,
            )
            if spec.stage_2_lora and not req.distilled_lora:
                req = replace(req, distilled_lora=(LoraSpec(tiny.distilled_lora, TINY_DISTILLED_LORA_STRENGTH),))
        ckset = CheckpointSet(
            checkpoint=checkpoint, gemma_root=gemma, spatial_upsampler=upsampler, loras=prepared.loras
        )
        key = (ckset, req.distilled_lora)
        if key not in self._validated:
            validate_set(ckset.with_loras([*ckset.loras, *req.distilled_lora]))
            if prepared.two_stage and ckset.spatial_upsampler is None:
                raise UserError(f"{prepared.pipeline} needs --spatial-upsampler-path (the x2 latent upsampler)")
            if spec.stage_2_lora and not req.distilled_lora:
                raise UserError(f"{prepared.pipeline} needs --distilled-lora PATH STRENGTH for stage 2")
            self._validated.add(key)
        return ckset, req

    def _world(self, ckset: CheckpointSet) -> None:
        """A multi-device layout: check the heads split, open the process group (once)."""
        if self._world_ready:
            return
        layout = self.settings.layout
        if layout.size > 1:
            transformer = read_model_config(ckset.checkpoint)["transformer"]
            heads = {"video": transformer["num_attention_heads"], "audio": transformer["audio_num_attention_heads"]}
            distributed.check_heads(layout, heads)
            world = distributed.init_world(layout, self._policy.device)
            self._policy = dev.policy_for(world.device, self.settings.dtype)
            self._parallel = Parallel(world)
        self._world_ready = True

    @property
    def policy(self) -> dev.DevicePolicy:
        return self._policy

    @property
    def parallel(self) -> Parallel | None:
        return self._parallel

    def describe(self) -> str:
        """One line: the device policy (and the ranks of a multi-device run)."""
        layout = self.settings.layout
        return dev.describe(self._policy) + (f", ranks {layout.size} ({layout})" if self._parallel else "")

    def _resident(self, ckset: CheckpointSet) -> tuple[ArtifactFinder, ModelLoader]:
        """The finder and loader every request shares; the memory policy chosen (and printed) once."""
        if self._loader is None:
            s = self.settings
            self.memory = self._choose_memory(ckset)
            self.log(self.memory.describe())
            self._finder = ArtifactFinder(
                backends=s.backends,
                artifacts=s.artifacts,
                device=self._policy.device,
                dtype=self._policy.dtype,
                fallback=s.fallback,
                build_missing=s.builds,
                ep=s.ep,
                soc=s.soc,
                quantization=s.quantization,
                quantization_skip=s.quantization_skip,
                variant=s.variant_spec,
                parallel=self._parallel,
                log=self.log,
            )
            self._loader = ModelLoader(
                self._policy,
                place=self.memory.place,
                quantization=s.quantization,
                quantization_skip=s.quantization_skip,
            )
        return self._finder, self._loader

    def _choose_memory(self, ckset: CheckpointSet) -> MemoryPolicy:
        """Placements for the served pipelines at their default sizes (the largest DiT stage)."""
        s = self.settings
        config = read_model_config(ckset.checkpoint)
        profiles, sets = [], 1
        for name in s.pipelines:
            spec = pipeline_spec(name)
            d = spec.defaults_for(s.tiny)
            for stage in spec.stages:
                passes = stage.passes(d.video_guider, d.audio_guider)
                profiles.append(shape_profile((d.num_frames, d.height, d.width), stage=stage.stage, batch=passes))
            if spec.two_stage and spec.stage_2_lora:
                sets = 2  # stage 2 fuses the distilled LoRA: a second DiT weight set
        bytes_per = torch.finfo(self._policy.dtype).bits // 8
        extra = {}
        if ckset.gemma_root is not None:
            extra["text_encoder"] = file_weight_bytes(sorted(Path(ckset.gemma_root).rglob("*.safetensors")), bytes_per)
        if ckset.spatial_upsampler is not None:
            extra["spatial_upsampler"] = file_weight_bytes([ckset.spatial_upsampler], bytes_per)
        overrides = dict(s.placements)
        if s.streaming_prefetch_count is not None or s.max_device_memory is not None:
            overrides.setdefault("dit", "rebuild")  # streamed from host memory block by block, per stage
        device_bytes = None if s.device_memory_gb is None else int(s.device_memory_gb * 1e9)
        return choose_policy(
            config,
            max(profiles, key=lambda p: p.video_tokens * p.batch),
            device=self._policy.device,
            dtype=self._policy.dtype,
            components=MEMORY_COMPONENTS,
            dit_sets=sets,
            device_bytes=device_bytes,
            overrides=overrides,
            extra_bytes=extra,
            gemma_config=read_gemma_config(ckset.gemma_root) if ckset.gemma_root is not None else None,
        )

    @property
    def counts(self) -> dict[str, int]:
        """Models built and sessions opened so far (a resident engine's second call adds none)."""
        loader = self._loader
        return {"loads": loader.loads if loader else 0, "opens": loader.opens if loader else 0}

    def load_for(self, prepared: Prepared) -> None:
        """What `prepared` needs before its first step: the tiny set written, its checkpoint set
        checked, the process group of a multi-device layout open."""
        ckset, _ = self._checkpoints(prepared)
        self._world(ckset)
        self._resident(ckset)

    def load(self) -> None:
        """Build (the tiny set) and check what the served pipelines need."""
        with self._lock:
            for pipeline in self.settings.pipelines:
                self.load_for(self.prepare(GenerationRequest(pipeline=pipeline)))

    def check(self, prepared: Prepared) -> None:
        """The calls `run` makes before the first model loads, without running: the compiled artifacts
        `prepared` would use are there and match this checkpoint set (under --fallback none a missing or
        stale one is a UserError), so a server refuses at start-up instead of failing every job."""
        with self._lock:
            ckset, req = self._checkpoints(prepared)
            self.load_for(prepared)
            stack = self._stack(ckset, self.settings.step_cache_spec, Timings())
            preflight(stack, prepared.spec, prepared.options, req)
            if self.settings.fallback == "none" and not stack.build_missing:
                check_lookups(prepared.spec, req, stack)

    # -- running ---------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Result:
        """Validate then run one request (one call at a time per engine)."""
        with self._lock:
            return self._run(self.prepare(request), None, progress, cancelled)

    def run(
        self,
        prepared: Prepared,
        *,
        step_cache: StepCacheSpec | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Result:
        """Run a `prepare`d request; `step_cache` replaces the settings' spec for this call (calibration)."""
        with self._lock:
            return self._run(prepared, step_cache, progress, cancelled)

    def _run(self, prepared, step_cache, progress, cancelled) -> Result:
        if self._closed:
            raise RuntimeError("Engine.close() was called: build a new Engine")
        s = self.settings
        spec = s.step_cache_spec if step_cache is None else step_cache
        ckset, req = self._checkpoints(prepared)
        spec.check(read_model_config(ckset.checkpoint)["transformer"]["num_layers"])
        self._world(ckset)
        self._resident(ckset)
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled before the first step")
        req = replace(req, extra=dict(req.extra), images=list(req.images))
        timings = Timings()
        stack = self._stack(ckset, spec, timings)
        preflight(stack, prepared.spec, prepared.options, req)
        if s.fallback == "none" and not stack.build_missing:
            check_lookups(prepared.spec, req, stack)  # the DiT's too, at its stages' passes and tokens: before Gemma
        prompts = PromptEncoder(
            ckset,
            lambda: stack.text_connectors(req.profile()),
            s.prompt_cache_dir,
            self._policy.device,
            self._policy.dtype,
            producer=lambda: stack.producer("text_connectors", req.profile()),
            offload=s.offload != "none",
            device_log=stack.device_log,
            encoder=stack.prompt_hidden_states(),
        )
        if self._parallel is not None:
            prompts = BroadcastPrompts(prompts, self._parallel.world)
        main = self._parallel is None or self._parallel.world.is_main
        hook = _step_hook(prepared, progress, cancelled)
        output: Output = prepared.spec.run(RunContext(req, stack, prompts, timings, main=main, on_step=hook))
        timings.backends = dict(stack.used)  # the table's last line names what ran, variants included
        audio = output.audio
        return Result(
            frames=output.frames,
            audio=None if audio is None else audio.waveform,
            sample_rate=None if audio is None else audio.sampling_rate,
            frame_rate=req.frame_rate,
            timings=timings,
            request=prepared.request,
            backends=dict(stack.used),
        )

    def _stack(
        self,
        ckset: CheckpointSet,
        step_cache: StepCacheSpec,
        timings: Timings | None,
        *,
        policy: dev.DevicePolicy | None = None,
        parallel: Parallel | None = None,
        build_missing: bool | None = None,
        backends: BackendChoice | None = None,
    ) -> ModelStack:
        """The stack a run drives. `policy`, `parallel`, `build_missing` or `backends` describe another layout or a
        dry run (ltx-run --check and ltx-prepare look up without a process group and build nothing):
        such a stack gets a finder and loader of its own, so the resident ones never see it."""
        s = self.settings
        shared = policy is None and parallel is None and build_missing is None and backends is None
        return ModelStack(
            ckset=ckset,
            policy=self._policy if policy is None else policy,
            backends=s.backends if backends is None else backends,
            artifacts=s.artifacts,
            fallback=s.fallback,
            build_missing=s.builds if build_missing is None else build_missing,
            ep=s.ep,
            soc=s.soc,
            log=self.log,
            step_cache=step_cache,
            timings=timings,
            dit_layout=s.dit_layout,
            streaming_prefetch=s.streaming_prefetch_count,
            max_device_memory_gb=s.max_device_memory,
            offload=s.offload,
            parallel=self._parallel if parallel is None else parallel,
            quantization=s.quantization,
            quantization_skip=s.quantization_skip,
            variant=s.variant_spec,
            finder=self._finder if shared else None,
            loader=self._loader if shared else None,
            prepare_hint=self.prepare_hint,
        )

    def close(self) -> None:
        """Drop everything this engine holds; a closed engine refuses new calls."""
        with self._lock:
            self._closed = True
            if self._loader is not None:
                self._loader.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _guidance_dict(params) -> dict:
    from ltx_ascend.engine.request import GUIDANCE_KEYS

    return {key: getattr(params, name) for key, (_, name) in GUIDANCE_KEYS.items()}


def _step_hook(prepared: Prepared, progress, cancelled) -> Callable[[str, int, int], None] | None:
    """The per-step callback: report Progress, then raise Cancelled if the caller asks to stop."""
    if progress is None and cancelled is None:
        return None
    steps = prepared.internal.num_inference_steps
    total = sum(stage.steps(steps) for stage in prepared.spec.stages) or 1
    done = [0]

    def hook(stage: str, step: int, stage_total: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(Progress(stage, step, stage_total, min(1.0, done[0] / total)))
        if cancelled is not None and cancelled():
            raise Cancelled(f"cancelled after {stage} step {step}/{stage_total}")

    return hook


def decode_profile(spec: PipelineSpec, args: argparse.Namespace, req: Request):
    """The shape profile the pipeline decodes at (ic_lora --skip-stage-2 decodes the stage-1 latent)."""
    if getattr(args, "skip_stage_2", False):
        return req.profile(stage=1)
    return req.profile(stage=2) if spec.two_stage else req.profile()


def preflight(stack: ModelStack, spec: PipelineSpec, args: argparse.Namespace, req: Request) -> None:
    """Before Gemma or any model loads: the compiled artifacts a run needs and will not build are there
    (under --fallback none), and every backend suits the dtype. The DiT's profile depends on the guidance
    passes and conditioning tokens the pipeline appends, so the DiT is checked when stage 1 starts."""
    stack.check_available("text_connectors", req.profile())
    if spec.two_stage and not getattr(args, "skip_stage_2", False):
        stack.check_available("spatial_upsampler", req.profile(stage=1))
    profile = decode_profile(spec, args, req)
    stack.check_available("video_decoder", profile)
    if spec.decodes_audio:
        stack.check_available("audio_decoder", profile)
        stack.check_available("vocoder", profile)
