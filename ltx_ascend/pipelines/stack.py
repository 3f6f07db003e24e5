"""The models a pipeline drives, each behind the backend the user chose, with eager as fallback.

`ModelStack.dit(...)`, `.video_decoder(...)` etc. hand back callables with one contract per
component whatever runs underneath: a compiled graph (om / ort, located through its manifest) or
ltx-core eagerly on the device. When a compiled artifact is missing or stale, one warning line
says why and the component runs eager (`--fallback none` makes that an error). With
`build_missing`, missing artifacts are exported and compiled for ONNX Runtime first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ltx_core.model.audio_vae import decode_audio
from ltx_core.model.upsampler import upsample_video
from ltx_core.model.video_vae import decode_video
from ltx_core.types import VIDEO_SCALE_FACTORS, Audio

from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec, load_component, read_model_config
from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.components import COMPONENTS, REGISTRY, request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export import dit_blocks
from ltx_ascend.export.components import ExportOptions
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.video_vae import DECODER_TILING, noise_source
from ltx_ascend.pipelines.dit_runner import DiTRunner, eager_dit_runner
from ltx_ascend.pipelines.graph_decoder import GraphTiledDecoder
from ltx_ascend.pipelines.parallel import Parallel
from ltx_ascend.pipelines.parallel_decode import RankTiles
from ltx_ascend.pipelines.step_cache import StepCacheSpec
from ltx_ascend.pipelines.timing import Timings
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import distributed
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.runtime.dit_memory import choose_prefetch, dit_memory
from ltx_ascend.runtime.session import Session
from ltx_ascend.runtime.weight_streaming import BlockFileSource, CheckpointBlockSource, StreamedBlockWeights
from ltx_ascend.shapes import ShapeProfile
from ltx_ascend.store import Manifest, Resolution, Variant, resolve, resolve_first

log = logging.getLogger(__name__)

COMPILED = ("om", "ort", "onnx")
OFFLOAD_CHOICES = ("none", "text-encoder", "all")
# --offload all: held in host memory for the run, on the device only while each one runs.
HOST_RESIDENT = ("video_encoder", "spatial_upsampler", "video_decoder", "audio_decoder", "vocoder", "audio_encoder")
WHOLE_CANNOT_STREAM = (
    "a whole-DiT graph bakes its block weights in and cannot stream them: use --dit-layout blocks "
    "(ltx-export --component dit --dit-layout blocks), or drop --streaming-prefetch-count / --max-device-memory"
)
W8A8 = "w8a8"
FP8 = ("fp8-cast", "fp8-scaled-mm")  # ltx-pipelines' names: ltx-core's FP8 policies (CUDA; scaled-mm needs TRT-LLM)
QUANTIZATIONS = ("", W8A8, *FP8)


W8A8_CANNOT_STREAM_EAGER = (
    "--quantization {q} with block streaming runs on compiled block graphs only (the eager DiT would stream "
    "float checkpoint blocks): pass --backend dit=ort or om, or drop --streaming-prefetch-count / --max-device-memory"
)


def check_quantization(quantization: str, backend: str, device: torch.device) -> None:
    """One line for a quantization this backend/device cannot run."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization {quantization}: choose w8a8 (any backend) or fp8-cast|fp8-scaled-mm (CUDA)")
    if quantization in FP8 and (backend != "eager" or device.type != "cuda"):
        raise UserError(
            f"--quantization {quantization} is ltx-core's FP8 path for CUDA eager only (here: --backend {backend} on "
            f"{device.type}); use --quantization w8a8, which runs on every backend"
        )


