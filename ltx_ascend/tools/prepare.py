"""`ltx-prepare PIPELINE[,PIPELINE] --shapes FxHxW[,FxHxW]`: build once every artifact the runs will look up.

It takes ltx-run's own flags (checkpoints, --artifacts, --backend, --ep, --soc, --device, --dtype,
--dit-layout, --parallel, --quantization, --variant, --step-cache, streaming, --image and the
pipelines' inputs), so each (pipeline, shape) is parsed and set up exactly as `ltx-run` would, and
its artifact list is what that run looks up (`pipelines.lookups`: the pipeline's own `run` on a
recording stack), not a second table. It prints the plan (component, shape, variant, graphs, weight
bytes new or shared, disk needed, present or missing), exports what is missing, compiles it (ATC
compiles of different artifacts in parallel with --jobs N) under one progress bar, and ends by
proving that a run at each shape finds everything, with a per-stage timing table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import torch
from tqdm import tqdm

from ltx_ascend import backends as registry
from ltx_ascend import dtypes
from ltx_ascend.backends import CompileOptions
from ltx_ascend.checkpoints.blocks import CHECKPOINT_BLOCK_PREFIX
from ltx_ascend.checkpoints.inspection import component_rows
from ltx_ascend.checkpoints.loader import read_model_config
from ltx_ascend.compile.atc import detect_soc
from ltx_ascend.components import REGISTRY, request_for
from ltx_ascend.engine import argv as run_cli
from ltx_ascend.engine.lookups import Lookup, lookups, misses
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import OneLineParser, UserError, cli_entry
from ltx_ascend.export.dit import WHOLE_DIT_MAX_BYTES, dit_weight_bytes
from ltx_ascend.export.dit_blocks import weights_material
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.export.video_vae import DECODER_TILING, decoder_tiles_latent_shapes
from ltx_ascend.runtime import distributed
from ltx_ascend.shapes import parse_shape
from ltx_ascend.store import PORTABLE, WEIGHTS, artifact_dir, request_key, weights_bytes, weights_key

# ltx-prepare's own flags; every other flag is ltx-run's, with its meaning.
OWN = ("--shapes", "--jobs", "--keyframes", "--plan-only")


@dataclass
class Run:
    """One (pipeline, shape) to prepare for: its checked ltx-run command line and its stack's settings."""

    pipeline: str
    shape: str
    checked: run_cli.Checked
    stack: object
    found: list[Lookup] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.pipeline} {self.shape}"


@dataclass
class Item:
    """One artifact of the plan (shared by every run that looks it up)."""

    lookup: Lookup
    request: dict
    runs: list[str]
    graphs: str = "?"
    weights: str | None = None  # content key of its weight files
    weight_bytes: int = 0
    weights_shared: bool = False
    disk: int = 0  # bytes it would write (0 when present)

    @property
    def present(self) -> bool:
        return self.lookup.ok

    @property
    def variant(self) -> str:
        if self.present and self.lookup.resolution is not None:
            return self.lookup.resolution.variant or PORTABLE
        return self.lookup.build.label if self.lookup.build is not None else PORTABLE


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ltx-prepare",
        description=__doc__.splitlines()[0],
        epilog="Every other flag is ltx-run's (same name, same meaning): checkpoints, --artifacts, --backend, "
        "--ep, --soc, --device, --dtype, --dit-layout, --parallel, --quantization, --variant, --step-cache, "
        "--streaming-prefetch-count, --max-device-memory, --image, guidance and the pipelines' inputs.",
    )
    parser.add_argument("pipelines", metavar="PIPELINE[,PIPELINE]", help=f"any of {', '.join(run_cli.PIPELINES)}")
    parser.add_argument("--shapes", required=True, metavar="FxHxW[,FxHxW]", help="output shapes to serve")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="ATC compiles run at once (default 1)")
    parser.add_argument(
        "--keyframes",
        default="",
        metavar="IDX[,IDX]",
        help="image conditioning at these frame indices (placeholder images: the count and the indices set the "
        "DiT's tokens); or pass ltx-run's --image",
    )
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop (writes nothing)")
    return parser


def _run_options(pipeline: str) -> set[str]:
    """The option strings ltx-run's parser takes for `pipeline`."""
    parser = run_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[pipeline]._option_string_actions)


