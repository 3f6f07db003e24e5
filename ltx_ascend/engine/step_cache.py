"""Step cache: skip the DiT blocks whose work repeats between denoising steps.

Adjacent denoising steps feed the DiT nearly the same activations, so a range of blocks A..B adds
nearly the same residual (x after block B minus x before block A) at both. A step cache keeps the
residual from the last step that ran those blocks and, at a step its policy marks as cached, adds
it instead of running them. Everything before A and after B (input graph, blocks outside the range,
output graph) still runs, so the timestep embedding and the skip masks of each pass stay exact.

SPEC (`ltx-run --step-cache SPEC`, or `@FILE` holding one):

  off                                          no cache (the default): bit-exact with no flag
  block:start=S,end=E,interval=I,blocks=A-B    MindIE SD's DiT block cache: at steps S <= s < E,
                                               blocks A..B reuse their residual, except every I-th
                                               step from S (s - S divisible by I), which recomputes
  auto[:threshold=T,warmup=W,blocks=A-B]       adaptive (EasyCache-style, see `AdaptivePolicy`)

and, for any policy, `stages=1` (default), `stages=2` or `stages=1+2`: which sampling stages cache.
A single-stage pipeline's stage counts as stage 1; stage 2 (three distilled steps) runs uncached
unless named. "Step" is the stage's DiT evaluation index: the Euler step, or for res_2s each of
its two evaluations per step.

State is per stage (one `StepCache` per DiT runner) and per guidance pass (cond, uncond, STG,
isolation passes have different activations, so each keeps its own residual). The decision to
reuse is taken once per DiT call (one denoising evaluation) and applies to every pass of it, so a
backend that batches the passes in one graph call and eager, which runs them one by one, skip the
same blocks and give the same output.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltx_ascend.errors import UserError
from ltx_ascend.validation import utf8_file

log = logging.getLogger(__name__)

POLICIES = ("off", "block", "auto")
DEFAULT_INTERVAL = 2
DEFAULT_START = 1
DEFAULT_THRESHOLD = 2.0  # in units of the first measured step's change (see AdaptivePolicy); docs/design/composition.md
DEFAULT_WARMUP = 2
_KEYS = {
    "off": {"stages"},
    "block": {"start", "end", "interval", "blocks", "stages"},
    "auto": {"threshold", "warmup", "blocks", "stages"},
}
_FORM = "off | block:start=S,end=E,interval=I,blocks=A-B | auto:threshold=T (each with optional stages=1+2)"


@dataclass(frozen=True)
class StepCacheSpec:
    """A parsed SPEC. `blocks` is inclusive (A, B); None means every block."""

    policy: str = "off"
    start: int = DEFAULT_START
    end: int | None = None
    interval: int = DEFAULT_INTERVAL
    blocks: tuple[int, int] | None = None
    threshold: float = DEFAULT_THRESHOLD
    warmup: int = DEFAULT_WARMUP
    stages: frozenset[int] = frozenset({1})

    @property
    def active(self) -> bool:
        return self.policy != "off"

    def applies_to(self, stage: int | None) -> bool:
        return self.active and (1 if stage is None else stage) in self.stages

    def block_range(self, num_layers: int) -> tuple[int, int]:
        """(first, stop) with stop exclusive."""
        if self.blocks is None:
            return 0, num_layers
        return self.blocks[0], self.blocks[1] + 1

    def reused_steps(self, steps: int) -> int:
        """Steps of a `steps`-step stage at which a block schedule reuses (never step 0: nothing cached)."""
        if self.policy != "block":
            raise ValueError("only a block schedule's reuse is known before the run")
        stop = steps if self.end is None else min(self.end, steps)
        return sum((s - self.start) % self.interval != 0 for s in range(max(self.start, 1), stop))

    def check(self, num_layers: int) -> None:
        """Against the model: the block range must exist."""
        if self.blocks is not None and self.blocks[1] >= num_layers:
            raise UserError(
                f"--step-cache {self}: blocks={self.blocks[0]}-{self.blocks[1]} but the DiT has {num_layers} blocks "
                f"(0-{num_layers - 1}): pick a range inside it"
            )

    def __str__(self) -> str:
        """The canonical SPEC text (parses back to an equal spec)."""
        if not self.active:
            return "off"
        parts = []
        if self.policy == "block":
            parts += [f"start={self.start}"] + ([f"end={self.end}"] if self.end is not None else [])
            parts += [f"interval={self.interval}"]
        else:
            parts += [f"threshold={self.threshold:g}", f"warmup={self.warmup}"]
        if self.blocks is not None:
            parts.append(f"blocks={self.blocks[0]}-{self.blocks[1]}")
        if self.stages != frozenset({1}):
            parts.append("stages=" + "+".join(str(s) for s in sorted(self.stages)))
        return f"{self.policy}:" + ",".join(parts)

    def for_stage(self, stage: int | None, num_layers: int) -> StepCache | None:
        """The cache state for one sampling stage's DiT, or None where this spec leaves it uncached."""
        if not self.applies_to(stage):
            return None
        self.check(num_layers)
        policy = BlockSchedule(self) if self.policy == "block" else AdaptivePolicy(self)
        return StepCache(policy, *self.block_range(num_layers), num_layers)


