"""CANN ATC command lines and runs: ONNX -> Ascend offline model (.om).

Command lines are argv lists, never shell strings, so paths with spaces or quotes are passed as they are.
Every flag and value here follows the CANN ATC tool reference ("ATC Instructions", parameter pages
`--soc_version`, `--precision_mode_v2`, `--host_env_os`, `--host_env_cpu`, `--external_weight`, `--log`).
"""

from __future__ import annotations

import collections
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ltx_ascend.errors import UserError

# --------------------------------------------------------------------------- precision

PRECISIONS = ("origin", "fp16", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16")
"""The values ATC's `--precision_mode_v2` takes (ATC reference, `--precision_mode_v2`). The old
`--precision_mode` values (must_keep_origin_dtype, allow_fp32_to_fp16, ...) are not accepted by it.
ATC's default, fp16, silently downcasts bf16/fp32 graphs, so we always pass one explicitly."""

BF16_PRECISIONS = ("mixed_bfloat16",)

# SoCs with bfloat16 kernels. The `--precision_mode_v2` page (CANN 8.0.RC3) lists bfloat16 support for
# "Atlas A2 training / Atlas 800I A2 inference" (Ascend910B*) and "Atlas 200/500 A2 inference"
# (Ascend310B*); later releases add "Atlas A3" (Ascend910_93*). Atlas 300I (Ascend310P*) and the
# Atlas training series (Ascend910A/ProA/ProB/PremiumA) have none.
_BF16_SOC_RE = re.compile(r"^Ascend(?:910B|910_93|310B)")

LOG_LEVELS = ("debug", "info", "warning", "error", "null")

# --------------------------------------------------------------------------- SoC names

# `--soc_version` values: "Ascend" + the Name column of `npu-smi info` (Ascend910B4, Ascend910B2C,
# Ascend910B4-1, Ascend310P3, Ascend910ProB), or on Atlas A3 "<Chip Name>_<NPU Name>" from
# `npu-smi info -t board` (Ascend910_9392) (ATC reference, `--soc_version`).
_SOC_RE = re.compile(r"^Ascend\d{3}(?:[A-Z][A-Za-z0-9]*(?:-\d+)?|_\d{4})?$")
# A chip Name cell in `npu-smi info`: "910B4", "310P3", sometimes already "Ascend910B4".
_NPU_NAME_RE = re.compile(r"^(?:Ascend)?(\d{3}[A-Za-z0-9_-]*)$")
# Names `npu-smi info` prints that do not say which SoC it is: older drivers print "910B" on any
# 910B1..B4, and Atlas A3 prints "Ascend910" for every 910_93xx. `npu-smi info -t board` tells.
_AMBIGUOUS_NAMES = {"910", "910B"}
_SHAPE_NAME_BAD = re.compile(r"[;,\s]")

_TAIL_LINES = 5


def soc_has_bf16(soc: str) -> bool:
    """Whether `soc` has bfloat16 kernels (Atlas A2 / A3 / 200I-500 A2)."""
    return bool(_BF16_SOC_RE.match(soc))


def check_precision_for_soc(soc: str, precision: str, graph_dtype: str | None = None) -> None:
    """One-line UserError when `precision` (or a bfloat16 graph kept as it is) needs bf16 the SoC lacks."""
    _check_precision(precision)
    if soc_has_bf16(soc):
        return
    if precision in BF16_PRECISIONS:
        raise UserError(
            f"--precision {precision} needs bfloat16, which {soc} does not have (only Atlas A2/A3: Ascend910B*, "
            "Ascend910_93*); use --precision mixed_float16 or origin"
        )
    if precision == "origin" and graph_dtype in ("bfloat16", "bf16"):
        raise UserError(
            f"this graph is bfloat16 and {soc} has no bfloat16 kernels: re-export with --dtype float16 (or "
            "float32), or compile with --precision fp16"
        )


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


# --------------------------------------------------------------------------- SoC detection


def _first_npu_row(text: str) -> tuple[int, int, str] | None:
    """(NPU id, chip id, Name) of the first NPU in an `npu-smi info` table, or None.

    The table pairs rows: "| <NPU id>  <Name> | <Health> | ..." then "| <Chip> <Device/Phy-ID> | <Bus-Id> |".
    Only the first kind has a chip Name (three digits, then letters/digits); the chip id is the first
    number of the row after it (Atlas A3 has two chips per NPU, ATC wants the first one's name).
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = line.strip().split("|")
        if len(cells) < 3 or cells[0] != "":
            continue
        tokens = cells[1].split()
        if len(tokens) != 2 or not tokens[0].isdigit() or not _NPU_NAME_RE.match(tokens[1]):
            continue
        chip = 0
        if i + 1 < len(lines):
            following = lines[i + 1].strip().split("|")
            first = following[1].split() if len(following) > 2 else []
            if first and first[0].isdigit():
                chip = int(first[0])
        return int(tokens[0]), chip, tokens[1]
    return None


def parse_npu_smi(text: str) -> str | None:
    """`--soc_version` for the first NPU of `npu-smi info`: "Ascend" + Name; None if there is no NPU or
    the Name does not say which SoC it is ("910B", A3's "Ascend910": see `parse_npu_smi_board`)."""
    row = _first_npu_row(text)
    if row is None:
        return None
    name = _NPU_NAME_RE.match(row[2]).group(1)  # type: ignore[union-attr]
    if name in _AMBIGUOUS_NAMES:
        return None
    soc = f"Ascend{name}"
    return soc if _SOC_RE.match(soc) else None


def parse_npu_smi_board(text: str) -> str | None:
    """`--soc_version` from `npu-smi info -t board -i <npu> -c <chip>`: "Ascend<Chip Name>" on Atlas A2
    (Chip Name 910B4), "<Chip Name>_<NPU Name>" on Atlas A3 (Ascend910 + 9392 -> Ascend910_9392), as the
    ATC `--soc_version` page says to build it. None when the fields do not name one SoC."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    chip = fields.get("Chip Name", "")
    match = _NPU_NAME_RE.match(chip)
    if not match:
        return None
    npu_name = fields.get("NPU Name", "")
    if npu_name and npu_name.upper() not in ("NA", "-"):
        soc = f"Ascend{match.group(1)}_{npu_name}"
    elif match.group(1) in _AMBIGUOUS_NAMES:
        return None
    else:
        soc = f"Ascend{match.group(1)}"
    return soc if _SOC_RE.match(soc) else None


def _npu_smi(npu_smi: str, *args: str, timeout: float) -> str | None:
    try:
        result = subprocess.run(
            [npu_smi, *args], capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def soc_from_acl() -> str | None:
    """`acl.get_soc_name()` (pyACL, "get_soc_name": the SoC version of this host, None on failure;
    aclrtGetSocName needs no aclInit, per CANN runtime's get_soc_version example, and does not
    initialise torch_npu, which is why tilelang-ascend#1694 also asks acl first). None without pyACL."""
    try:
        acl = importlib.import_module("acl")
    except Exception:  # no CANN, or CANN's libraries missing: not an error here
        return None
    get = getattr(acl, "get_soc_name", None)
    try:
        name = get() if get is not None else None
    except Exception:
        return None
    return name if isinstance(name, str) and _SOC_RE.match(name) else None


def detect_soc_with_source(timeout: float = 10.0) -> tuple[str | None, str]:
    """(this host's `--soc_version`, where it came from or why it is unknown).

    pyACL's `acl.get_soc_name()` first (what the runtime itself reports), then `npu-smi info`, and
    `npu-smi info -t board` when the table's Name is ambiguous ("910B" on older drivers, "Ascend910" on A3).
    """
    soc = soc_from_acl()
    if soc is not None:
        return soc, "acl.get_soc_name()"
    npu_smi = shutil.which("npu-smi")
    if npu_smi is None:
        return None, "no pyACL and no npu-smi on this host"
    table = _npu_smi(npu_smi, "info", timeout=timeout)
    if table is None:
        return None, "`npu-smi info` failed"
    row = _first_npu_row(table)
    if row is None:
        return None, "`npu-smi info` lists no NPU"
    soc = parse_npu_smi(table)
    if soc is not None:
        return soc, "npu-smi info"
    npu, chip, name = row
    board = _npu_smi(npu_smi, "info", "-t", "board", "-i", str(npu), "-c", str(chip), timeout=timeout)
    soc = parse_npu_smi_board(board or "")
    if soc is not None:
        return soc, f"npu-smi info -t board -i {npu} -c {chip}"
    return None, f"npu-smi reports the chip as {name!r}, which does not name one SoC"


def detect_soc(timeout: float = 10.0) -> str | None:
    """This host's `--soc_version`, or None when it cannot be told (see `detect_soc_with_source`)."""
    return detect_soc_with_source(timeout)[0]


# --------------------------------------------------------------------------- target host OS / CPU

HOST_OSES = ("linux",)
HOST_CPUS = ("x86_64", "aarch64")
_CPU_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def this_host() -> tuple[str, str]:
    """(OS, CPU) of the machine ATC runs on, spelled as `--host_env_os` / `--host_env_cpu` take them."""
    cpu = platform.machine().lower()
    return platform.system().lower(), _CPU_ALIASES.get(cpu, cpu)


def check_host_env(os_name: str, cpu: str) -> None:
    if os_name not in HOST_OSES:
        raise UserError(f"--host-os {os_name}: ATC builds for {', '.join(HOST_OSES)}; use one of those")
    if cpu not in HOST_CPUS:
        raise UserError(f"--host-arch {cpu}: use {' or '.join(HOST_CPUS)} (the CPU of the host that runs the .om)")


# --------------------------------------------------------------------------- jobs and argv


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
            "Ascend310P3 (Atlas A3: Ascend910_93xx from `npu-smi info -t board`)"
        )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"bad precision {precision!r}; use one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class AtcJob:
    """One ATC compile: a static-shape ONNX graph for one SoC. `output` is the .om path without `.om`.

    `host_os`/`host_cpu` set `--host_env_os`/`--host_env_cpu`: only for a model built on one kind of host
    to run on another (x86_64 build machine, aarch64 Atlas server); ATC then names the file
    `{output}_{os}_{cpu}.om` (see `om_candidates`).
    """

    model: Path
    output: Path
    soc: str
    input_shapes: Mapping[str, tuple[int, ...]]
    precision: str = "origin"
    external_weight: bool = False
    log: str = "error"
    host_os: str | None = None
    host_cpu: str | None = None

    def __post_init__(self) -> None:
        _check_soc(self.soc)
        _check_precision(self.precision)
        if self.log not in LOG_LEVELS:
            raise UserError(f"bad ATC log level {self.log!r}; use one of {', '.join(LOG_LEVELS)}")
        if (self.host_os is None) != (self.host_cpu is None):
            raise UserError("--host_env_os and --host_env_cpu go together: give both or neither")
        if self.host_os is not None:
            check_host_env(self.host_os, self.host_cpu)  # type: ignore[arg-type]
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
        """The plain name ATC writes: `{output}.om` (it may add `_<os>_<arch>`: see `om_candidates`)."""
        return self.output.with_name(self.output.name + ".om")

    def om_candidates(self) -> list[Path]:
        """Files ATC may have written for this job: `{output}.om`, or `{output}_<os>_<arch>.om` (documented
        on `--host_env_os`/`--host_env_cpu`: "if the generated offline model contains the OS type and
        architecture, for example xxx_linux_x86_64.om, it runs only there")."""
        folder, stem = self.output.parent, self.output.name
        found = [self.om_path] if self.om_path.is_file() else []
        oses, cpus = "|".join(HOST_OSES), "|".join(HOST_CPUS)
        suffixed = re.compile(re.escape(stem) + rf"_(?:{oses})_(?:{cpus})\.om")
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if suffixed.fullmatch(p.name) and p.is_file())
        return found


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
    # Optional flags, one block each.
    if job.external_weight:
        argv.append("--external_weight=1")
    if job.host_os is not None:
        argv += [f"--host_env_os={job.host_os}", f"--host_env_cpu={job.host_cpu}"]
    argv.append(f"--log={job.log}")
    return argv


# --------------------------------------------------------------------------- running ATC


def run_atc(job: AtcJob, atc_path: str | os.PathLike[str], log_file: Path | None = None) -> Path:
    """Run ATC for `job`, echoing its output live (compiles take minutes) and to `log_file`; return the
    .om it wrote (`{output}.om` or `{output}_<os>_<arch>.om`, whichever ATC chose).

    Raises UserError with ATC's last lines when it exits non-zero or leaves no fresh .om.
    """
    argv = build_atc_argv(job, atc_path)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    for stale in job.om_candidates():  # a leftover must never pass for this run's output
        stale.unlink()
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
    written = job.om_candidates()
    if not written:
        raise UserError(
            f"ATC exited 0 but wrote no {job.om_path} (nor {job.output.name}_<os>_<arch>.om): {last}{where}"
        )
    if len(written) > 1:
        wanted = f"{job.output.name}_{job.host_os}_{job.host_cpu}.om" if job.host_os else job.om_path.name
        chosen = [p for p in written if p.name == wanted]
        if len(chosen) != 1:
            names = ", ".join(p.name for p in written)
            raise UserError(f"ATC wrote several models ({names}) for {job.output.name}; remove them and rerun")
        return chosen[0]
    return written[0]