def _for_pipeline(argv: list[str], pipeline: str) -> tuple[list[str], list[str]]:
    """`argv` without the flags (and their values) `pipeline` does not take; and those dropped."""
    options, kept, dropped, skipping = _run_options(pipeline), [], [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token.split("=", 1)[0] not in options
            (dropped if skipping else kept).append(token)
        elif not skipping:
            kept.append(token)
    return kept, [d for d in dropped if d.startswith("--")]


@contextlib.contextmanager
def _keyframe_images(indices: str) -> Iterator[list[str]]:
    """--image args for placeholder images at `indices` (what changes the graphs is where and how many)."""
    if not indices.strip():
        yield []
        return
    from PIL import Image

    try:
        frames = [int(i) for i in indices.split(",") if i.strip()]
    except ValueError:
        raise UserError(f"--keyframes {indices}: frame indices are integers, e.g. 0,-1") from None
    with tempfile.TemporaryDirectory(prefix="ltx-prepare-") as folder:
        args = []
        for k, frame in enumerate(frames):
            path = Path(folder) / f"keyframe{k}.png"
            Image.new("RGB", (64, 64), (128, 128, 128)).save(path)
            args += ["--image", str(path), str(frame), "1.0"]
        yield args


def _shapes(text: str) -> list[str]:
    shapes = [s.strip() for s in text.split(",") if s.strip()]
    if not shapes:
        raise UserError("--shapes: give at least one FxHxW, e.g. 121x1024x1536")
    for shape in shapes:
        parse_shape(shape)
    return list(dict.fromkeys(shapes))


_SAID: set[str] = set()


def _setup(pipeline: str, shape: str, argv: list[str], *, writes: bool = True) -> Run:
    frames, height, width = parse_shape(shape)
    out = str(Path(tempfile.gettempdir()) / "ltx-prepare-unused.mp4")  # checked writable by ltx-run, never written
    run_argv = [pipeline, *argv, "--num-frames", str(frames), "--height", str(height), "--width", str(width)]
    checked = run_cli.parse_and_check([*run_argv, "--output-path", out])
    checked = dataclasses.replace(checked, argv=tuple(run_argv))
    layout = checked.args.parallel or distributed.Layout()
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # ltx-run's "using the tiny set" line: said once, not per run
        ckset, policy, parallel = run_cli.run_setup(checked, layout, connect=False, write_tiny=writes)
    for line in said.getvalue().splitlines():
        if line not in _SAID:
            _SAID.add(line)
            print(line, file=sys.stderr)
    stack = run_cli.make_stack(checked, ckset, policy, parallel, checked.step_cache, None)
    stack.build_missing, stack.prepare_hint = False, None
    return Run(pipeline, shape, checked, stack)


# -- the plan ---------------------------------------------------------------------------------------


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=dtypes.GRAPH_DTYPES[dtype]).element_size()


class _Sizes:
    """Parameter counts from the checkpoint headers (no tensor read), per checkpoint set."""

    def __init__(self) -> None:
        self._rows: dict = {}
        self._blocks: dict = {}

    def elements(self, ckset, component: str) -> int:
        key = (ckset.checkpoint, ckset.spatial_upsampler, ckset.gemma_root)
        if key not in self._rows:
            self._rows[key] = {name: params for name, _, params, _ in component_rows(ckset.with_loras(()))}
        return self._rows[key].get(component, 0)

    def block_elements(self, checkpoint: Path) -> int:
        if checkpoint not in self._blocks:
            with safetensors.safe_open(str(checkpoint), framework="pt") as f:
                self._blocks[checkpoint] = sum(
                    math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(CHECKPOINT_BLOCK_PREFIX)  # noqa: SIM118
                )
        return self._blocks[checkpoint]


def _graph_count(lookup: Lookup, layout: str) -> str:
    profile = lookup.profile
    if lookup.component == "dit":
        if layout == "whole":
            return "1 (dit)"
        extra = 1 if lookup.build is not None and lookup.build.ort_fused and layout == "blocks" else 0
        return f"{3 + extra} (input, block{', block-sample-adaln' if extra else ''}, output)"
    if lookup.component == "video_decoder":
        tiles = set(decoder_tiles_latent_shapes(profile.video_latent_shape, DECODER_TILING))
        return f"{len(tiles)} (tiles)"
    if lookup.component == "video_encoder":
        return "2 (video, image)" if profile.frames > 1 else "1"
    return "1"