def parse_spec(text: str) -> StepCacheSpec:
    """SPEC text or `@FILE` (first line that is not blank or a `#` comment) -> StepCacheSpec."""
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        lines = [ln.strip() for ln in utf8_file(path, f"--step-cache {text}").splitlines()]
        specs = [ln for ln in lines if ln and not ln.startswith("#")]
        if not specs:
            raise UserError(f"--step-cache {text}: {path} holds no SPEC line: write one, e.g. auto:threshold=2")
        text = specs[0]
    policy, _, rest = text.partition(":")
    policy = policy.strip()
    if policy not in POLICIES:
        raise UserError(f"--step-cache {text}: unknown policy {policy!r}; the form is {_FORM}")
    values: dict = {}
    for part in (p.strip() for p in rest.split(",")) if rest.strip() else ():
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS[policy]:
            allowed = ", ".join(sorted(_KEYS[policy]))
            raise UserError(f"--step-cache {text}: {part!r} is not a {policy} setting (it takes {allowed})")
        if key in values:
            raise UserError(f"--step-cache {text}: {key} given twice: give it once")
        values[key] = _parse_value(text, key, value.strip())
    spec = StepCacheSpec(policy=policy, **values)
    if spec.end is not None and spec.end <= spec.start:
        raise UserError(f"--step-cache {text}: end={spec.end} must be greater than start={spec.start}")
    return spec


def _parse_value(text: str, key: str, value: str):
    def fail(expected: str) -> UserError:
        return UserError(f"--step-cache {text}: {key}={value} is not {expected}")

    if key in ("start", "end", "interval", "warmup"):
        if not (value.isascii() and value.isdigit()):  # str.isdigit alone takes '²'
            raise fail("a whole number >= 0")
        number = int(value)
        if key == "interval" and number < 1:
            raise fail("a whole number >= 1")
        return number
    if key == "threshold":
        try:
            number = float(value)
        except ValueError:
            raise fail("a number") from None
        if not number >= 0 or number == float("inf"):
            raise fail("a finite number >= 0")
        return number
    if key == "blocks":
        match = re.fullmatch(r"([0-9]+)-([0-9]+)", value)
        if not match or int(match[1]) > int(match[2]):
            raise fail("a block range A-B with A <= B (e.g. blocks=4-43)")
        return int(match[1]), int(match[2])
    if key == "stages":
        parts = value.split("+")
        if not all(p in ("1", "2") for p in parts):
            raise fail("1, 2 or 1+2")
        return frozenset(int(p) for p in parts)
    raise AssertionError(key)


# ------------------------------------------------------------------------------------------------
# Counting


@dataclass
class BlockCounts:
    """DiT work of one stage, in pass-blocks (one block on one guidance pass) and seconds.

    `block_calls_run` counts the block calls that ran, `block_calls_skipped` those a step cache
    replaced by a stored residual; their sum is the stage's total. A batched graph call that runs
    four passes through one block counts four block calls: the unit is the same for a backend that
    batches passes and for eager, which runs them one by one."""

    block_calls_run: int = 0
    block_calls_skipped: int = 0
    seconds: float = 0.0

    @property
    def skip_ratio(self) -> float:
        total = self.block_calls_run + self.block_calls_skipped
        return self.block_calls_skipped / total if total else 0.0

    def to_json(self) -> dict:
        return {
            "block_calls_run": self.block_calls_run,
            "block_calls_skipped": self.block_calls_skipped,
            "seconds": round(self.seconds, 4),
        }


# ------------------------------------------------------------------------------------------------
# Policies: given the call index (and, for the adaptive one, the lead pass's activations), reuse?


class BlockSchedule:
    """MindIE SD's DiT block cache: a fixed schedule of steps (start, end, interval)."""

    def __init__(self, spec: StepCacheSpec) -> None:
        self.spec = spec

    def reuse(self, call: int, lead_in: torch.Tensor) -> bool:
        s = self.spec
        inside = s.start <= call and (s.end is None or call < s.end)
        return inside and (call - s.start) % s.interval != 0

    def computed(self, lead_in: torch.Tensor, lead_out: torch.Tensor) -> None:
        pass


def _mean_abs(t: torch.Tensor) -> float:
    return float(t.float().abs().mean())


