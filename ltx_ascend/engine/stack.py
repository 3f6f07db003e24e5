"""The models a pipeline drives, each behind the backend the user chose, with eager as fallback.

`ModelStack.dit(...)`, `.video_decoder(...)` etc. hand back callables with one contract per
component whatever runs underneath: a compiled graph (om / ort, located through its manifest) or
ltx-core eagerly on the device. When a compiled artifact is missing or stale, one warning line
says why and the component runs eager (`--fallback none` makes that an error). With
`build_missing`, missing artifacts are exported and compiled for ONNX Runtime first.

A ModelStack is one request's view: its step cache, its timings, what ran (`used`) and the device
moves it made. What outlives a request sits in the two load-time objects it is given (or makes):
`ArtifactFinder` (artifact_finder.py: finding and building compiled graphs) and `ModelLoader`
(loading.py: eager modules, quantization, sessions, kept where the memory policy puts them). A
resident engine hands the same two to every request; a stack built alone keeps nothing between
uses (each component is built for its stage and freed after it, as a one-shot run always did).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ltx_core.model.audio_vae import decode_audio
from ltx_core.model.upsampler import upsample_video
from ltx_core.model.video_vae import decode_video
from ltx_core.types import VIDEO_SCALE_FACTORS, Audio

from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, read_model_config
from ltx_ascend.engine.artifact_finder import FP8 as FP8
from ltx_ascend.engine.artifact_finder import QUANTIZATIONS as QUANTIZATIONS
from ltx_ascend.engine.artifact_finder import W8A8 as W8A8
from ltx_ascend.engine.artifact_finder import ArtifactFinder, BackendChoice
from ltx_ascend.engine.artifact_finder import check_quantization as check_quantization
from ltx_ascend.engine.dit_runner import DiTRunner, eager_dit_runner
from ltx_ascend.engine.graph_decoder import GraphTiledDecoder
from ltx_ascend.engine.loading import HOST_RESIDENT as HOST_RESIDENT
from ltx_ascend.engine.loading import ModelLoader, placement_for_offload
from ltx_ascend.engine.parallel import Parallel
from ltx_ascend.engine.parallel_decode import RankTiles
from ltx_ascend.engine.step_cache import StepCacheSpec
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import UserError
from ltx_ascend.export.dit_blocks import dit_shell
from ltx_ascend.export.video_vae import DECODER_TILING, noise_source
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.runtime.dit_memory import choose_prefetch, dit_memory
from ltx_ascend.runtime.session import Session
from ltx_ascend.runtime.weight_streaming import BlockFileSource, CheckpointBlockSource, StreamedBlockWeights
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.store import Resolution, Variant, weight_files

log = logging.getLogger(__name__)

OFFLOAD_CHOICES = ("none", "text-encoder", "all")
WHOLE_CANNOT_STREAM = (
    "a whole-DiT graph bakes its block weights in and cannot stream them: use --dit-layout blocks "
    "(ltx-export --component dit --dit-layout blocks), or drop --streaming-prefetch-count / --max-device-memory"
)
W8A8_CANNOT_STREAM_EAGER = (
    "--quantization {q} with block streaming runs on compiled block graphs only (the eager DiT would stream "
    "float checkpoint blocks): pass --backend dit=ort or om, or drop --streaming-prefetch-count / --max-device-memory"
)


@dataclass
class ModelStack:
    ckset: CheckpointSet
    policy: dev.DevicePolicy
    backends: BackendChoice
    artifacts: Path
    fallback: str = "eager"
    build_missing: bool = False
    ep: str = "cpu"
    soc: str | None = None
    log: Callable[[str], None] = print
    step_cache: StepCacheSpec = field(default_factory=StepCacheSpec)  # --step-cache (default off)
    timings: Timings | None = None  # where DiT runners count their block calls, per stage
    dit_layout: str = "auto"  # which compiled DiT form to use: auto, whole, blocks (ltx-export's --dit-layout)
    streaming_prefetch: int | None = None  # --streaming-prefetch-count: stream DiT blocks, N ahead
    max_device_memory_gb: float | None = None  # --max-device-memory: pick the prefetch count that fits
    offload: str = "none"  # --offload: none, text-encoder, all
    device_log: list[tuple[str, str]] = field(default_factory=list)  # (component, "in"/"out") device moves
    quantization: str = ""  # "", "w8a8" (every backend), "fp8-cast"/"fp8-scaled-mm" (CUDA eager)
    quantization_skip: tuple[str, ...] = ()
    used: dict[str, str] = field(default_factory=dict)  # component -> backend actually used
    folders: dict[str, Path] = field(default_factory=dict)  # component -> artifact folder in use
    parallel: Parallel | None = None  # multi-device run: how the DiT's passes and tokens are split
    variant: Variant | None = None  # --variant: exactly this graph variant (else each backend's preference)
    # The load-time objects (shared by a resident engine's requests; made here when not given).
    prepare_hint: str | None = None  # the ltx-prepare command that builds what this run misses (named in warnings)
    finder: ArtifactFinder | None = None
    loader: ModelLoader | None = None
    _moved_in: list[tuple[str, torch.nn.Module]] = field(default_factory=list)  # parked DiTs in for a stage

    def __post_init__(self) -> None:
        if self.finder is None:
            self.finder = ArtifactFinder(
                backends=self.backends,
                artifacts=self.artifacts,
                device=self.policy.device,
                dtype=self.policy.dtype,
                fallback=self.fallback,
                build_missing=self.build_missing,
                ep=self.ep,
                soc=self.soc,
                quantization=self.quantization,
                quantization_skip=self.quantization_skip,
                variant=self.variant,
                parallel=self.parallel,
                log=self.log,
                keep=False,  # a stack alone looks again each time, as it always did
            )
        if self.loader is None:
            places = placement_for_offload(self.offload)
            self.loader = ModelLoader(
                self.policy,
                place=lambda component: places.get(component, "rebuild"),
                quantization=self.quantization,
                quantization_skip=self.quantization_skip,
            )

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    # -- compiled graphs (artifact_finder.py) and modules (loading.py), for this request ---------

    def _blocks(self, component: str, profile: ShapeProfile) -> bool:
        """This request's step cache needs the DiT's block chain at this stage."""
        return component == "dit" and self.step_cache.applies_to(profile.stage)

    def _resolution(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"
    ) -> Resolution | None:
        resolution = self.finder.resolution(component, ckset, profile, layout, blocks=self._blocks(component, profile))
        return self._hinted(resolution)

    def _hinted(self, resolution: Resolution | None) -> Resolution | None:
        """A miss names the ltx-prepare command that builds it (when the run knows its command line)."""
        if resolution is not None and not resolution.ok and self.prepare_hint:
            reason = f"{resolution.reason}; to build it: {self.prepare_hint}"
            resolution = dataclasses.replace(resolution, reason=reason)
        return resolution

    def build_variant(self, component: str, profile: ShapeProfile, layout: str = "auto") -> Variant:
        """The variant built for a missing artifact (`build_missing`, ltx-prepare)."""
        blocks = self._blocks(component, profile)
        return self.finder.build_variant(component, self.backends.of(component), layout, blocks=blocks)

    def check_available(self, component: str, profile: ShapeProfile) -> None:
        """Under `--fallback none`, refuse now (before any model loads) a compiled component that is not
        there and will not be built; a backend/dtype mismatch is refused whatever the fallback."""
        self.finder.check_available(component, self.ckset, profile)

    def producer(self, component: str, profile: ShapeProfile) -> str:
        """What will compute `component` at `profile` (the prompt cache's key part)."""
        return self.finder.producer(component, self.ckset, profile)

    def _sessions(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"
    ) -> dict[str, Session] | None:
        """The component's compiled sessions, or None to run it eager (`open_component`'s one rule)."""
        resolution = self._resolution(component, ckset, profile, layout)
        sessions = None
        if resolution is not None:
            # ORT takes torch's thread count (OMP_NUM_THREADS / torch.set_num_threads), not every core: under
            # torchrun each rank keeps to its share of the host, and eager and compiled runs share one setting.
            sessions = self.loader.open(
                component,
                resolution,
                # Every rank on its own card: om opens on the rank's NPU, ORT's CUDA provider on the rank's GPU.
                lambda: open_component(
                    resolution,
                    fallback=self.fallback,
                    device=self.device,
                    ep=self.ep,
                    threads=torch.get_num_threads(),
                    device_id=dev.accelerator_index(self.device),
                ),
            )
        if sessions is None:
            self.used[component] = "eager"
            return None
        # The variant that runs, for the backends line and the timing table.
        self.used[component] = f"{resolution.backend} ({resolution.variant})"
        self.folders[component] = resolution.folder
        return sessions

    def _offloaded(self, component: str) -> bool:
        return self.loader.parked(component)

    def _load_dit(self, ckset: CheckpointSet) -> torch.nn.Module:
        """The eager DiT, quantized as asked (loading.ModelLoader.load_dit)."""
        return self.loader.load_dit(ckset, self.used)

    def _load(self, component: str, ckset: CheckpointSet, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """On the device; a parked module (memory policy "host", --offload all) is held in host memory
        and `on_device` brings it to the device only for its own calls."""
        return self.loader.load(component, ckset, dtype)

    def prompt_hidden_states(self) -> Callable[[list[str]], dict] | None:
        """Gemma for `PromptEncoder` when the loader keeps it (placement device or host): built once,
        on the device for the prompts of a cache miss. None: PromptEncoder builds and frees it."""
        if not self.loader.keeps("text_encoder"):
            return None

        def run(prompts: list[str]) -> dict:
            encoder = self._load("text_encoder", self.ckset)
            with self.on_device(("text_encoder", encoder)), torch.inference_mode():
                return {p: encoder.encode(p) for p in prompts}

        return run

    def on_device(self, *modules: tuple[str, torch.nn.Module | None]) -> contextlib.AbstractContextManager:
        """The body runs with these (name, module) on the device; parked ones go back to host memory
        afterwards (each move is logged in this request's `device_log`)."""
        return self.loader.on_device(*modules, log=self.device_log)

    # -- components ----------------------------------------------------------------------------

    def dit_lookup(self, profile: ShapeProfile, loras: tuple[LoraSpec, ...] = ()) -> tuple:
        """Where a stage's DiT is looked up: (checkpoint set with the stage's LoRAs, config, step cache,
        this rank's profile, prefetch count, layout). `dit` opens it; ltx-prepare and --check list it."""
        ckset = self.ckset.with_loras((*self.ckset.loras, *loras))
        config = read_model_config(ckset.checkpoint)
        cache = self.step_cache.for_stage(profile.stage, config["transformer"]["num_layers"])
        parallel = self.parallel
        if parallel is not None:  # pass parallel: this rank's graph holds its share of a step's passes
            profile = dataclasses.replace(profile, batch=parallel.chunk(profile.batch))
        prefetch = self._prefetch(config, profile)
        # Streaming needs the block chain: a compiled whole-DiT graph has its block weights baked in.
        layout = "blocks" if prefetch is not None and self.dit_layout == "auto" else self.dit_layout
        if prefetch is not None and layout == "whole":
            raise UserError(WHOLE_CANNOT_STREAM)
        # Compiled W8A8 streams its quantized block files; the eager DiT would stream float checkpoint blocks.
        if prefetch is not None and self.quantization and self.backends.of("dit") == "eager":
            raise UserError(W8A8_CANNOT_STREAM_EAGER.format(q=self.quantization))
        if parallel is not None and parallel.ulysses > 1 and self.backends.of("dit") != "eager":
            # Sequence parallel runs the attention cores between all-to-alls: the block graph split there
            # (ltx-run refuses --dit-layout whole with ulysses before any load).
            layout = "split"
        return ckset, config, cache, profile, prefetch, layout

    def dit(self, profile: ShapeProfile, loras: tuple[LoraSpec, ...] = ()) -> DiTRunner:
        ckset, config, cache, profile, prefetch, layout = self.dit_lookup(profile, loras)
        parallel = self.parallel
        # A runner kept whole (DiT on the device, every block resident) serves the next request as is.
        key = (ckset, profile, layout, self._blocks("dit", profile))
        kept = self.loader.runners.get(key) if prefetch is None and self.loader.place("dit") == "device" else None
        if kept is not None:
            runner, self.used["dit"] = kept
        else:
            runner = self._build_dit(ckset, config, profile, layout, prefetch, parallel)
            if prefetch is None and self.loader.place("dit") == "device":
                self.loader.runners[key] = (runner, self.used["dit"])
        runner.use_step_cache(cache)
        if self.timings is not None:
            runner.block_counts = self.timings.dit_counts()
        return runner

    def _build_dit(
        self, ckset: CheckpointSet, config: dict, profile: ShapeProfile, layout: str, prefetch, parallel
    ) -> DiTRunner:
        sessions = self._sessions("dit", ckset, profile, layout)  # the block chain if `cache`
        if sessions is not None and layout == "split":
            used = self.used["dit"].removesuffix(")")
            self.used["dit"] = f"{used}, split at attention, 1/{parallel.ulysses} of the tokens)"
        if sessions is None:
            # One pass per call, exactly as ltx-pipelines calls its transformer.
            if prefetch is not None and self.quantization:  # a compiled DiT that fell back to eager
                raise UserError(W8A8_CANNOT_STREAM_EAGER.format(q=self.quantization))
            if prefetch is None:
                model = self._load_dit(ckset)
                if self.loader.parked("dit"):  # parked in host memory: on the device for this stage only
                    model.to(self.device)
                    self.device_log.append(("dit", "in"))
                    self._moved_in.append(("dit", model))
                return eager_dit_runner(model, config, self.device, self.dtype, parallel=parallel)
            shell, _ = dit_shell(ckset, config, self.dtype, with_block=False)
            source = CheckpointBlockSource(ckset, config["transformer"]["num_layers"], self.dtype)
            weights = StreamedBlockWeights(source, self.device, prefetch)
            return eager_dit_runner(
                shell.to(self.device), config, self.device, self.dtype, block_weights=weights, parallel=parallel
            )
        if "dit" in sessions and prefetch is not None:
            raise UserError(f"dit: {self.folders['dit']}: {WHOLE_CANNOT_STREAM}")
        files = weight_files(self.folders["dit"])  # content-addressed: <artifacts>/weights/<key>/
        weights = files if prefetch is None else StreamedBlockWeights(BlockFileSource(files), self.device, prefetch)
        return DiTRunner(
            config, sessions, block_weights=weights, device=self.device, dtype=self.dtype, parallel=parallel
        )

    def _prefetch(self, config: dict, profile: ShapeProfile) -> int | None:
        """The block-streaming prefetch count: as given, or the smallest that fits --max-device-memory
        by the memory model ltx-plan uses; None keeps every block resident."""
        if self.max_device_memory_gb is None:
            return self.streaming_prefetch
        bytes_per = torch.finfo(self.dtype).bits // 8
        memory = dit_memory(config, profile, bytes_per, profile.batch)
        prefetch = choose_prefetch(memory, self.max_device_memory_gb * 1e9)
        chosen = "all blocks resident" if prefetch is None else f"--streaming-prefetch-count {prefetch}"
        self.log(
            f"--max-device-memory {self.max_device_memory_gb:g} GB: {chosen} (DiT peak ~"
            f"{memory.peak_bytes(prefetch) / 1e9:.3g} GB; all resident ~{memory.peak_bytes(None) / 1e9:.3g} GB)"
        )
        return prefetch

    def dit_attention_masked(self, loras: tuple[LoraSpec, ...] = (), *, reason: str, stage: int | None = 1) -> Callable:
        """The DiT for a video state that carries a self-attention mask (`LatentState.attention_mask`,
        e.g. an IC-LoRA attention mask), which no compiled DiT graph takes: ltx-core's transformer runs
        eager, called as ltx-pipelines calls it (X0Model, one pass per call, the Modality as given).
        One warning line when a compiled DiT was asked for (`--fallback none`: an error instead).
        The DiTRunner contract: (video, audio, passes) -> [(video X0, audio X0)] per pass."""
        from dataclasses import replace

        from ltx_core.guidance.perturbations import BatchedPerturbationConfig
        from ltx_core.model.transformer.model import X0Model

        if self.step_cache.applies_to(stage):
            raise UserError(
                f"--step-cache {self.step_cache}: stage {stage or 1} runs ltx-core's transformer whole ({reason}), "
                "which has no block chain to cache: drop --step-cache or leave this stage out of stages="
            )
        if self.backends.of("dit") != "eager":
            if self.fallback == "none":
                raise UserError(f"dit: {reason}, which no compiled DiT graph takes (drop --fallback none to run eager)")
            log.warning("warning: dit: %s, which no compiled DiT graph takes; falling back to eager", reason)
        if self.streaming_prefetch is not None or self.max_device_memory_gb is not None:
            log.warning("warning: dit: %s: ltx-core's transformer runs whole, every block resident", reason)
        self.used["dit"] = "eager"
        dit = self._load_dit(self.ckset.with_loras((*self.ckset.loras, *loras)))
        if self.loader.parked("dit"):  # parked in host memory: on the device for this stage only
            dit.to(self.device)
            self.device_log.append(("dit", "in"))
            self._moved_in.append(("dit", dit))
        model = X0Model(dit).eval()

        def run(video, audio, passes) -> list[tuple[torch.Tensor, torch.Tensor]]:
            with torch.inference_mode():
                return [
                    model(
                        replace(video, context=p.video_context),
                        replace(audio, context=p.audio_context),
                        BatchedPerturbationConfig([p.perturbations]),
                    )
                    for p in passes
                ]

        return run

    def text_connectors(self, profile: ShapeProfile) -> Callable[[tuple, torch.Tensor], tuple]:
        """(Gemma hidden states, attention mask) -> (video context, audio context)."""
        sessions = self._sessions("text_connectors", self.ckset, profile)
        if sessions is None:
            processor = self._load("text_connectors", self.ckset)

            def eager(hidden: tuple, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                with torch.inference_mode():
                    out = processor.process_hidden_states(hidden, mask)
                return out.video_encoding, out.audio_encoding

            return eager
        session = sessions["text_connectors"]

        def compiled(hidden: tuple, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feeds = {"hidden_states": torch.stack(hidden, dim=-1).to(self.dtype), "attention_mask": mask.to(self.dtype)}
            out = session.run(feeds)
            return out["video_context"], out["audio_context"]

        return compiled

    def video_encoder(self, profile: ShapeProfile) -> Callable[[torch.Tensor], torch.Tensor]:
        sessions = self._sessions("video_encoder", self.ckset, profile)
        if sessions is None:
            encoder = self._load("video_encoder", self.ckset)

            def eager(video: torch.Tensor) -> torch.Tensor:
                with self.on_device(("video_encoder", encoder)):
                    return _no_grad(encoder)(video.to(self.device, self.dtype))

            return eager
        by_frames = {s.inputs[0].shape[2]: s for s in sessions.values()}

        def compiled(video: torch.Tensor) -> torch.Tensor:
            session = by_frames.get(video.shape[2])
            if session is None:
                raise UserError(f"no compiled video_encoder for {video.shape[2]} frames: re-export at this shape")
            return session.run({"video": video.to(self.device, self.dtype)})["latent"]

        return compiled

    def upsampler(self, profile: ShapeProfile) -> Callable[[torch.Tensor], torch.Tensor]:
        """Stage-1 latent -> stage-2 latent (ltx-core's upsample_video)."""
        sessions = self._sessions("spatial_upsampler", self.ckset, profile)
        if sessions is None:
            upsampler = self._load("spatial_upsampler", self.ckset)
            encoder = self._load("video_encoder", self.ckset)

            def eager(latent: torch.Tensor) -> torch.Tensor:
                with self.on_device(("spatial_upsampler", upsampler), ("video_encoder", encoder)):
                    return _no_grad(upsample_video)(latent=latent, video_encoder=encoder, upsampler=upsampler)

            return eager
        session = sessions["spatial_upsampler"]
        return lambda latent: session.run({"latent": latent.to(self.device, self.dtype)})["latent_x2"]

    def video_decoder(
        self, profile: ShapeProfile, ranks: int = 1
    ) -> Callable[[torch.Tensor, torch.Generator | None], Iterator]:
        """Latent -> uint8 frame chunks [f, h, w, 3], as ltx-core's decode_video yields them. With
        `ranks` > 1 (`parallel_decode.decoding_ranks`) this rank decodes its share of the tiles and
        only rank 0 yields frames."""
        sessions = self._sessions("video_decoder", self.ckset, profile)
        if sessions is None:
            decoder = self._load("video_decoder", self.ckset)
            placed = lambda: self.on_device(("video_decoder", decoder))  # noqa: E731
            noise = noise_source(decoder)
        else:
            decoder = GraphTiledDecoder(sessions, VIDEO_SCALE_FACTORS, self.device, self.dtype)
            placed, noise = contextlib.nullcontext, None  # the graphs draw no noise (checked at export)
        rank = self.parallel.world.rank if ranks > 1 else 0
        if ranks > 1 and noise is not None:
            if rank == 0:
                log.warning("warning: video_decoder with %s draws noise tile by tile: rank 0 decodes alone", noise)
            ranks = 1
        if ranks > 1:
            decoder = RankTiles(decoder, rank, ranks)
        elif rank != 0:
            decoder = None

        def run(latent: torch.Tensor, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
            if decoder is None:
                return
            with placed():
                yield from _no_grad_iter(decode_video(latent, decoder, DECODER_TILING, generator))

        return run

    def audio(self, profile: ShapeProfile) -> Callable[[torch.Tensor], Audio]:
        """Audio latent -> waveform (audio decoder, then the float32 vocoder)."""
        dec_sessions = self._sessions("audio_decoder", self.ckset, profile)
        voc_sessions = self._sessions("vocoder", self.ckset, profile)
        decoder = self._load("audio_decoder", self.ckset) if dec_sessions is None else None
        vocoder = self._load("vocoder", self.ckset, self.policy.vocoder_dtype) if voc_sessions is None else None
        rate = output_sample_rate(read_model_config(self.ckset.checkpoint))
        parked = self._offloaded

        def run(latent: torch.Tensor) -> Audio:
            with torch.inference_mode():
                if decoder is not None and vocoder is not None and not (parked("audio_decoder") or parked("vocoder")):
                    return decode_audio(latent, decoder, vocoder)
                # One module on the device at a time with --offload all: the decoder, then the vocoder.
                with self.on_device(("audio_decoder", decoder)):
                    mel = (
                        decoder(latent)
                        if decoder is not None
                        else dec_sessions["audio_decoder"].run({"audio_latent": latent.to(self.dtype)})["mel"]
                    )
                with self.policy.vocoder_autocast(), self.on_device(("vocoder", vocoder)):
                    if vocoder is not None:
                        wave = vocoder(mel.to(self.policy.vocoder_dtype))
                        return Audio(waveform=wave.squeeze(0).float(), sampling_rate=vocoder.output_sampling_rate)
                    wave = voc_sessions["vocoder"].run({"mel": mel.float()})["waveform"]
                return Audio(waveform=wave.squeeze(0).float(), sampling_rate=rate)

        return run

    def audio_encoder(self, profile: ShapeProfile) -> Callable[[Audio], torch.Tensor]:
        """Waveform [B, 2, samples] -> audio latent, as ltx-core's `encode_audio`; always eager.

        The log-mel spectrogram (STFT: complex ops) runs on `policy.complex_device` (the CPU on an NPU)
        in the waveform's dtype, as ltx-core computes it; the encoder then runs on the device. There is
        no compiled audio-encoder graph, so `profile` only keeps the components' common signature."""
        from ltx_core.model.audio_vae import AudioProcessor

        del profile
        if self.backends.of("audio_encoder") != "eager" and "audio_encoder" in self.backends.per_component:
            log.warning("warning: audio_encoder: runs eager only (its mel spectrogram is a complex op)")
        self.used["audio_encoder"] = "eager"
        encoder = self._load("audio_encoder", self.ckset)
        processor = AudioProcessor(
            target_sample_rate=encoder.sample_rate,
            mel_bins=encoder.mel_bins,
            mel_hop_length=encoder.mel_hop_length,
            n_fft=encoder.n_fft,
        ).to(device=self.policy.complex_device)

        def run(audio: Audio) -> torch.Tensor:
            with torch.inference_mode():
                wave = audio.waveform.to(self.policy.complex_device)
                mel = processor.waveform_to_mel(Audio(waveform=wave, sampling_rate=audio.sampling_rate))
                with self.on_device(("audio_encoder", encoder)):
                    return encoder(mel.to(device=self.device, dtype=self.dtype))

        return run

    def free(self) -> None:
        """Between stages: a DiT parked in host memory goes back there; drop what the last stage held
        (the caller deletes its references first)."""
        for name, module in self._moved_in:
            module.to("cpu")
            self.device_log.append((name, "out"))
        self._moved_in.clear()
        gc.collect()
        dev.empty_cache(self.device)

    def describe_backends(self) -> str:
        return ", ".join(f"{c}={b}" for c, b in self.used.items())


def output_sample_rate(config: dict) -> int:
    """48 kHz for LTX-2.3's vocoder with bandwidth extension; the plain vocoder's rate otherwise."""
    vocoder = config.get("vocoder", {})
    if "bwe" in vocoder:
        return int(vocoder["bwe"]["output_sampling_rate"])
    return int(vocoder.get("output_sampling_rate", 24000))


def _no_grad(fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapped


def _no_grad_iter(it: Iterator) -> Iterator:
    with torch.inference_mode():
        yield from it
