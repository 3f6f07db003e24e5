"""Every compiled artifact a run looks up, found by running the pipeline itself with stand-in models.

A pipeline's `run` decides which components it opens, at which shapes and with which LoRAs: the
stage declarations (`STAGES`: the shape, the guidance passes that set the DiT's batch), the
conditioning items it builds (keyframe and reference tokens the DiT appends), the upsampler and the
decoders. `lookups` runs that same `run` on a `LookupStack`: a `ModelStack` whose component methods
record what the real ones would look up (through the same `_resolution`, `dit_lookup` and
`request_for`) and hand back zeros of the right shapes instead of loading anything. No model loads,
nothing is written, Gemma never runs; a run at a 22B shape takes a second or two of tensor arithmetic.

`ltx-run --check`, `--fallback none` (every check before Gemma loads) and `ltx-prepare` (what to
build) all read this list, so what is prepared is exactly what a run finds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from ltx_core.types import Audio, AudioLatentShape

from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec
from ltx_ascend.components import REGISTRY
from ltx_ascend.engine.context import Request, RunContext
from ltx_ascend.engine.stack import ModelStack
from ltx_ascend.engine.text import PromptEmbeddings
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import LATENT_CHANNELS, SPATIAL_SCALE, TEMPORAL_SCALE, ShapeProfile, shape_name
from ltx_ascend.store import PORTABLE, Resolution, Variant
from ltx_ascend.store import read_only as store_read_only


@dataclass(frozen=True)
class Lookup:
    """One component a run opens: where it looks, and what it found (None: it runs eager by choice)."""

    component: str
    profile: ShapeProfile  # the profile the lookup is made at (a DiT's: this rank's batch, its tokens)
    ckset: CheckpointSet  # with the stage's LoRAs fused (the DiT of stage 2: the distilled LoRA)
    backend: str
    layout: str = "auto"
    resolution: Resolution | None = None
    build: Variant | None = None  # the variant ltx-prepare builds when it is missing
    note: str = ""  # why it runs eager whatever is prepared (an attention mask, an eager-only component)

    @property
    def compiled(self) -> bool:
        return self.resolution is not None

    @property
    def ok(self) -> bool:
        return self.resolution is None or self.resolution.ok

    @property
    def shape(self) -> str:
        """The graph shape its artifact is keyed by (text connectors: tokens; audio: latent frames)."""
        if self.profile.latent_frames == 0:
            return "-"
        return shape_name(self.profile.graph_shape(REGISTRY[self.component].shape_fields))

    def describe(self) -> str:
        if not self.compiled:
            return f"{self.component} at {self.shape}: eager ({self.note or 'backend eager'})"
        assert self.resolution is not None
        found = self.resolution.variant or PORTABLE
        state = f"found ({found})" if self.resolution.ok else f"not found ({self.resolution.reason})"
        return f"{self.component} at {self.shape} on {self.backend}: {state}"


class _StubRunner:
    """The DiT runner's contract ((video, audio, passes) -> X0 per pass), computing nothing: X0 is the
    state itself (finite, with the noise's spread, so guidance rescaling and the finiteness checks hold)."""

    block_counts = None

    def __call__(self, video, audio, passes) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(video.latent.clone(), audio.latent.clone()) for _ in passes]

    def use_step_cache(self, cache) -> None:
        del cache


class _StubPrompts:
    """Prompt embeddings of zeros; records the text connectors' lookup the real encoder would make."""

    def __init__(self, stack: LookupStack, profile: ShapeProfile) -> None:
        self.stack, self.profile = stack, profile

    def encode(self, prompts) -> list[PromptEmbeddings]:
        self.stack.text_connectors(self.profile)
        zeros = torch.zeros(1, 1, 1, dtype=self.stack.dtype)
        return [PromptEmbeddings(video=zeros, audio=zeros) for _ in prompts]


