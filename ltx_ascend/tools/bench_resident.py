"""`ltx-bench --resident N`: one resident `Engine` answering N requests in one process, against a fresh
`ltx-run` process per request (artifacts and prompt cache warm), on the tiny set.

It prints the seconds and the RSS after each call, first-call and steady-state (median of calls
2..N) seconds, the fresh process's seconds, and whether every call's frames and audio equal the
first's bit for bit (same seed). Goals (issue 20): steady state <= 60 % of the fresh process; RSS
after the last call within 5 % of after call 2.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from ltx_ascend.atomic import atomic_write_text
from ltx_ascend.errors import UserError

REPO = Path(__file__).resolve().parents[2]
GOAL_STEADY_VS_FRESH = 0.60
GOAL_RSS_GROWTH = 0.05


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _fresh_process(argv: list[str], cwd: Path) -> float:
    """Seconds of one `ltx-run` in a new Python process (imports and model loads included)."""
    code = "import sys; from ltx_ascend.tools.run import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise UserError(f"the fresh ltx-run failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def bench_resident(
    calls: int, backend: str, artifacts: Path, steps: int, pipeline: str = "ti2vid_two_stages"
) -> dict[str, Any]:
    """N calls of one engine, and two fresh processes (the first warms artifacts, the second is timed)."""
    import torch

    from ltx_ascend.api import Engine, GenerationRequest, RunSettings

    artifacts = artifacts.resolve()
    out = artifacts / "bench-resident"
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        pipeline, "--backend", backend, "--dtype", "float32", "--artifacts", str(artifacts),
        "--num-inference-steps", str(steps), "--seed", "7", "--output-path", str(out / "fresh.mp4"),
    ]  # fmt: skip
    _fresh_process(argv, out)  # builds the tiny set, its graphs and the prompt embeddings if missing
    fresh = _fresh_process(argv, out)

    engine = Engine(RunSettings(pipelines=(pipeline,), artifacts=artifacts, backend=backend, dtype="float32"))
    request = GenerationRequest(num_inference_steps=steps, seed=7)
    rows, first, identical = [], None, True
    for _ in range(calls):
        start = time.perf_counter()
        result = engine.generate(request)
        seconds = time.perf_counter() - start
        if first is None:
            first = result
        else:
            identical &= torch.equal(first.frames, result.frames) and torch.equal(first.audio, result.audio)
        del result
        gc.collect()
        rows.append({"seconds": round(seconds, 4), "rss_mb": round(_rss_mb(), 1)})
    steady = median(r["seconds"] for r in rows[1:]) if calls > 1 else rows[0]["seconds"]
    rss_growth = (rows[-1]["rss_mb"] - rows[1]["rss_mb"]) / rows[1]["rss_mb"] if calls > 2 else 0.0
    return {
        "pipeline": pipeline,
        "backend": backend,
        "steps": steps,
        "calls": rows,
        "first_call_seconds": rows[0]["seconds"],
        "steady_state_seconds": round(steady, 4),
        "fresh_process_seconds": round(fresh, 4),
        "steady_vs_fresh": round(steady / fresh, 4),
        "rss_growth_after_call_2": round(rss_growth, 4),
        "identical_outputs": identical,
        "goals": {
            "steady_vs_fresh_max": GOAL_STEADY_VS_FRESH,
            "rss_growth_max": GOAL_RSS_GROWTH,
            "met": steady / fresh <= GOAL_STEADY_VS_FRESH and rss_growth <= GOAL_RSS_GROWTH and identical,
        },
        "memory_policy": engine.memory.describe() if engine.memory else None,
    }


def format_resident(row: dict[str, Any]) -> str:
    lines = [
        f"resident engine, {row['pipeline']} on the tiny set, {row['backend']} float32, {row['steps']} steps, "
        f"{len(row['calls'])} calls",
        f"{'call':>5} {'seconds':>9} {'RSS MB':>9}",
    ]
    lines += [f"{i:>5} {r['seconds']:>9.2f} {r['rss_mb']:>9.0f}" for i, r in enumerate(row["calls"], 1)]
    met = "met" if row["goals"]["met"] else "NOT met"
    lines += [
        f"first call {row['first_call_seconds']:.2f} s; steady state (median of calls 2..N) "
        f"{row['steady_state_seconds']:.2f} s; fresh ltx-run process (warm artifacts) "
        f"{row['fresh_process_seconds']:.2f} s",
        f"steady / fresh {row['steady_vs_fresh']:.0%} (goal <= {GOAL_STEADY_VS_FRESH:.0%}); RSS after the last call vs "
        f"call 2 {row['rss_growth_after_call_2']:+.1%} (goal <= {GOAL_RSS_GROWTH:.0%}); identical outputs: "
        f"{row['identical_outputs']}; goals {met}",
    ]
    return "\n".join(lines)


def main_resident(calls: int, backend: str, artifacts: Path, steps: int, json_path: Path | None) -> int:
    if calls < 1:
        raise UserError(f"--resident {calls}: must be >= 1 calls")
    if steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    if backend not in ("eager", "ort"):
        raise UserError(f"--backends {backend} with --resident: time one backend, eager or ort")
    row = bench_resident(calls, backend, artifacts, steps)
    print(format_resident(row))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(row, indent=2) + "\n")
    return 0
