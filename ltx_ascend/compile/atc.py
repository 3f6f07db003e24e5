"""CANN ATC command lines and runs: ONNX -> Ascend offline model (.om).

Command lines are argv lists, never shell strings, so paths with spaces or quotes are passed as they are.
FACTS.md ("CANN ATC") is the source for every flag used here.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ltx_ascend.errors import UserError

PRECISIONS = ("origin", "mixed_bfloat16", "mixed_float16", "must_keep_origin_dtype")
"""Values of `--precision_mode_v2` we allow. Its ATC default, fp16, silently downcasts bf16/fp32 graphs."""

LOG_LEVELS = ("debug", "info", "warning", "error", "null")

# "Ascend" + the chip Name from npu-smi: Ascend910B4, Ascend310P3, Ascend910ProB, Ascend310B1, Ascend910_9392.
_SOC_RE = re.compile(r"^Ascend\d{3}(?:[A-Z][A-Za-z]*\d*|_\d{4})?$")
# A chip Name cell in `npu-smi info`: "910B4", "310P3", sometimes already "Ascend910B4".
_NPU_NAME_RE = re.compile(r"^(?:Ascend)?(\d{3}[A-Za-z0-9]*)$")
_SHAPE_NAME_BAD = re.compile(r"[;,\s]")

_TAIL_LINES = 5


def find_atc() -> Path | None:
    """Locate the `atc` binary: PATH first, then the folders CANN's set_env.sh exports; None if absent."""
    found = shutil.which("atc")
    if found:
        return Path(found)
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        home = os.environ.get(var)
        if not home:
            continue
        candidate = Path(home) / "bin" / "atc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_atc_message() -> str:
    """The one-line fix for a host without ATC."""
    return (
        "ATC was not found: install the CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
        "(or set ASCEND_TOOLKIT_HOME), or use `--target ort` / `--dry-run`"
    )


def parse_npu_smi(text: str) -> str | None:
    """Return "Ascend<Name>" for the first NPU row of `npu-smi info` output, or None if there is none.

    The table pairs rows: "| <NPU id>  <Name> | <Health> | ..." then "| <Chip> <Device> | <Bus-Id> | ...".
    Only the first kind has a chip Name (three digits, then letters/digits), which is what --soc_version needs.
    """
    for line in text.splitlines():
        cells = line.strip().split("|")
        if len(cells) < 3 or cells[0] != "":
            continue
        tokens = cells[1].split()
        if len(tokens) != 2 or not tokens[0].isdigit():
            continue
        match = _NPU_NAME_RE.match(tokens[1])
        if match:
            return f"Ascend{match.group(1)}"
    return None


def detect_soc(timeout: float = 10.0) -> str | None:
    """Ask `npu-smi info` for this host's chip so --soc_version can default to it; None when unknown."""
    npu_smi = shutil.which("npu-smi")
    if npu_smi is None:
        return None
    try:
        result = subprocess.run(
            [npu_smi, "info"], capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return parse_npu_smi(result.stdout)


def default_precision(dtype: str) -> str:
    """`--precision_mode_v2` for a graph exported in `dtype`: always "origin".

    float32/bfloat16: "origin" keeps the exported dtype (ATC's fp16 default would downcast and can overflow).
    float16: the graph is already fp16, so "origin" compiles it as written and adds no casts.
    """
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    name = aliases.get(dtype.lower(), dtype.lower())
    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown graph dtype {dtype!r}; use float32, bfloat16 or float16")
    return "origin"


def _check_soc(soc: str) -> None:
    if not _SOC_RE.match(soc):
        raise UserError(
            f"bad --soc_version {soc!r}; use 'Ascend' + the Name column of `npu-smi info`, e.g. Ascend910B4 or "
            "Ascend310P3"
        )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"bad precision {precision!r}; use one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class AtcJob:
    """One ATC compile: a static-shape ONNX graph for one SoC. `output` is the .om path without `.om`."""

    model: Path
    output: Path
    soc: str
    input_shapes: Mapping[str, tuple[int, ...]]
    precision: str = "origin"
    external_weight: bool = False
    log: str = "error"

    def __post_init__(self) -> None:
        _check_soc(self.soc)
        _check_precision(self.precision)
        if self.log not in LOG_LEVELS:
            raise UserError(f"bad ATC log level {self.log!r}; use one of {', '.join(LOG_LEVELS)}")
        if not self.input_shapes:
            raise UserError("ATC job has no input shapes; pass every graph input with its static shape")
        shapes: dict[str, tuple[int, ...]] = {}
        for name, dims in self.input_shapes.items():
            if not name or _SHAPE_NAME_BAD.search(name):
                raise UserError(f"input name {name!r} cannot go into --input_shape; rename the graph input")
            dims = tuple(dims)
            if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
                raise UserError(f"input {name!r} shape {dims} is not static; give positive integer dims")
            shapes[name] = dims
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "input_shapes", MappingProxyType(shapes))

    @property
    def om_path(self) -> Path:
        """Where ATC writes the model: `{output}.om`."""
        return self.output.with_name(self.output.name + ".om")


def format_input_shape(input_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """`name1:d1,d2;name2:d1` in graph-input order, as ATC's --input_shape expects."""
    return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in input_shapes.items())


def build_atc_argv(job: AtcJob, atc: str | os.PathLike[str] = "atc") -> list[str]:
    """The exact ATC argv for `job`. --precision_mode_v2 is always set; --precision_mode never is."""
    _check_soc(job.soc)
    _check_precision(job.precision)
    argv = [
        str(atc),
        "--framework=5",
        f"--model={job.model}",
        f"--output={job.output}",
        f"--soc_version={job.soc}",
        f"--input_shape={format_input_shape(job.input_shapes)}",
        f"--precision_mode_v2={job.precision}",
    ]
    if job.external_weight:
        argv.append("--external_weight=1")
    argv.append(f"--log={job.log}")
    return argv


def run_atc(job: AtcJob, atc_path: str | os.PathLike[str], log_file: Path | None = None) -> Path:
    """Run ATC for `job`, echoing its output live (compiles take minutes) and to `log_file`; return the .om.

    Raises UserError with ATC's last lines when it exits non-zero or leaves no fresh `{output}.om`.
    """
    argv = build_atc_argv(job, atc_path)
    om = job.om_path
    before = om.stat().st_mtime_ns if om.exists() else None
    job.output.parent.mkdir(parents=True, exist_ok=True)
    if log_file is not None:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    log = open(log_file, "w", encoding="utf-8") if log_file is not None else None  # noqa: SIM115
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except FileNotFoundError:
            raise UserError(missing_atc_message()) from None
        except PermissionError:
            raise UserError(f"{atc_path} is not executable; point to CANN's bin/atc") from None
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if log is not None:
                    log.write(line)
                    log.flush()
                if line.strip():
                    tail.append(line.strip())
            code = proc.wait()
    finally:
        if log is not None:
            log.close()
    where = f"; full log: {log_file}" if log_file is not None else ""
    last = " | ".join(tail) or "(no output)"
    if code != 0:
        raise UserError(f"ATC failed with exit code {code}: {last}{where}")
    if not om.is_file() or (before is not None and om.stat().st_mtime_ns == before):
        raise UserError(f"ATC exited 0 but wrote no {om}: {last}{where}")
    return om