class AdaptivePolicy:
    """Training-free adaptive caching after EasyCache (Zhou et al., "Less is Enough: Training-Free
    Video Diffusion Acceleration via Runtime-Adaptive Caching", arXiv 2507.02860,
    github.com/H-EmbodVis/EasyCache), applied to the cached block range.

    At a computed step the policy measures the range's transformation rate
    k = |out_t - out_s| / |in_t - in_s| against the previous computed step s (mean absolute values,
    `in` the activations entering block A, `out` those leaving block B). At a later step it predicts
    the relative output change from the input change alone, k * |in_t - in_{t-1}| / |out_s|, and
    accumulates it. The threshold is scale-free: the sum is measured in units of the relative output
    change the range showed over its first measured step (`reference`, at the end of the warmup), so
    `threshold=1` means "reuse while the predicted drift since the last computed step stays under one
    early step's change" whatever the model's widths, depth or activation scale (a threshold in raw
    relative change, as EasyCache's, was fitted to one model: on other tiny DiTs it skipped nothing).
    Over the threshold the step recomputes and the sum restarts. The first `warmup` steps always compute.

    Why EasyCache rather than TeaCache or MagCache: TeaCache rescales its input-change metric with a
    polynomial fitted offline per model (none exists for LTX-2.3), and MagCache needs a calibration
    run of residual-magnitude ratios per model; EasyCache's k is measured at run time, so it needs
    nothing per model and works on any checkpoint, and its input metric is free (the input graph
    runs anyway, no extra block). FirstBlockCache would always run block 0 to decide, which caps the
    saving at (N-1)/N of the blocks. Like EasyCache, the decision is taken on the first (conditional)
    pass and applies to every pass of the step.
    """

    def __init__(self, spec: StepCacheSpec) -> None:
        self.spec = spec
        self.accumulated = 0.0
        self.previous_in: torch.Tensor | None = None  # lead input at the previous step
        self.last_in: torch.Tensor | None = None  # lead input / output at the last computed step
        self.last_out: torch.Tensor | None = None
        self.rate: float | None = None
        self.reference: float | None = None  # relative output change over the first measured step

    def reuse(self, call: int, lead_in: torch.Tensor) -> bool:
        previous, self.previous_in = self.previous_in, lead_in
        if call < self.spec.warmup or self.rate is None or previous is None or self.last_out is None:
            return False
        norm = _mean_abs(self.last_out) * (self.reference or 0.0)
        self.accumulated += self.rate * _mean_abs(lead_in - previous) / norm if norm > 0 else float("inf")
        if self.accumulated < self.spec.threshold:
            return True
        self.accumulated = 0.0
        return False

    def computed(self, lead_in: torch.Tensor, lead_out: torch.Tensor) -> None:
        if self.last_in is not None and self.last_out is not None:
            change = _mean_abs(lead_in - self.last_in)
            out_change = _mean_abs(lead_out - self.last_out)
            self.rate = out_change / change if change > 0 else None
            norm = _mean_abs(self.last_out)
            if self.reference is None and norm > 0 and out_change > 0:
                self.reference = out_change / norm
        self.last_in, self.last_out = lead_in, lead_out
        self.accumulated = 0.0


# ------------------------------------------------------------------------------------------------
# The per-stage cache the DiT runner consults


def _flat(acts: dict[str, torch.Tensor], row: int) -> torch.Tensor:
    """One row's block-range activations, video and audio tokens together."""
    return torch.cat([acts["video_x"][row].reshape(-1), acts["audio_x"][row].reshape(-1)])


@dataclass
class StepCache:
    """One stage's cache: blocks [first, stop) reuse residuals per guidance pass."""

    policy: BlockSchedule | AdaptivePolicy
    first: int
    stop: int
    num_layers: int
    call: int = -1
    residuals: dict = field(default_factory=dict)  # pass key -> (video residual, audio residual)
    _reuse: bool | None = None

    def begin_call(self) -> None:
        """A new DiT evaluation (one denoising step's passes) starts."""
        self.call += 1
        self._reuse = None

    def run_blocks(self, runner, acts: dict, feeds: dict, keys: list, counts: BlockCounts) -> dict:
        """All blocks of one graph call on `acts`; `keys[i]` names row i's guidance pass (None: padding).
        The first call after `begin_call` holds the step's lead pass in row 0 and decides for the step."""
        real = sum(k is not None for k in keys)
        runner.run_blocks(acts, feeds, 0, self.first)
        lead = self._reuse is None
        if lead:
            self._reuse = self.policy.reuse(self.call, _flat(acts, 0))
        known = [k for k in keys if k is not None]
        if self._reuse and all(k in self.residuals for k in known):
            rows = [self.residuals[k if k is not None else known[-1]] for k in keys]
            acts["video_x"] = acts["video_x"] + torch.stack([r[0] for r in rows])
            acts["audio_x"] = acts["audio_x"] + torch.stack([r[1] for r in rows])
            counts.block_calls_skipped += real * (self.stop - self.first)
        else:
            video_in, audio_in = acts["video_x"], acts["audio_x"]
            lead_in = _flat(acts, 0) if lead else None
            runner.run_blocks(acts, feeds, self.first, self.stop)
            for row, key in enumerate(keys):
                if key is not None:
                    self.residuals[key] = (acts["video_x"][row] - video_in[row], acts["audio_x"][row] - audio_in[row])
            if lead:
                self.policy.computed(lead_in, _flat(acts, 0))
            counts.block_calls_run += real * (self.stop - self.first)
        runner.run_blocks(acts, feeds, self.stop, self.num_layers)
        counts.block_calls_run += real * (self.num_layers - (self.stop - self.first))
        return acts