@dataclass
class LookupStack(ModelStack):
    """A ModelStack that records its lookups and returns zeros: nothing loads, nothing is built."""

    lookups: list[Lookup] = field(default_factory=list)

    @classmethod
    def like(cls, stack: ModelStack) -> LookupStack:
        """The same settings as `stack` (backends, layout, parallel, variant...), building nothing."""
        fields = {f.name: getattr(stack, f.name) for f in dataclasses.fields(ModelStack) if f.init}
        # Its own finder and loader (made in __post_init__): it never builds, and nothing it finds is kept.
        overrides = {"build_missing": False, "log": lambda _: None, "used": {}, "folders": {}}
        return cls(**{**fields, **overrides, "finder": None, "loader": None})

    def _resolution(self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"):
        """ModelStack's lookup without the ranks' build lock (nothing is built here, and nothing written)."""
        blocks = self._blocks(component, profile)
        return self._hinted(self.finder.resolve_or_build(component, ckset, profile, layout, blocks=blocks))

    def _look(self, component: str, profile: ShapeProfile, ckset: CheckpointSet | None = None, layout: str = "auto"):
        ckset = ckset or self.ckset
        backend = self.backends.of(component)
        resolution = self._resolution(component, ckset, profile, layout)
        build = None if resolution is None else self.build_variant(component, profile, layout)
        lookup = Lookup(component, profile, ckset, backend, layout, resolution, build)
        if lookup not in self.lookups:
            self.lookups.append(lookup)

    def _eager(self, component: str, profile: ShapeProfile, note: str) -> None:
        lookup = Lookup(component, profile, self.ckset, "eager", note=note)
        if lookup not in self.lookups:
            self.lookups.append(lookup)

    # -- the component methods a pipeline calls, recording instead of loading -------------------

    def text_connectors(self, profile: ShapeProfile) -> Callable:
        self._look("text_connectors", profile)
        return lambda hidden, mask: (torch.zeros(1), torch.zeros(1))

    def video_encoder(self, profile: ShapeProfile) -> Callable[[torch.Tensor], torch.Tensor]:
        self._look("video_encoder", profile)

        def encode(video: torch.Tensor) -> torch.Tensor:
            b, _, f, h, w = video.shape
            shape = (b, LATENT_CHANNELS, (f - 1) // TEMPORAL_SCALE + 1, h // SPATIAL_SCALE, w // SPATIAL_SCALE)
            return torch.zeros(shape, device=self.device, dtype=self.dtype)

        return encode

    def upsampler(self, profile: ShapeProfile) -> Callable[[torch.Tensor], torch.Tensor]:
        self._look("spatial_upsampler", profile)

        def upsample(latent: torch.Tensor) -> torch.Tensor:
            b, c, f, h, w = latent.shape
            return torch.zeros((b, c, f, 2 * h, 2 * w), device=latent.device, dtype=latent.dtype)

        return upsample

    def video_decoder(self, profile: ShapeProfile, ranks: int = 1) -> Callable[..., Iterator[torch.Tensor]]:
        self._look("video_decoder", profile)

        def decode(latent: torch.Tensor, generator) -> Iterator[torch.Tensor]:
            yield torch.zeros(1, 8, 8, 3, dtype=torch.uint8)

        return decode

    def audio(self, profile: ShapeProfile) -> Callable[[torch.Tensor], Audio]:
        self._look("audio_decoder", profile)
        self._look("vocoder", profile)
        return lambda latent: Audio(waveform=torch.zeros(2, 8), sampling_rate=48000)

    def audio_encoder(self, profile: ShapeProfile) -> Callable[[Audio], torch.Tensor]:
        self._eager("audio_encoder", profile, "its mel spectrogram is a complex op: always eager")

        def encode(audio: Audio) -> torch.Tensor:
            seconds = audio.waveform.shape[-1] / audio.sampling_rate
            shape = AudioLatentShape.from_duration(batch=1, duration=seconds)
            return torch.zeros(1, shape.channels, shape.frames, shape.mel_bins, device=self.device)

        return encode

    def dit(self, profile: ShapeProfile, loras: tuple[LoraSpec, ...] = ()) -> _StubRunner:
        ckset, _, _, profile, _, layout = self.dit_lookup(profile, loras)
        parallel = self.parallel
        if parallel is not None and parallel.ulysses > 1 and self.quantization and self.backends.of("dit") != "eager":
            self._eager("dit", profile, f"--parallel with --quantization {self.quantization}: no split W8A8 graphs")
        else:
            self._look("dit", profile, ckset, layout)
        return _StubRunner()

    def dit_attention_masked(self, loras: tuple[LoraSpec, ...] = (), *, reason: str, stage: int | None = 1):
        self._eager("dit", ShapeProfile(0, 0, 0, 1, stage, 0, 0, 0, 0, 0, 0, 0, 0, 0), reason)
        runner = _StubRunner()
        return lambda video, audio, passes: runner(video, audio, passes)

    def producer(self, component: str, profile: ShapeProfile) -> str:
        return "eager"

    def free(self) -> None:
        pass


def lookups(module, request: Request, stack: ModelStack, *, write_cache: bool = False) -> list[Lookup]:
    """Every component lookup `module.run` makes for `request` on a stack set up like `stack`, in the
    order the run makes them. The pipeline's own progress bars and prints are kept off the console.
    Every file found is checked as a run checks it (sizes, sha256); the hash cache of those checks is
    written only with `write_cache` (ltx-prepare), so `ltx-run --check` writes nothing."""
    recorder = LookupStack.like(stack)
    context = RunContext(dataclasses.replace(request), recorder, _StubPrompts(recorder, request.profile()), Timings())
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1], torch.inference_mode(), contextlib.nullcontext() if write_cache else store_read_only():
        module.run(context)
    return recorder.lookups


def misses(found: list[Lookup]) -> list[Lookup]:
    return [lookup for lookup in found if not lookup.ok]


def check_lookups(run, request: Request, stack: ModelStack, *, check_only: bool = False) -> list[Lookup]:
    """Every lookup of this run (the DiT's included, at its stages' passes and tokens), made before any
    model loads; a miss is refused here (under --fallback none, or `check_only`), naming the ltx-prepare
    command when the stack knows it. `run` is the pipeline (its module or its PipelineSpec)."""
    found = lookups(run, request, stack)
    missing = misses(found)
    if missing and (stack.fallback == "none" or check_only):
        first = missing[0]
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{first.component}: at {first.shape}: {first.resolution.reason}{more}")
    return found
