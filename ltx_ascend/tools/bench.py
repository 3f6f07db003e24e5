"""`ltx-bench`: is it faster? Every backend on the same inputs, in the same run, against eager.

Per component: median and min seconds per call after a warm-up, peak host RSS while it ran (and
device memory where there is a device), and the ratio to eager. Each backend runs in its own
process, so its peak is its own and not the high-water mark of the backends before it. For the
DiT, one call is one sampling step with every guidance pass in the batch, and achieved FLOP/s is
shown next to this machine's matmul peak: the better of torch's and ONNX Runtime's own float32
GEMM, timed in the same run.

Backends: `eager` (ltx-core, float32), `ort` (the portable graph, ORT_ENABLE_ALL), `ort-fused`
(`--ort-fused`: MultiHeadAttention, SimplifiedLayerNormalization), `ort-w8a8` (ort-fused with
`--quantization w8a8`), `eager-w8a8` (the eager W8A8 reference), `om` (Ascend hosts only).
`22b-block` times one block graph per backend: the one `DiTRunner` would run on the sample (its
text-to-video passes share one timestep per pass, so ort-fused variants run the per-sample AdaLN
graph); the JSON row names it (`graph`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from ltx_ascend import backends as registry
from ltx_ascend import cpu_isa
from ltx_ascend.atomic import atomic_path, atomic_write_text, check_writable_file
from ltx_ascend.backends import CompileOptions
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.checkpoints.tiny import ensure_tiny_set
from ltx_ascend.compile.atc import detect_soc_with_source, find_atc, missing_atc_message
from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.components import EXPORTABLE
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportItem, ExportOptions, build_items
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.runtime.eager_session import EagerSession
from ltx_ascend.runtime.om_session import import_acl
from ltx_ascend.runtime.ort_session import OrtSession
from ltx_ascend.runtime.session import Session
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import resolve_folder
from ltx_ascend.tools.plan import dit_flops_per_pass, meta_dit

PRESETS = ("tiny", "bench", "22b-block", "22b-stream")
PARALLEL_BACKENDS = ("eager", "ort", "ort-fused", "ort-w8a8")  # --parallel: the eager or a split ORT variant
PASSES_PER_STEP = 4  # conditional, negative prompt, STG, modality isolation (stage 1); stage 2 is distilled: 1
# what --backends names -> (the backend it runs on, ltx_ascend.backends; ExportOptions fields of its graph variant)
BENCH_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "eager": ("eager", {}),
    "eager-w8a8": ("eager", {"quantization": "w8a8"}),
    "ort": ("ort", {}),
    "ort-fused": ("ort", {"ort_fused": True}),
    "ort-w8a8": ("ort", {"ort_fused": True, "quantization": "w8a8"}),
    "om": ("om", {}),
}


def bench_config(layers: int = 1) -> dict[str, Any]:
    """The released LTX-2.3 head geometry (32 heads of 128 video / 64 audio) with few layers."""
    config = config_22b()
    config["transformer"]["num_layers"] = layers
    return config


class _RssSampler:
    """Peak resident memory of this process while a block of code runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_session(session: Session, feeds: dict[str, torch.Tensor], repeats: int, device: torch.device) -> dict:
    session.run(feeds, copy_outputs=False)  # warm-up: allocation, kernel selection, ORT's first-run paths
    dev.synchronize(device)
    dev.reset_peak_memory_stats(device)
    times = []
    with _RssSampler() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(feeds, copy_outputs=False)
            dev.synchronize(device)
            times.append(time.perf_counter() - start)
    device_peak = dev.max_memory_allocated(device)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_mem_mb": rss.peak / 2**20,
        "device_peak_mem_mb": None if device_peak is None else device_peak / 2**20,
    }


