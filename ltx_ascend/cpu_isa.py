"""The host CPU's vector ISA (avx2 / avx512f / avx512_vnni / amx): what sets the ratios between backends.

Int8 matmuls are fast only with an int8 dot-product instruction (AVX-512 VNNI, AVX-VNNI or AMX);
without one (an AVX2-only CPU) oneDNN's int8 GEMM runs several times slower than float32 GEMM. The
W8A8 reference (export/quantize.py) picks its kernel by this, and every ltx-bench table names it.
`ONEDNN_MAX_CPU_ISA` (oneDNN's own cap, e.g. AVX2) is honoured, so a VNNI host can act as an AVX2 one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")
_CAPPED = ("SSE41", "AVX", "AVX2", "AVX512_CORE")  # oneDNN ISA caps below VNNI


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The FLAGS this host's CPU reports in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return frozenset(f for f in FLAGS if f in present)


def has_int8_dot() -> bool:
    """Whether int8 GEMM has a dot-product instruction here (and oneDNN is not capped below it)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in _CAPPED:
        return False
    return any(f in cpu_flags() for f in _INT8_DOT)


def describe() -> str:
    """One line for a benchmark table, e.g. `CPU ISA: avx2 avx512f avx512_vnni amx_int8 (int8 dot: yes)`."""
    flags = " ".join(f for f in FLAGS if f in cpu_flags()) or "unknown"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    capped = f", ONEDNN_MAX_CPU_ISA={cap}" if cap else ""
    return f"CPU ISA: {flags} (int8 dot product: {'yes' if has_int8_dot() else 'no'}{capped})"
