"""`ltx-run PIPELINE`: Lightricks' LTX-2.3 pipelines on compiled graphs (om / ort) or eager.

Every flag of ltx-pipelines 1.0.0 keeps its name (`python -m ltx_pipelines.X ...` becomes
`ltx-run X ...`); ours are --artifacts, --backend, --fallback, --device, --dtype, --raw-output,
--timings-json, --step-cache / --step-cache-search and --parallel. With no checkpoint flags it runs
on the tiny set under artifacts/, building it and its ONNX Runtime graphs on first use. Under
torchrun with --parallel, every rank runs the pipeline on its own device; rank 0 alone writes the
outputs and prints the table.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time

from ltx_ascend.engine.argv import (
    Checked,
    build_parser,
    make_stack,
    parse_and_check,
    prepare_command,
    request_from_args,
    run_setup,
)
from ltx_ascend.engine.context import Output
from ltx_ascend.engine.lookups import lookups, misses
from ltx_ascend.engine.request import DEFAULT_PROMPT, NEGATIVE_INDEX_NOTE
from ltx_ascend.engine.request import check_image as _check_image
from ltx_ascend.engine.resident import TINY_DISTILLED_LORA_STRENGTH, Result
from ltx_ascend.engine.settings import default_backend
from ltx_ascend.engine.stages import PIPELINES
from ltx_ascend.engine.step_cache import StepCacheSpec
from ltx_ascend.engine.step_cache_search import search_step_cache
from ltx_ascend.engine.timing import Timings
from ltx_ascend.errors import UserError, cli_entry
from ltx_ascend.media import write_raw
from ltx_ascend.runtime import distributed

# what tests and tools reach through ltx-run's module (the flags themselves live in engine/argv.py)
__all__ = [
    "DEFAULT_PROMPT", "NEGATIVE_INDEX_NOTE", "PIPELINES", "TINY_DISTILLED_LORA_STRENGTH", "Checked", "_check_image",
    "build_parser", "default_backend", "distributed", "main", "make_stack", "parse_and_check", "prepare_command",
    "request_from_args", "run_setup",
]  # fmt: skip


class _NoProgress(io.TextIOBase):
    """stderr of ranks other than 0: warnings and errors pass, progress bars (carriage returns) do not."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if "\r" not in text:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    checked = parse_and_check(argv)
    args, layout = checked.args, checked.settings.layout
    launched = distributed.launched_ranks()
    if launched is not None and launched[1] > 1 and args.parallel is None:
        n = launched[1]
        raise UserError(f"torchrun started {n} ranks: pass --parallel cfg=C,ulysses=U with C x U = {n}")
    rank, _, _ = distributed.check_layout(layout)
    if layout.size > 1 and args.step_cache_search is not None:
        raise UserError("--step-cache-search calibrates on one device: run it without torchrun and --parallel")
    if rank == 0:
        return _main(checked)
    quiet = _NoProgress(sys.stderr)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(quiet):
        return _main(checked)  # rank 0 alone reports


def _check_only(checked: Checked) -> int:
    """`ltx-run ... --check`: the lookups of this run, each with what it found; exit 2 on any miss."""
    ckset, policy, parallel = run_setup(checked, checked.settings.layout, connect=False, write_tiny=False)
    stack = make_stack(checked, ckset, policy, parallel, checked.step_cache, None)
    stack.prepare_hint = None  # named once, at the end
    found = lookups(checked.module, checked.request, stack)
    for lookup in found:
        print(("  ok    " if lookup.ok else "  MISS  ") + lookup.describe())
    missing = misses(found)
    if missing:
        names = ", ".join(f"{m.component} at {m.shape}" for m in missing)
        raise UserError(f"{len(missing)} of {len(found)} lookups miss ({names}): {prepare_command(checked)}")
    compiled = sum(1 for lookup in found if lookup.compiled)
    print(f"check: a run of {checked.args.pipeline} finds all {compiled} compiled artifacts it looks up")
    return 0


def _main(checked: Checked) -> int:
    """The run itself, on the API: `Engine.run` the prepared request, then write what ltx-run writes."""
    args, engine, prepared, req = checked.args, checked.engine, checked.prepared, checked.request
    if args.check:
        return _check_only(checked)
    start = time.perf_counter()
    engine.load_for(prepared)  # the tiny set written, the checkpoint set checked, the process group open
    print(engine.describe(), flush=True)
    if args.step_cache_search is not None:
        step_cache = checked.step_cache
        policy = engine.policy
        search_step_cache(
            lambda spec: _outputs(engine.run(prepared, step_cache=spec)),
            template=step_cache if step_cache.active else StepCacheSpec(policy="auto"),
            target_psnr=args.step_cache_search,
            steps=req.num_inference_steps,
            out=args.step_cache_out,
            describe=f"{args.pipeline}, {req.num_inference_steps} steps, seed {req.seed}, {req.num_frames}x"
            f"{req.height}x{req.width}, {args.backend or 'ort'}, {str(policy.dtype).removeprefix('torch.')}",
        )
        print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return 0
    result = engine.run(prepared)
    if engine.parallel is not None and not engine.parallel.world.is_main:
        return 0
    timings = result.timings
    with timings.stage("write"):
        result.write_mp4(args.output_path)
        if args.raw_output is not None:
            write_raw(args.raw_output, result.frames, result.audio_object)
    print(f"\n{args.pipeline}: {tuple(result.frames.shape)} frames -> {args.output_path}")
    print(timings.table())
    if args.timings_json:
        timings.write_json(args.timings_json)
    print(f"wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _outputs(result: Result) -> tuple[Output, Timings]:
    """What --step-cache-search compares: the run's output and its timings."""
    return Output(result.frames, result.audio_object), result.timings