def ort_matmul_gflops(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """ONNX Runtime's own float32 GEMM (MLAS) at n^3 on the CPU provider."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in ("a", "b")}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's dense matmul throughput in `dtype` with torch."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    dev.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        dev.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _items(
    preset: str, component: str, shape: str, artifacts: Path, dtype: torch.dtype, stage: int = 1
) -> tuple[Any, list]:
    """(checkpoint set or None, export options, profile) for a preset."""
    if preset == "tiny":
        tiny = ensure_tiny_set(artifacts / "tiny")
        ckset = tiny.checkpoint_set()
        options = ExportOptions()
    elif preset == "bench":
        ckset, options = None, ExportOptions(dit_layout="whole", random_config=bench_config())
    else:
        ckset, options = None, ExportOptions(dit_layout="blocks", random_config=config_22b())
    if preset != "tiny" and component != "dit":
        raise UserError(f"--preset {preset} benchmarks the DiT only: pass --component dit")
    stage = stage if component in ("dit", "spatial_upsampler") else None
    batch = (PASSES_PER_STEP if stage == 1 else 1) if component == "dit" else 1
    profile = shape_profile(shape, stage=stage, batch=batch)
    return ckset, options, profile


def _measure_backend(
    backend: str,
    component: str,
    preset: str,
    shape: str,
    stage: int,
    artifacts: Path,
    repeats: int,
    threads: int | None,
    soc: str | None = None,
) -> dict[str, dict[str, Any]]:
    """One backend (in its own process, but om): build its items, export/compile if compiled, time every graph."""
    policy = dev.policy_for("cpu", "float32")
    runs_on, fields = BENCH_VARIANTS[backend]
    ckset, options, profile = _items(preset, component, shape, artifacts, policy.dtype, stage)
    options = dataclasses.replace(options, **fields) if component == "dit" else options
    if threads:
        torch.set_num_threads(threads)
    items = build_items(component, ckset, profile, policy.dtype, options)
    if preset == "22b-block":
        items = [_bench_block_item(items)]
    compiled: dict[str, Session] = {}
    record = registry.backend(runs_on)
    if record.compile is not None and (runs_on != "ort" or preset != "22b-block"):
        result = export_component(component, ckset, profile, out=artifacts / "bench", options=options)
        bench_soc = _bench_soc(soc) if "soc" in record.compile_needs else None
        record.compile_step()(result.folder, CompileOptions(ep="cpu", soc=bench_soc))
        resolution = resolve_folder(result.folder, runs_on, ep="cpu", soc=bench_soc)
        compiled = open_component(resolution, fallback="none", threads=threads) or {}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        feeds, device = item.sample, policy.device
        if runs_on == "eager":
            session: Session = EagerSession.from_item(item)
        elif runs_on == "om":
            session = compiled.pop(item.name)
            device = session.torch_device  # type: ignore[attr-defined]
            feeds = {k: v.to(device) for k, v in feeds.items()}  # NPU feeds are bound, not copied
        elif not compiled:  # 22b-block: only the block graph is timed, so only it is exported
            session = _block_session(item, options, profile, artifacts / "bench" / "22b-block", threads)
        else:
            session = compiled.pop(item.name)
        key = "dit-block" if preset == "22b-block" else item.name  # one row, whichever block graph ran
        out[key] = time_session(session, feeds, repeats, device) | {"graph": item.name}
        session.close()
    for session in compiled.values():  # graphs no item times
        session.close()
    return out


def bench_component(
    component: str,
    preset: str,
    shape: str,
    backends: list[str],
    artifacts: Path,
    repeats: int,
    threads: int | None,
    stage: int = 1,
    soc: str | None = None,
) -> dict[str, Any]:
    """Every backend in a fresh subprocess (spawned), one after the other, same seeded inputs; om runs
    in this process (its ACL context and device belong to the caller)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    for backend in backends:
        if backend not in BENCH_VARIANTS:
            raise UserError(f"--backends {backend}: choose from {', '.join(BENCH_VARIANTS)}")
        if component != "dit" and BENCH_VARIANTS[backend][1]:
            raise UserError(f"--backends {backend} is a DiT graph variant: pass --component dit")
    _, _, profile = _items(preset, component, shape, artifacts, torch.float32, stage)
    results: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    for backend in backends:
        print(f"  {backend} ...", flush=True)
        args = (backend, component, preset, shape, stage, artifacts, repeats, threads, soc)
        if backend == "om":
            for key, stats in _measure_backend(*args).items():
                results.setdefault(key, {})[backend] = stats
            continue
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                measured = pool.submit(_measure_backend, *args).result()
            except BrokenProcessPool:  # killed (out of memory): say so in the table, go on with the others
                print(f"  {backend}: its process died (out of memory?); no numbers", flush=True)
                continue
        for key, stats in measured.items():
            results.setdefault(key, {})[backend] = stats
            line = f"  {backend} {key}: median {stats['median_s']:.3f} s, peak {stats['peak_mem_mb']:.0f} MB"
            print(line, flush=True)
    for row in results.values():
        eager = row.get("eager", {}).get("median_s")
        for stats in row.values():
            stats["speedup_vs_eager"] = (eager / stats["median_s"]) if eager else None
    return {"results": results, "profile": dataclasses.asdict(profile)}


def _bench_block_item(items: list[ExportItem]) -> ExportItem:
    """The block graph `DiTRunner` would run on the sample: the per-sample AdaLN one where the variant
    has it and every token shares its pass's timestep (the sample's text-to-video passes do), else the
    per-token one. The other item is dropped here, so its AdaLN table is not held while timing."""
    from ltx_ascend.export.dit_blocks import SAMPLE_ADALN, shared_adaln

    block = next(i for i in items if i.variant == "block")
    sample = next((i for i in items if i.variant == SAMPLE_ADALN), None)
    if sample is not None and shared_adaln(block.sample) is not None:
        return sample
    return block


def _block_session(
    item: ExportItem, options: ExportOptions, profile: Any, folder: Path, threads: int | None
) -> OrtSession:
    """The 22B block graph alone (0.2 MB: its weights are inputs), exported once; the session applies
    ORT_ENABLE_ALL at load, as `ltx-compile --target ort` would."""
    from ltx_ascend.export.exporter import graph_outputs
    from ltx_ascend.export.onnx_writer import export_onnx
    from ltx_ascend.runtime.session import TensorSpec

    folder = folder / f"{options.variant.label}-{profile.key}"
    path = folder / f"{item.name}.onnx"
    if not path.is_file():
        export_onnx(item.module, item.args(), item.input_names, item.output_names, path, ort_fused=options.ort_fused)
    inputs = [TensorSpec.from_dict(i) for i in item.io_spec()["inputs"]]
    outputs = [TensorSpec.from_dict(o) for o in graph_outputs(path)]
    return OrtSession(path, inputs, outputs, threads=threads)


def _bench_soc(soc: str | None) -> str:
    """--soc, else this host's SoC; a host without an NPU gets one line saying so."""
    if soc:
        return soc
    found, why = detect_soc_with_source()
    if found is None:
        raise UserError(f"--backends om needs an Ascend host with CANN ({why}); run ltx-bench there, or pass --soc")
    return found


def _random_block_files(config: dict[str, Any], folder: Path) -> list[Path]:
    """`block_XX.safetensors` with seeded random weights at the config's width (written once, cached)."""
    from safetensors.torch import save_file

    from ltx_ascend.checkpoints.tiny import randomize_
    from ltx_ascend.export.dit_blocks import dit_shell

    layers = config["transformer"]["num_layers"]
    files = [folder / f"block_{i:02d}.safetensors" for i in range(layers)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        _, block = dit_shell(None, config, torch.float32)
        for i, path in enumerate(files):
            if path.is_file():
                continue
            print(f"writing random block {i} -> {path}", flush=True)
            with torch.no_grad():
                randomize_(block, i, "dit.block")
            with atomic_path(path) as tmp:
                save_file({n: p.detach().contiguous() for n, p in block.named_parameters()}, str(tmp))
        del block
    return files


def bench_streaming(
    shape: str, layers: int, prefetch: int | None, artifacts: Path, repeats: int, threads: int | None
) -> dict[str, Any]:
    """The eager block chain at the 22B width with `layers` random blocks, one pass per call: every
    block resident (mapped from its file) or streamed `prefetch` ahead. Run one setting per process:
    peak RSS is the process's, file-backed pages of the mapped block files included."""
    from ltx_ascend.engine.dit_runner import eager_dit_runner
    from ltx_ascend.export import dit
    from ltx_ascend.export.dit_blocks import dit_shell
    from ltx_ascend.runtime.block_weights import ResidentBlockWeights
    from ltx_ascend.runtime.weight_streaming import BlockFileSource, StreamedBlockWeights

    if threads:
        torch.set_num_threads(threads)
    config = bench_config(layers)
    files = _random_block_files(config, artifacts / "bench-stream" / f"{layers}-layers")
    shell, _ = dit_shell(None, config, torch.float32, with_block=False)
    profile = shape_profile(shape, stage=1)
    passes = dit.sample_passes(1, layers)
    feeds, _, _ = dit.sample_feeds(shell, profile, passes)
    feeds |= dit.skip_masks_for(passes, layers)
    block_bytes = max(f.stat().st_size for f in files)
    process = psutil.Process()
    before = process.memory_info().rss
    with _RssSampler() as rss:
        if prefetch is None:
            weights = ResidentBlockWeights.from_files(files, "cpu")
        else:
            weights = StreamedBlockWeights(BlockFileSource(files), "cpu", prefetch)
        runner = eager_dit_runner(shell, config, torch.device("cpu"), torch.float32, block_weights=weights)
        times = []
        for _ in range(repeats + 1):  # the first call maps and faults every page in: a warm-up
            start = time.perf_counter()
            acts = runner.run_input(feeds)
            runner.run_blocks(acts, feeds, 0, layers)
            runner.run_output(acts, feeds)
            times.append(time.perf_counter() - start)
    return {
        "layers": layers,
        "prefetch": prefetch,
        "shape": shape,
        "video_tokens": profile.video_tokens,
        "block_mb": block_bytes / 2**20,
        "median_s_per_call": statistics.median(times[1:]),
        "first_call_s": times[0],
        "peak_rss_mb": rss.peak / 2**20,
        "peak_rss_growth_mb": (rss.peak - before) / 2**20,
        "peak_live_block_mb": getattr(weights, "peak_live_bytes", layers * block_bytes) / 2**20,
        "threads": torch.get_num_threads(),
    }


def bench_parallel(
    layout_text: str,
    shape: str,
    repeats: int,
    threads: int | None,
    backend: str = "eager",
    artifacts: Path = Path("artifacts"),
) -> dict[str, Any] | None:
    """One guided DiT step (4 passes, the bench preset's geometry) on the block chain, eager or ORT,
    split as `--parallel` says over the ranks torchrun started (cfg=1,ulysses=1 without torchrun: the
    base). ORT with ulysses > 1 runs the split block graphs (export/dit_split.py); the same random
    block weights either way. Every rank times the same steps between barriers; rank 0 reports
    (None on the others)."""
    from ltx_core.types import VideoPixelShape

    from ltx_ascend.engine import sampling
    from ltx_ascend.engine.dit_runner import Pass, eager_dit_runner
    from ltx_ascend.engine.parallel import Parallel
    from ltx_ascend.export.dit import random_dit, sample_passes
    from ltx_ascend.runtime import distributed as D
    from ltx_ascend.shapes import parse_shape

    layout = D.Layout.parse(layout_text)
    cpu = torch.device("cpu")
    config = bench_config()
    transformer = config["transformer"]
    D.check_heads(layout, {m: transformer[f"{p}num_attention_heads"] for m, p in (("video", ""), ("audio", "audio_"))})
    world = D.init_world(layout, cpu)
    torch.set_num_threads(threads or torch.get_num_threads())
    frames, height, width = parse_shape(shape)
    pixels = VideoPixelShape(batch=1, frames=frames, height=height // 2, width=width // 2, fps=24.0)  # stage 1
    g = torch.Generator().manual_seed(0)
    states = []
    for tools in (sampling.video_tools(pixels), sampling.audio_tools(pixels)):
        state = tools.create_initial_state(cpu, torch.float32)
        states.append(sampling.modality(state, torch.zeros(1), torch.tensor(0.5)))
    video, audio = (dataclasses.replace(m, latent=torch.randn(m.latent.shape, generator=g)) for m in states)
    profile = shape_profile(shape, stage=1)
    model = random_dit(config, torch.float32)
    block = model.transformer_blocks[0]
    contexts = [
        torch.randn(1, profile.text_tokens, block.attn2.to_k.in_features, generator=g),
        torch.randn(1, profile.text_tokens, block.audio_attn2.to_k.in_features, generator=g),
    ]
    passes = [Pass(p, *contexts) for p in sample_passes(PASSES_PER_STEP, transformer["num_layers"])]
    parallel = Parallel(world) if layout.size > 1 else None
    if backend == "eager":
        runner = eager_dit_runner(model, config, cpu, torch.float32, parallel=parallel)
    else:
        fields = BENCH_VARIANTS[backend][1]
        runner = _ort_parallel_runner(model, config, shape, layout, world, parallel, artifacts, threads, fields)
    times = _timed_on_all_ranks(world, lambda: runner(video, audio, passes), repeats)
    if not world.is_main:
        return None
    return {
        "layout": str(layout),
        "backend": backend,
        "ulysses": layout.ulysses,
        "ranks": layout.size,
        "threads_per_rank": torch.get_num_threads(),
        "cpu_isa": cpu_isa.describe(),
        "video_tokens": video.latent.shape[1],
        "audio_tokens": audio.latent.shape[1],
        "median_s": statistics.median(times),
        "min_s": min(times),
    }


def _ort_parallel_runner(
    model, config, shape, layout, world, parallel, artifacts: Path, threads: int | None, fields: dict | None = None
):
    """The bench DiT on ORT for one rank: the block graph split at its attention cores (U = 1 on one
    device: the same graphs and the same eager core as the ranks, so the ratio is the parallel
    scaling alone), at this rank's batch (passes / cfg); exported and compiled once per host."""
    from ltx_ascend.engine.dit_runner import DiTRunner
    from ltx_ascend.runtime import distributed as D
    from ltx_ascend.runtime.block_weights import ResidentBlockWeights

    options = ExportOptions(dit_layout="split", ulysses=layout.ulysses, random_config=config, **(fields or {}))
    profile = shape_profile(shape, stage=1, batch=math.ceil(PASSES_PER_STEP / layout.cfg))
    out = artifacts / "bench"
    with D.host_lock(out / ".build.lock", world):
        result = export_component("dit", None, profile, out=out, options=options)
        compile_ort(result.folder, "cpu", force=False)
    sessions = open_component(resolve_folder(result.folder, "ort", ep="cpu"), fallback="none", threads=threads)
    weights = ResidentBlockWeights.from_modules(model.transformer_blocks)
    if options.quantization:  # the split W8A8 graphs read int8 weights + scales (what ltx-export streams out)
        from ltx_ascend.export.quantize import quantizable, quantize_state_dict

        names = quantizable(model.transformer_blocks[0], options.quantization_skip)
        weights = ResidentBlockWeights([quantize_state_dict(dict(weights[i]), names) for i in range(len(weights))])
    return DiTRunner(config, sessions, block_weights=weights, parallel=parallel)


def bench_parallel_decode(
    layout_text: str, shape: str, backend: str, artifacts: Path, repeats: int, threads: int | None
) -> dict[str, Any] | None:
    """The tiny set's tiled video decode (ModelStack.video_decoder, as ltx-run's decode stage runs
    it), its tiles spread over torchrun's ranks (one process without torchrun: the base). Every rank
    times the same decodes between barriers; rank 0 reports (None on the others)."""
    from ltx_ascend.engine.parallel import Parallel
    from ltx_ascend.engine.parallel_decode import decoding_ranks
    from ltx_ascend.engine.stack import BackendChoice, ModelStack
    from ltx_ascend.runtime import distributed as D

    if backend not in ("eager", "ort"):
        raise UserError(f"--backends {backend}: the parallel decode benchmark times eager or ort")
    layout = D.Layout.parse(layout_text)
    cpu = torch.device("cpu")
    world = D.init_world(layout, cpu)
    torch.set_num_threads(threads or torch.get_num_threads())
    with D.host_lock(artifacts / ".tiny.lock", world):
        tiny = ensure_tiny_set(artifacts / "tiny")
    profile = shape_profile(shape)
    latent = torch.randn(profile.video_latent_shape, generator=torch.Generator().manual_seed(0))
    stack = ModelStack(
        tiny.checkpoint_set(), dev.policy_for("cpu", torch.float32), BackendChoice.parse(backend), artifacts,
        fallback="none", build_missing=True, parallel=Parallel(world) if layout.size > 1 else None,
        log=print if world.is_main else lambda _: None,
    )  # fmt: skip
    ranks = decoding_ranks(world, latent.shape)
    decode = stack.video_decoder(profile, ranks) if world.rank < ranks else None

    def decode_all() -> None:  # chunk by chunk, as ltx-run writes them; ranks past the tiles only wait
        if decode is not None:
            for _ in decode(latent, None):
                pass

    times = _timed_on_all_ranks(world, decode_all, repeats)
    if not world.is_main:
        return None
    from ltx_ascend.export.video_vae import decoder_tiles

    return {
        "layout": str(layout),
        "backend": stack.used["video_decoder"],
        "ranks": layout.size,
        "decoding_ranks": ranks,
        "tiles": len(decoder_tiles(profile.video_latent_shape)),
        "threads_per_rank": torch.get_num_threads(),
        "median_s": statistics.median(times),
        "min_s": min(times),
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'component':<28} {'backend':<10} {'median s':>10} {'min s':>10} {'peak MB':>9} {'vs eager':>9}"]
    lines.append("-" * len(lines[0]))
    for name, row in report["components"].items():
        for backend, s in row.items():
            ratio = f"{s['speedup_vs_eager']:.2f}x" if s.get("speedup_vs_eager") else "-"
            lines.append(
                f"{name:<28} {backend:<10} {s['median_s']:>10.4f} {s['min_s']:>10.4f} "
                f"{s['peak_mem_mb']:>9.0f} {ratio:>9}"
            )
    if report.get("dit_step"):
        lines.append("")
        lines.append(f"DiT step ({report['dit_passes']} guidance passes, {report['dit_step_tflop']:.3f} TFLOP):")
        for backend, s in report["dit_step"].items():
            share = s["gflops"] / report["matmul_peak_gflops"]
            lines.append(f"  {backend:<10} {s['median_s']:.3f} s/step  {s['gflops']:.1f} GFLOP/s = {share:.0%} of peak")
    peaks = report.get("matmul_gflops", {})
    detail = ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
    lines.append(
        f"matmul peak (2048^3, float32, this machine, best of {detail or 'torch'}): "
        f"{report['matmul_peak_gflops']:.1f} GFLOP/s"
    )
    lines.append(report.get("cpu_isa") or cpu_isa.describe())
    return "\n".join(lines)


def _timed_on_all_ranks(world: Any, work: Any, repeats: int) -> list[float]:
    """Seconds per call of `work`, every rank starting and finishing together (barriers), after a warm-up."""
    times = []
    for i in range(repeats + 1):
        world.barrier()
        start = time.perf_counter()
        work()
        world.barrier()
        if i:
            times.append(time.perf_counter() - start)
    return times


def _report_parallel(row: dict[str, Any], line: str, json_path: Path | None) -> None:
    """A multi-rank measurement: its line, and its row as JSON when asked."""
    print(line)
    if json_path:
        atomic_write_text(json_path, json.dumps(row, indent=2) + "\n")


def _bench_parser() -> OneLineParser:
    """ltx-bench's flags: the component bench's, and the --parallel, --resident and 22b-stream modes'."""
    parser = OneLineParser(prog="ltx-bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="tiny",
        help="tiny: the tiny set; bench: LTX-2.3 head geometry, 1 layer; 22b-block: one 22B block",
    )
    parser.add_argument("--component", default="dit", help=f"one of {', '.join(EXPORTABLE)}, or all (tiny)")
    parser.add_argument(
        "--backends",
        help=f"comma list of {', '.join(BENCH_VARIANTS)} "
        "(default eager,ort; with --parallel: eager or ort, default eager)",
    )
    parser.add_argument("--soc", help="ATC --soc_version for --backends om (default: this host's)")
    parser.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        default=1,
        help="DiT profile: 1 (half size, 4 guidance passes per step) or 2 (full size, 1 distilled pass)",
    )
    parser.add_argument("--shape", help="FxHxW (default: 41x1024x1536 for bench/22b-block, 25x256x384 for tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="intra-op threads for both backends (default: all cores)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--layers", type=int, default=6, help="22b-stream: blocks at the 22B width (default 6)")
    parser.add_argument(
        "--streaming-prefetch-count",
        type=int,
        metavar="N",
        help="22b-stream: stream N blocks ahead (default: resident)",
    )
    parser.add_argument(
        "--parallel",
        metavar="cfg=C,ulysses=U",
        help="one DiT step (--preset bench; on the block chain, --backends eager|ort) or the tiled video decode "
        "(--preset tiny --component video_decoder) split over torchrun's ranks",
    )
    parser.add_argument(
        "--resident",
        type=int,
        metavar="N",
        help="N requests to one resident Engine (tiny set) vs a fresh ltx-run process; --backends eager|ort "
        "(default ort), --steps S (default 2)",
    )
    parser.add_argument("--steps", type=int, default=2, help="--resident: sampling steps per request (default 2)")
    return parser


def _check_counts(args: argparse.Namespace) -> None:
    """Counts every mode shares, refused before anything is exported or timed."""
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: must be >= 1")
    for flag, value in (("--threads", args.threads), ("--layers", args.layers)):
        if value is not None and value < 1:  # torch.set_num_threads(0) and ORT's 0 ("all cores") would run anyway
            raise UserError(f"{flag} {value}: must be >= 1")
    if args.streaming_prefetch_count is not None and args.streaming_prefetch_count < 0:
        raise UserError(f"--streaming-prefetch-count {args.streaming_prefetch_count}: must be >= 0 (blocks ahead)")


def _main_parallel_decode(args: argparse.Namespace) -> int:
    """--parallel --component video_decoder: the tiny set's tiled decode split over torchrun's ranks."""
    if args.preset != "tiny":
        raise UserError("--parallel --component video_decoder times the tiny set's decoder: pass --preset tiny")
    shape = args.shape or "81x512x768"
    shape_profile(shape)
    backend = args.backends or "eager"
    row = bench_parallel_decode(args.parallel, shape, backend, args.artifacts, args.repeats, args.threads)
    if row is not None:  # rank 0 reports
        _report_parallel(
            row,
            f"video decode ({row['backend']}, {shape}, {row['tiles']} tiles) {row['layout']} on "
            f"{row['decoding_ranks']} rank(s) x {row['threads_per_rank']} thread(s): median "
            f"{row['median_s']:.2f} s, min {row['min_s']:.2f} s",
            args.json,
        )
    return 0


def _main_parallel_step(args: argparse.Namespace) -> int:
    """--parallel: the bench preset's DiT step split over torchrun's ranks, per backend, with their ratio."""
    if args.preset != "bench":
        raise UserError(
            "--parallel times the bench preset's DiT step (pass --preset bench) or the tiny set's video decode "
            "(pass --preset tiny --component video_decoder)"
        )
    backends = [b.strip() for b in (args.backends or "eager").split(",") if b.strip()]
    bad = [b for b in backends if b not in PARALLEL_BACKENDS]
    if bad or not backends:
        choices = ", ".join(PARALLEL_BACKENDS)
        raise UserError(f"--backends {args.backends} with --parallel: a comma list of {choices}")
    shape = args.shape or "41x1024x1536"
    rows = []
    for backend in backends:  # one run: the same inputs and ranks for each, so their ratio is the variants'
        row = bench_parallel(args.parallel, shape, args.repeats, args.threads, backend, args.artifacts)
        if row is None:  # rank 0 reports
            continue
        rows.append(row)
        chain = "eager block chain" if backend == "eager" else f"ORT {backend} block graphs split at attention"
        print(
            f"DiT step ({PASSES_PER_STEP} passes, {chain}, {row['video_tokens']} video + "
            f"{row['audio_tokens']} audio tokens) {row['layout']} on {row['ranks']} rank(s) x "
            f"{row['threads_per_rank']} thread(s): median {row['median_s']:.2f} s/step, min {row['min_s']:.2f} s"
        )
    if rows:
        print(cpu_isa.describe())
        first = rows[0]
        for row in rows[1:]:
            print(f"{row['backend']} vs {first['backend']}: {first['median_s'] / row['median_s']:.2f}x")
        if args.json:
            body = rows[0] if len(rows) == 1 else {"rows": rows}
            atomic_write_text(args.json, json.dumps(body, indent=2) + "\n")
    return 0


def _main_stream(args: argparse.Namespace) -> int:
    """--preset 22b-stream: a chain of 22B-width blocks, resident or streamed N ahead, with its memory peak."""
    if args.layers < 1 or (args.streaming_prefetch_count or 0) < 0:
        raise UserError("--layers must be >= 1 and --streaming-prefetch-count >= 0")
    shape = args.shape or "9x512x768"
    row = bench_streaming(shape, args.layers, args.streaming_prefetch_count, args.artifacts, args.repeats,
                          args.threads)  # fmt: skip
    mode = "resident" if row["prefetch"] is None else f"N={row['prefetch']}"
    print(
        f"22B-width block chain, {row['layers']} layers ({row['block_mb']:.0f} MB each, float32), "
        f"{row['video_tokens']} video tokens, 1 pass per call, {row['threads']} threads: {mode}: "
        f"{row['median_s_per_call']:.2f} s/call (first {row['first_call_s']:.2f} s), peak RSS "
        f"{row['peak_rss_mb']:.0f} MB (+{row['peak_rss_growth_mb']:.0f} MB while running; live block "
        f"tensors peak {row['peak_live_block_mb']:.0f} MB)"
    )
    if args.json:
        atomic_write_text(args.json, json.dumps(row, indent=2) + "\n")
    return 0


def _component_backends(args: argparse.Namespace) -> tuple[list[str], str, tuple[str, ...]]:
    """The component bench's backends, shape and components, all refused (and om's toolchain found) before
    any export is written."""
    args.backends = args.backends or "eager,ort"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BENCH_VARIANTS]
    if unknown or not backends:
        what = f"{unknown[0]!r} is not one of" if unknown else "use a comma list of"
        raise UserError(f"--backends {args.backends}: {what} {', '.join(BENCH_VARIANTS)}")
    if "om" in backends:  # before any export: a host without CANN gets one line at once
        args.soc = _bench_soc(args.soc)
        if find_atc() is None:
            raise UserError(missing_atc_message())
        import_acl()
    shape = args.shape or ("25x256x384" if args.preset == "tiny" else "41x1024x1536")
    shape_profile(shape)  # a bad --shape (format, 8k+1, sides) is refused before anything is written
    if args.json is not None:
        check_writable_file(args.json, "--json")
    components = EXPORTABLE if args.component == "all" else (args.component,)
    if args.component != "all" and args.component not in EXPORTABLE:
        raise UserError(f"--component {args.component}: choose one of {', '.join(EXPORTABLE)} or all")
    return backends, shape, components


def _dit_step_report(report: dict[str, Any], args: argparse.Namespace, shape: str, profile: dict[str, Any]) -> None:
    """The DiT step's FLOPs from the preset's config, and each backend's GFLOP/s from its median."""
    config = bench_config() if args.preset == "bench" else None
    if args.preset == "tiny":
        from ltx_ascend.checkpoints.loader import read_model_config

        config = read_model_config(ensure_tiny_set(args.artifacts / "tiny").checkpoint)
    elif args.preset == "22b-block":
        config = {**config_22b(), "transformer": {**config_22b()["transformer"], "num_layers": 1}}
    per_pass = dit_flops_per_pass(meta_dit(config), shape_profile(shape, stage=args.stage))["total"]
    if args.preset == "22b-block":  # one block's share: drop the embedding/output part
        per_pass = dit_flops_per_pass(meta_dit(config), shape_profile(shape, stage=args.stage))
        per_pass = per_pass["linear"] + per_pass["attention"]
    step_flops = per_pass * profile["batch"]
    report["dit_passes"] = profile["batch"]
    report["dit_step_tflop"] = step_flops / 1e12
    step_key = "dit-block" if args.preset == "22b-block" else "dit"
    report["dit_step"] = {
        backend: {"median_s": s["median_s"], "gflops": step_flops / s["median_s"] / 1e9}
        for backend, s in report["components"][step_key].items()
    }


def _main_components(args: argparse.Namespace) -> int:
    """The default mode: each component on each backend, the matmul peak, and the DiT step's GFLOP/s."""
    backends, shape, components = _component_backends(args)
    report: dict[str, Any] = {
        "preset": args.preset,
        "shape": shape,
        "stage": args.stage,
        "threads": args.threads or torch.get_num_threads(),
        "cpu_isa": cpu_isa.describe(),
        "components": {},
    }
    dit_items = None
    for component in components:
        print(f"benchmarking {component} ({args.preset}, {shape}) ...", flush=True)
        out = bench_component(
            component, args.preset, shape, backends, args.artifacts, args.repeats, args.threads, args.stage, args.soc
        )
        report["components"] |= out["results"]
        if component == "dit":
            dit_items, profile = True, out["profile"]
    if args.threads:
        torch.set_num_threads(args.threads)
    report["matmul_gflops"] = {
        "torch": matmul_peak_gflops(torch.float32, torch.device("cpu")),
        "onnxruntime": ort_matmul_gflops(threads=args.threads),
    }
    report["matmul_peak_gflops"] = max(report["matmul_gflops"].values())
    if dit_items is not None:
        _dit_step_report(report, args, shape, profile)
    print(format_table(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2, default=str) + "\n")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _bench_parser().parse_args(argv)
    if args.resident is not None:
        from ltx_ascend.tools.bench_resident import main_resident

        return main_resident(args.resident, args.backends or "ort", args.artifacts, args.steps, args.json)
    _check_counts(args)
    if args.parallel and args.component == "video_decoder":
        return _main_parallel_decode(args)
    if args.parallel:
        return _main_parallel_step(args)
    if args.preset == "22b-stream":
        return _main_stream(args)
    return _main_components(args)
