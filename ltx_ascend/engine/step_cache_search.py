"""`ltx-run PIPELINE ... --step-cache-search TARGET_PSNR`: calibrate a step cache on one prompt.

Runs the pipeline once uncached, then under candidate settings of one policy, and keeps the one
that skips the most DiT block calls while its frames stay at least TARGET_PSNR dB from the
uncached frames. Skipped block calls stand for speed (they are what the cache saves on every
backend; wall time on a shared host is too noisy to rank close candidates). The chosen SPEC goes
to a file that `--step-cache @FILE` reads, with the measured PSNR, SSIM and per-stage skip ratios
as comments (`ltx-plan --step-cache @FILE` predicts from those ratios).

  auto   threshold: a doubling sweep from 0.05 until a candidate misses the target (or three in a
         row skip the same), then bisection between the last that met it and the first that missed;
  block  (start, interval) pairs in order of the block calls they skip, first that meets it.

The policy's other settings (blocks=, warmup=, stages=) come from --step-cache as given.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ltx_ascend.atomic import atomic_write_text
from ltx_ascend.engine.step_cache import StepCacheSpec
from ltx_ascend.errors import UserError
from ltx_ascend.metrics import compare, ssim

DEFAULT_SPEC_FILE = "step-cache.spec"
AUTO_THRESHOLDS = tuple(round(0.05 * 2**k, 4) for k in range(10))  # 0.05 .. 25.6
AUTO_BISECTIONS = 3
BLOCK_INTERVALS = (2, 3, 4, 6)
BLOCK_STARTS = (1, 2, 3, 5)
MAX_BLOCK_TRIALS = 10


@dataclass
class Trial:
    spec: StepCacheSpec
    psnr_db: float
    ssim: float
    block_calls_run: int
    skipped: int
    dit_seconds: float
    skip_ratios: dict[str, float]

    def meets(self, target: float) -> bool:
        return self.psnr_db >= target


def _counts(timings) -> tuple[int, int, float, dict[str, float]]:
    stages = [s for s in timings.stages if s.dit is not None]
    calls = sum(s.dit.block_calls_run for s in stages)
    skipped = sum(s.dit.block_calls_skipped for s in stages)
    seconds = sum(s.dit.seconds for s in stages)
    return calls, skipped, seconds, {s.name: s.dit.skip_ratio for s in stages}


def search_step_cache(
    run: Callable[[StepCacheSpec], tuple],
    *,
    template: StepCacheSpec,
    target_psnr: float,
    steps: int,
    out: Path,
    describe: str,
    log: Callable[[str], None] = print,
) -> StepCacheSpec:
    """`run(spec) -> (Output, Timings)`; returns the chosen spec after writing it to `out`."""
    if template.policy not in ("auto", "block"):
        raise UserError(f"--step-cache-search searches auto or block, not {template.policy}: pass --step-cache auto")
    log(f"step-cache search ({template.policy}, target {target_psnr:g} dB): uncached reference run ...")
    reference, ref_timings = run(StepCacheSpec())
    ref_calls, _, ref_seconds, _ = _counts(ref_timings)
    log(f"  off: {ref_calls} DiT block calls, DiT {ref_seconds:.2f} s")
    trials: list[Trial] = []

    def trial(spec: StepCacheSpec) -> Trial:
        output, timings = run(spec)
        frames = compare(reference.frames.float(), output.frames.float(), peak=255.0)
        calls, skipped, seconds, ratios = _counts(timings)
        t = Trial(spec, frames.psnr_db, ssim(reference.frames, output.frames), calls, skipped, seconds, ratios)
        verdict = "meets" if t.meets(target_psnr) else "misses"
        log(
            f"  {spec}: PSNR {t.psnr_db:.2f} dB, SSIM {t.ssim:.4f}, skipped {skipped}/{calls + skipped} "
            f"block calls, DiT {seconds:.2f} s: {verdict} the target"
        )
        trials.append(t)
        return t

    if template.policy == "auto":
        _search_auto(template, target_psnr, trial)
    else:
        _search_block(template, target_psnr, steps, trial)
    passing = [t for t in trials if t.meets(target_psnr)]
    best = max(passing, key=lambda t: t.skipped, default=None)
    if best is None or best.skipped == 0:
        chosen = StepCacheSpec()
        summary = f"# no {template.policy} setting tried skipped a block call at >= {target_psnr:g} dB: cache off"
        ratios = {}
    else:
        chosen, ratios = best.spec, best.skip_ratios
        total = best.block_calls_run + best.skipped
        summary = (
            f"# chosen: frames {best.psnr_db:.2f} dB PSNR, SSIM {best.ssim:.4f} vs uncached; {best.skipped} of "
            f"{total} DiT block calls skipped ({100 * best.skipped / total:.1f} %); "
            f"DiT {best.dit_seconds:.2f} s vs {ref_seconds:.2f} s uncached"
        )
    lines = [
        f"# ltx-run --step-cache-search {target_psnr:g}: {describe}",
        summary,
        "# skip_ratio " + " ".join(f"{name.replace(' ', '_')}={r:.4f}" for name, r in ratios.items()),
        str(chosen),
    ]
    atomic_write_text(out, "\n".join(lines) + "\n")
    log(f"chose {chosen} -> {out} (use: --step-cache @{out})")
    return chosen


def _search_auto(template: StepCacheSpec, target: float, trial: Callable[[StepCacheSpec], Trial]) -> None:
    lo, hi = 0.0, None  # largest threshold known to meet the target, smallest known to miss it
    skipped: list[int] = []
    for threshold in AUTO_THRESHOLDS:
        t = trial(dataclasses.replace(template, threshold=threshold))
        if not t.meets(target):
            hi = threshold
            break
        lo = threshold
        skipped.append(t.skipped)
        if len(skipped) >= 3 and len(set(skipped[-3:])) == 1 and skipped[-1] > 0:
            return  # saturated: a higher threshold skips nothing more
    if hi is None:
        return
    for _ in range(AUTO_BISECTIONS):
        mid = round((lo + hi) / 2, 4)
        if trial(dataclasses.replace(template, threshold=mid)).meets(target):
            lo = mid
        else:
            hi = mid


def _search_block(template: StepCacheSpec, target: float, steps: int, trial: Callable[[StepCacheSpec], Trial]) -> None:
    candidates = [
        dataclasses.replace(template, start=start, interval=interval)
        for interval in BLOCK_INTERVALS
        for start in BLOCK_STARTS
        if start < steps
    ]
    candidates.sort(key=lambda s: (-s.reused_steps(steps), s.interval, s.start))
    for spec in candidates[:MAX_BLOCK_TRIALS]:
        if spec.reused_steps(steps) and trial(spec).meets(target):
            return


def read_skip_ratios(text: str) -> dict[str, float]:
    """The `# skip_ratio stage_1=0.45 ...` line of a SPEC file, as {"stage 1": 0.45}; {} if none."""
    for line in text.splitlines():
        if line.startswith("# skip_ratio"):
            return {k.replace("_", " "): float(v) for k, v in re.findall(r"(\S+)=([0-9.]+)", line)}
    return {}