def plan_items(runs: list[Run], out: Path) -> list[Item]:
    """The artifacts of every run, one item each however many runs share it, in first-use order."""
    sizes, items, seen_weights = _Sizes(), {}, set()
    for run in runs:
        for lookup in run.found:
            if not lookup.compiled:
                continue
            variant = lookup.build
            dtype = REGISTRY[lookup.component].graph_dtype_for(run.stack.dtype)
            request = request_for(lookup.component, lookup.ckset, lookup.profile, dtype, variant)
            key = (lookup.component, request_key(request))
            if key in items:
                items[key].runs.append(run.name)
                continue
            item = Item(lookup, request, [run.name])
            items[key] = item
            dtype_name, layout = dtypes.name(dtype), variant.dit_layout if variant else "auto"
            params = sizes.elements(lookup.ckset, lookup.component) * _itemsize(dtype_name)
            graph_bytes = params
            if lookup.component == "dit":
                config = read_model_config(lookup.ckset.checkpoint)
                if layout == "auto":
                    layout = "blocks" if dit_weight_bytes(config, dtype) > WHOLE_DIT_MAX_BYTES else "whole"
                if layout in ("blocks", "split"):
                    quant = variant.quantization if variant else ""
                    material = weights_material(lookup.ckset, config["transformer"]["num_layers"], dtype, quant,
                                                variant.quantization_skip if variant else ())  # fmt: skip
                    item.weights = weights_key(material)
                    block_bytes = sizes.block_elements(lookup.ckset.checkpoint) * _itemsize(dtype_name)
                    block_bytes = block_bytes // 2 if quant else block_bytes  # int8 linears: about half
                    on_disk = weights_bytes(out, item.weights)
                    item.weight_bytes = on_disk if on_disk is not None else block_bytes
                    item.weights_shared = on_disk is not None or item.weights in seen_weights
                    seen_weights.add(item.weights)
                    graph_bytes = max(params - block_bytes, 0)
            item.graphs = _graph_count(lookup, layout)
            if not item.present:
                compiled_copy = graph_bytes if registry.backend(lookup.backend).compile is not None else 0
                item.disk = graph_bytes + compiled_copy + (0 if item.weights_shared else item.weight_bytes)
    return list(items.values())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def plan_table(items: list[Item]) -> str:
    head = f"{'component':<18} {'shape':<20} {'variant':<16} {'on':<5} {'graphs':<34} {'weights':<24}"
    head += f" {'disk':>11}  state"
    lines = [head, "-" * len(head)]
    for item in items:
        if item.weights:
            weights = f"{_mb(item.weight_bytes)} {'shared' if item.weights_shared else 'new'} {item.weights[:6]}"
        else:
            weights = "-"
        state = "present" if item.present else "missing"
        lines.append(
            f"{item.lookup.component:<18} {item.lookup.shape:<20} {item.variant:<16} {item.lookup.backend:<5} "
            f"{item.graphs:<34} {weights:<24} {_mb(item.disk) if item.disk else '-':>11}  {state}"
        )
    return "\n".join(lines)


# -- building ------------------------------------------------------------------------------------------


def _soc(run: Run) -> str:
    soc = run.checked.args.soc or detect_soc()
    if soc is None:
        raise UserError("--backend om: pass --soc (e.g. Ascend910B4): this host reports no Ascend SoC")
    return soc


def build(items: list[Item], runs_by_name: dict[str, Run], out: Path, jobs: int, timings: Timings) -> None:
    """Export the missing items one at a time (tracing is in-process), compile each as soon as it is
    exported: ORT here, ATC in a pool of `jobs` (different artifacts' graphs compile independently)."""
    missing = [item for item in items if not item.present]
    bar = tqdm(total=2 * len(missing), desc="prepare", unit="step", file=sys.stderr)
    pending: list[tuple[Item, Future]] = []
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for item in missing:
            lookup, run = item.lookup, runs_by_name[item.runs[0]]
            variant = lookup.build
            dtype = REGISTRY[lookup.component].graph_dtype_for(run.stack.dtype)
            bar.set_postfix_str(f"export {lookup.component} {lookup.shape}")
            with timings.stage(f"export {lookup.component}"):
                result = export_component(
                    lookup.component,
                    lookup.ckset,
                    lookup.profile,
                    options=ExportOptions(**dataclasses.asdict(variant)) if variant else None,
                    out=out,
                    dtype=dtype,
                )
            assert result.folder == artifact_dir(out, item.request), (result.folder, item.request)
            bar.update(1)
            record = registry.backend(lookup.backend)
            soc = _soc(run) if "soc" in record.compile_needs else None
            options = CompileOptions(ep=run.checked.args.ep, soc=soc)
            if record.compile is not None and record.compiles_in_parallel:
                pending.append((item, pool.submit(record.compile_step(), result.folder, options)))
            else:
                with timings.stage(f"compile {lookup.component}"):
                    if record.compile is not None:
                        record.compile_step()(result.folder, options)
                bar.update(1)
        for item, future in pending:
            with timings.stage(f"compile {item.lookup.component} (ATC, waited)"):
                future.result()
            bar.update(1)
    bar.close()


