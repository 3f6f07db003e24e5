"""Per-stage timings, printed as the seed's table (steps x seconds per step, decode, total)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from ltx_ascend.atomic import atomic_write_text


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    steps: list[float] = field(default_factory=list)


class Timings:
    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        record = Stage(name)
        self.stages.append(record)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start

    def table(self) -> str:
        lines = [f"{'stage':<22} {'steps':>16} {'seconds':>9}", "-" * 49]
        for s in self.stages:
            steps = f"{len(s.steps)} x {median(s.steps):.2f} s" if s.steps else ""
            lines.append(f"{s.name:<22} {steps:>16} {s.seconds:>9.2f}")
        lines.append(f"{'total':<22} {'':>16} {self.total:>9.2f}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "stages": [
                {
                    "name": s.name,
                    "seconds": round(s.seconds, 4),
                    "steps": len(s.steps),
                    "seconds_per_step": round(median(s.steps), 4) if s.steps else None,
                }
                for s in self.stages
            ],
            "total_seconds": round(self.total, 4),
        }

    def write_json(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