@dataclass
class BackendChoice:
    """`--backend ort` or per component `--backend dit=ort,video_decoder=eager`."""

    default: str = "eager"
    per_component: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        choice = cls()
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, backend = part.rpartition("=")
            if backend not in (*COMPILED, "eager"):
                raise UserError(f"--backend {text}: backend {backend!r} is not one of om, ort, onnx, eager")
            if name and name not in COMPONENTS:
                raise UserError(f"--backend {text}: no component {name!r}; components: {', '.join(COMPONENTS)}")
            if name:
                choice.per_component[name] = backend
            else:
                choice.default = backend
        return choice

    def of(self, component: str) -> str:
        return self.per_component.get(component, self.default)


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
    _host: dict = field(default_factory=dict)  # (component, dtype) -> module kept in host memory
    quantization: str = ""  # "", "w8a8" (every backend), "fp8-cast"/"fp8-scaled-mm" (CUDA eager)
    quantization_skip: tuple[str, ...] = ()
    used: dict[str, str] = field(default_factory=dict)  # component -> backend actually used
    folders: dict[str, Path] = field(default_factory=dict)  # component -> artifact folder in use
    parallel: Parallel | None = None  # multi-device run: how the DiT's passes and tokens are split
    variant: Variant | None = None  # --variant: exactly this graph variant (else each backend's preference)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    # -- locating compiled graphs --------------------------------------------------------------

    def _candidates(self, component: str, backend: str, layout: str) -> list[Variant]:
        """The variants that can serve `backend`, preferred first. `--variant` names exactly one. Otherwise:
        ORT takes its fused variant, then the portable one; om takes Ascend's fused variant (`npu-ops`),
        then the portable one; W8A8 asks for a quantized variant only (on om: Ascend's quant ops)."""
        quant = {"quantization": self.quantization, "quantization_skip": self.quantization_skip}
        if self.quantization != W8A8:
            quant = {}
        # The split layout (sequence parallel) is cut from each variant's block graph, fused and W8A8 ones too.
        split = {"ulysses": self.parallel.ulysses} if layout == "split" and self.parallel is not None else {}
        if self.variant is not None:
            chosen = dataclasses.replace(self.variant, dit_layout=layout, **split, **quant)
            return [chosen.for_component(component)]
        if backend in ("ort", "onnx"):  # both run on ONNX Runtime
            preference = [{"ort_fused": True}, {}]
        elif backend == "om":  # W8A8 only as Ascend's quant ops
            preference = [{"npu_ops": True}] if quant else [{"npu_ops": True}, {}]
        else:
            preference = [{}]
        preferred = [Variant(dit_layout=layout, **split, **quant, **fields) for fields in preference]
        unique = []  # the DiT-only fields drop out for the other components: npu-ops and portable remain
        for variant in (v.for_component(component) for v in preferred):
            if variant not in unique:
                unique.append(variant)
        return unique

    def _find(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, dtype: torch.dtype, variants: list[Variant]
    ) -> Resolution:
        """The first variant found, else the preferred one's failed resolution (its reason is reported)."""
        requests = [request_for(component, ckset, profile, dtype, v) for v in variants]
        return resolve_first(requests, self.artifacts, self.backends.of(component), ep=self.ep, soc=self.soc)

    def _resolution(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"
    ) -> Resolution | None:
        """`_resolve_or_build`, one rank of a multi-device run at a time (one builds, the rest find it)."""
        world = self.parallel.world if self.parallel is not None else None
        with distributed.host_lock(self.artifacts / ".build.lock", world):
            return self._resolve_or_build(component, ckset, profile, layout)

    def _resolve_or_build(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"
    ) -> Resolution | None:
        """Where the component's compiled graphs are (built first with `build_missing`), or None for eager.
        A failed resolution comes back as is (its reason says why); nothing is printed here.
        The DiT of a stage under a step cache must be a block chain: a whole-graph artifact will not do,
        so the block-chain export (`ltx-export --dit-layout blocks`) is looked up, or built."""
        backend = self.backends.of(component)
        if component == "dit":
            check_quantization(self.quantization, backend, self.device)
        if backend == "eager":
            return None
        graph_dtype = REGISTRY[component].graph_dtype_for(self.dtype)
        if backend in ("ort", "onnx") and self.ep == "cpu" and graph_dtype == torch.bfloat16:
            raise UserError(
                f"{component}: --backend {backend} on the CPU provider needs float32 graphs (ONNX Runtime's CPU "
                "provider lacks bfloat16 kernels): pass --dtype float32, or --backend eager for bfloat16"
            )
        variants = self._candidates(component, backend, layout)
        resolution = self._find(component, ckset, profile, graph_dtype, variants)
        if component == "dit" and self.step_cache.applies_to(profile.stage):
            if not resolution.ok or "dit" in resolution.graphs:
                # a split chain (sequence parallel) is a block chain already
                variants = [
                    v if v.dit_layout == "split" else dataclasses.replace(v, dit_layout="blocks") for v in variants
                ]
                resolution = self._find(component, ckset, profile, graph_dtype, variants)
            if not resolution.ok:
                why = f"the step cache needs the block-chain DiT (ltx-export --dit-layout blocks): {resolution.reason}"
                resolution = dataclasses.replace(resolution, reason=why)
        if not resolution.ok and self.build_missing and backend in ("ort", "onnx"):
            # Build what plain runs always built (the portable graph) unless a quantized one was asked for.
            variant = variants[0] if self.quantization == W8A8 or self.variant is not None else variants[-1]
            request = request_for(component, ckset, profile, graph_dtype, variant)
            start = time.perf_counter()
            self.log(f"building {component} ({variant.label}) for {backend} at {profile.key} ...")
            options = ExportOptions(**dataclasses.asdict(variant))
            result = export_component(
                component, ckset, profile, options=options, out=self.artifacts, dtype=graph_dtype
            )
            if backend == "ort":
                compile_ort(result.folder, self.ep, force=False)
            self.log(f"built {component} in {time.perf_counter() - start:.1f} s")
            resolution = resolve(request, self.artifacts, backend, ep=self.ep, soc=self.soc)
        return resolution

    def check_available(self, component: str, profile: ShapeProfile) -> None:
        """Under `--fallback none`, refuse now (before any model loads) a compiled component that is not
        there and will not be built; a backend/dtype mismatch is refused whatever the fallback."""
        backend = self.backends.of(component)
        if backend == "eager":
            return
        if self.build_missing and backend in ("ort", "onnx"):
            if self.ep == "cpu" and component != "vocoder" and self.dtype == torch.bfloat16:
                self._resolution(component, self.ckset, profile)  # raises the one-line dtype error
            return
        resolution = self._resolution(component, self.ckset, profile)
        if resolution is not None and not resolution.ok and self.fallback == "none":
            raise UserError(f"{component}: {resolution.reason}")

    def producer(self, component: str, profile: ShapeProfile) -> str:
        """What will compute `component` at `profile`: "eager", or the backend and the sha256 of the
        compiled files (so results cached from one backend or build are never served for another)."""
        resolution = self._resolution(component, self.ckset, profile)
        if resolution is None or not resolution.ok:
            return "eager"
        manifest = Manifest.read(resolution.compiled)
        digest = hashlib.sha256(json.dumps(sorted(manifest.files.items())).encode()).hexdigest()[:16]
        return f"{resolution.backend}:{manifest.key}:{digest}"

    def _sessions(
        self, component: str, ckset: CheckpointSet, profile: ShapeProfile, layout: str = "auto"
    ) -> dict[str, Session] | None:
        """The component's compiled sessions, or None to run it eager (`open_component`'s one rule)."""
        resolution = self._resolution(component, ckset, profile, layout)
        sessions = None
        if resolution is not None:
            # ORT takes torch's thread count (OMP_NUM_THREADS / torch.set_num_threads), not every core: under
            # torchrun each rank keeps to its share of the host, and eager and compiled runs share one setting.
            sessions = open_component(
                resolution, fallback=self.fallback, device=self.device, ep=self.ep, threads=torch.get_num_threads()
            )
        if sessions is None:
            self.used[component] = "eager"
            return None
        # The variant that runs, for the backends line and the timing table.
        self.used[component] = f"{resolution.backend} ({resolution.variant})"
        self.folders[component] = resolution.folder
        return sessions

    def _offloaded(self, component: str) -> bool:
        return self.offload == "all" and component in HOST_RESIDENT
    def _load_dit(self, ckset: CheckpointSet) -> torch.nn.Module:
        """The eager DiT, quantized as asked: W8A8 (export/quantize.py, LoRAs fused first) or ltx-core's
        FP8 policies (CUDA), built the way ltx-pipelines' model ledger builds them."""
        if self.quantization in FP8:
            from dataclasses import replace

            from ltx_core.loader.sd_ops import SDOps
            from ltx_core.quantization import QuantizationPolicy

            from ltx_ascend.checkpoints.loader import builder_for

            policy = QuantizationPolicy.fp8_cast() if self.quantization == "fp8-cast" else None
            if policy is None:
                try:
                    policy = QuantizationPolicy.fp8_scaled_mm()
                except ImportError as exc:
                    raise UserError(f"--quantization fp8-scaled-mm: {exc}; use fp8-cast or w8a8") from None
            builder = builder_for("dit", ckset)
            sd_ops = builder.model_sd_ops
            if policy.sd_ops is not None:
                mapping = (*sd_ops.mapping, *policy.sd_ops.mapping) if sd_ops else policy.sd_ops.mapping
                sd_ops = SDOps(name=f"{sd_ops.name if sd_ops else 'none'}+{policy.sd_ops.name}", mapping=mapping)
            builder = replace(builder, module_ops=(*builder.module_ops, *policy.module_ops), model_sd_ops=sd_ops)
            self.used["dit"] = f"eager ({self.quantization})"
            return builder.build(device=self.device).eval()
        model = self._load("dit", ckset)
        if self.quantization == W8A8:
            from ltx_ascend.export.quantize import quantize_dit_

            quantize_dit_(model, self.quantization_skip)
            self.used["dit"] = f"{self.used.get('dit', 'eager')} ({W8A8})"
        return model

    def _load(self, component: str, ckset: CheckpointSet, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """On the device; with --offload all, VAE/upsampler/vocoder modules are built once into host
        memory instead, and `on_device` brings each to the device only for its own calls."""
        dtype = dtype or self.dtype
        if not self._offloaded(component):
            return load_component(component, ckset, device=self.device, dtype=dtype)
        key = (component, dtype)
        if key not in self._host:
            self._host[key] = load_component(component, ckset, device="cpu", dtype=dtype)
        return self._host[key]

    @contextlib.contextmanager
    def on_device(self, *modules: tuple[str, torch.nn.Module | None]) -> Iterator[None]:
        """The body runs with these (name, module) on the device; offloaded ones go back to host
        memory afterwards and the device's cached blocks are returned to the driver."""
        moving = [(name, m) for name, m in modules if m is not None and self._offloaded(name)]
        for name, module in moving:
            module.to(self.device)
            self.device_log.append((name, "in"))
        try:
            yield
        finally:
            for name, module in moving:
                module.to("cpu")
                self.device_log.append((name, "out"))
            if moving:
                gc.collect()
                dev.empty_cache(self.device)

    # -- components ----------------------------------------------------------------------------

    def dit(self, profile: ShapeProfile, loras: tuple[LoraSpec, ...] = ()) -> DiTRunner:
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
                runner = eager_dit_runner(model, config, self.device, self.dtype, parallel=parallel)
            else:
                shell, _ = dit_blocks.dit_shell(ckset, config, self.dtype, with_block=False)
                source = CheckpointBlockSource(ckset, config["transformer"]["num_layers"], self.dtype)
                weights = StreamedBlockWeights(source, self.device, prefetch)
                runner = eager_dit_runner(
                    shell.to(self.device), config, self.device, self.dtype, block_weights=weights, parallel=parallel
                )
        else:
            if "dit" in sessions and prefetch is not None:
                raise UserError(f"dit: {self.folders['dit']}: {WHOLE_CANNOT_STREAM}")
            files = sorted(self.folders["dit"].glob("block_*.safetensors"))
            weights = files if prefetch is None else StreamedBlockWeights(BlockFileSource(files), self.device, prefetch)
            runner = DiTRunner(
                config, sessions, block_weights=weights, device=self.device, dtype=self.dtype, parallel=parallel
            )
        runner.use_step_cache(cache)
        if self.timings is not None:
            runner.block_counts = self.timings.dit_counts()
        return runner

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

    def dit_attention_masked(
        self, loras: tuple[LoraSpec, ...] = (), *, reason: str, stage: int | None = 1
    ) -> Callable:
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
        model = X0Model(self._load_dit(self.ckset.with_loras((*self.ckset.loras, *loras)))).eval()

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

        def run(latent: torch.Tensor) -> Audio:
            with torch.inference_mode():
                if decoder is not None and vocoder is not None and self.offload != "all":
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
        """Between stages: drop what the last stage held (the caller deletes its references first)."""
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