def prove(runs: list[Run], timings: Timings) -> list[str]:
    """Look up again what each run needs; the misses left (none after a build), named."""
    failed = []
    with timings.stage("check"):
        for run in runs:
            run.found = lookups(run.checked.module, run.checked.request, run.stack, write_cache=True)
            left = misses(run.found)
            compiled = sum(1 for lookup in run.found if lookup.compiled)
            if left:
                failed += [f"{run.name}: {m.describe()}" for m in left]
                print(f"MISSING  {run.name}: {len(left)} of {compiled} compiled artifacts not found")
            else:
                print(f"ok       {run.name}: a run finds all {compiled} compiled artifacts it looks up")
    return failed


def timing_table(timings: Timings) -> str:
    """Seconds per stage of the preparation (plan, each component's exports and compiles, the check)."""
    rows: dict[str, list[float]] = {}
    for stage in timings.stages:
        rows.setdefault(stage.name, []).append(stage.seconds)
    lines = [f"{'stage':<44} {'count':>5} {'seconds':>9}", "-" * 60]
    lines += [f"{name:<44} {len(s):>5} {sum(s):>9.2f}" for name, s in rows.items()]
    lines.append(f"{'total':<44} {'':>5} {timings.total:>9.2f}")
    return "\n".join(lines)


def store_usage(out: Path) -> tuple[int, int]:
    """(weight sets, bytes) under the store's content-addressed weights."""
    root = out / WEIGHTS
    sets = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    return len(sets), sum(f.stat().st_size for s in sets for f in s.iterdir() if f.is_file())


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = build_parser().parse_known_args(argv)
    pipelines = list(dict.fromkeys(p.strip() for p in own.pipelines.split(",") if p.strip()))
    unknown = [p for p in pipelines if p not in run_cli.PIPELINES]
    if not pipelines or unknown:
        raise UserError(f"pipeline {', '.join(unknown) or '(none)'}: choose from {', '.join(run_cli.PIPELINES)}")
    if own.jobs < 1:
        raise UserError(f"--jobs {own.jobs}: must be >= 1")
    for flag in ("--num-frames", "--height", "--width", "--check"):
        if any(t.split("=", 1)[0] == flag for t in rest):
            raise UserError(f"{flag}: ltx-prepare takes the shapes as --shapes FxHxW[,FxHxW]; drop {flag}")
    shapes = _shapes(own.shapes)
    timings = Timings()
    with _keyframe_images(own.keyframes) as images:
        runs = []
        with timings.stage("plan"):
            for pipeline in pipelines:
                pipeline_argv, dropped = _for_pipeline([*rest, *images], pipeline)
                if dropped:
                    print(f"note: {pipeline} takes no {', '.join(dropped)}: left out for it", file=sys.stderr)
                for shape in shapes:
                    run = _setup(pipeline, shape, pipeline_argv, writes=not own.plan_only)
                    run.found = lookups(run.checked.module, run.checked.request, run.stack,
                                        write_cache=not own.plan_only)  # fmt: skip
                    runs.append(run)
            out = Path(runs[0].checked.args.artifacts)
            items = plan_items(runs, out)
        missing = [item for item in items if not item.present]
        print(
            f"plan: {len(pipelines)} pipeline(s) x {len(shapes)} shape(s) -> {len(items)} artifacts "
            f"({len(items) - len(missing)} present, {len(missing)} to build), about "
            f"{_mb(sum(i.disk for i in items))} to write under {out}"
        )
        print(plan_table(items))
        eager = {f"{lk.component} ({lk.note})" for run in runs for lk in run.found if not lk.compiled and lk.note}
        if eager:
            print("eager whatever is prepared: " + "; ".join(sorted(eager)))
        if own.plan_only:
            return 0
        if missing:
            free = shutil.disk_usage(out if out.exists() else out.parent if out.parent.exists() else Path.cwd()).free
            need = sum(i.disk for i in missing)
            if need > free:
                raise UserError(f"the plan writes about {_mb(need)} under {out}, only {_mb(free)} free: free space")
            build(items, {run.name: run for run in runs}, out, own.jobs, timings)
        print()
        failed = prove(runs, timings)
    sets, held = store_usage(out)
    print(f"\nweights: {sets} content-addressed set(s), {_mb(held)} on disk under {out / WEIGHTS}")
    print(timing_table(timings))
    if failed:
        raise UserError(f"{len(failed)} lookups still miss after the build (first: {failed[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
