"""Per-stage timings, printed as the seed's table (steps x seconds per step, decode, total).

A sampling stage's row is named after its declaration (`stages.StageSpec`) and carries what the
declaration plans for it (steps, passes, DiT evaluations, sampler) next to what was measured."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from ltx_ascend.atomic import atomic_write_text
from ltx_ascend.engine.stages import PlannedStage
from ltx_ascend.engine.step_cache import BlockCounts


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    steps: list[float] = field(default_factory=list)
    dit: BlockCounts | None = None  # the stage's DiT work (DiT runners created inside it add up here)
    plan: PlannedStage | None = None  # a sampling stage: what its declaration runs


class Timings:
    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self._open: list[Stage] = []
        self._start = time.perf_counter()
        self.backends: dict[str, str] = {}  # component -> what ran it, variant named ("ort (ort-fused)")

    @contextmanager
    def stage(self, name: str, plan: PlannedStage | None = None):
        record = Stage(name, plan=plan)
        self.stages.append(record)
        self._open.append(record)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            self._open.remove(record)

    def dit_counts(self) -> BlockCounts:
        """The counters a DiT runner created now adds to: the innermost open stage's (unrecorded if none)."""
        if not self._open:
            return BlockCounts()
        record = self._open[-1]
        if record.dit is None:
            record.dit = BlockCounts()
        return record.dit

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start

    def table(self) -> str:
        lines = [f"{'stage':<22} {'steps':>16} {'seconds':>9} {'DiT s':>8} {'DiT blocks run/skipped':>23}", "-" * 82]
        for s in self.stages:
            steps = f"{len(s.steps)} x {median(s.steps):.2f} s" if s.steps else ""
            dit = f"{s.dit.seconds:>8.2f} {f'{s.dit.block_calls_run}/{s.dit.block_calls_skipped}':>23}" if s.dit else ""
            lines.append(f"{s.name:<22} {steps:>16} {s.seconds:>9.2f} {dit}".rstrip())
        lines.append(f"{'total':<22} {'':>16} {self.total:>9.2f}")
        if self.backends:
            lines.append("backends: " + ", ".join(f"{c}={b}" for c, b in self.backends.items()))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "stages": [
                {
                    "name": s.name,
                    "seconds": round(s.seconds, 4),
                    "steps": len(s.steps),
                    "seconds_per_step": round(median(s.steps), 4) if s.steps else None,
                    **({"dit": s.dit.to_json()} if s.dit else {}),
                    **({"plan": asdict(s.plan)} if s.plan else {}),
                }
                for s in self.stages
            ],
            "total_seconds": round(self.total, 4),
            "backends": self.backends,
        }

    def write_json(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
