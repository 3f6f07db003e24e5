"""Prove an installed environment in seconds, before anything long runs on it.

A wheel whose native library does not load (torchaudio built against another torch, say) breaks
every `ltx-*` command at import. This imports each native extension the project uses and runs every
console script's `--help` in a child process, and names the first one that fails:
`python -m ltx_ascend.selfcheck` (CI runs it before the test suite).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points

# Modules whose import loads a compiled extension (import name -> distribution, for the message).
NATIVE_MODULES = {
    "torch": "torch",
    "torchaudio": "torchaudio",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "av": "av",
    "sentencepiece": "sentencepiece",
    "safetensors": "safetensors",
    "numpy": "numpy",
}


def check_imports() -> list[str]:
    failures = []
    for module, dist in NATIVE_MODULES.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time failure of a native library counts
            failures.append(f"import {module} failed ({dist}): {type(exc).__name__}: {exc}")
    if not failures:
        import torch
        import torchaudio

        # The ABI-coupled pair must come from the same release line (pinned in pyproject.toml).
        if torch.__version__.split("+")[0] != torchaudio.__version__.split("+")[0]:
            failures.append(
                f"torch {torch.__version__} and torchaudio {torchaudio.__version__} differ: "
                "reinstall with `pip install -c requirements.lock -e .`"
            )
    return failures


def console_scripts() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("ltx_ascend."))


def _script_help(name: str) -> str | None:
    ep = next(e for e in entry_points(group="console_scripts") if e.name == name)
    module, _, attr = ep.value.partition(":")
    code = f"import sys; from {module} import {attr} as m; sys.argv[0] = {name!r}; m(['--help'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or "usage:" not in result.stdout:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{name} --help exited {result.returncode}: {tail}"
    return None


def check_scripts(names: list[str]) -> list[str]:
    """Each script in its own interpreter (what a user's shell does), as many at once as there are cores."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [line for line in pool.map(_script_help, names) if line]


def main() -> int:
    start = time.perf_counter()
    failures = check_imports()
    scripts = console_scripts()
    if not scripts:
        failures.append("no ltx-* console scripts are installed: run `pip install -c requirements.lock -e .`")
    if not failures:
        failures = check_scripts(scripts)
    for line in failures:
        print(f"selfcheck: {line}", file=sys.stderr)
    if failures:
        return 1
    print(
        f"selfcheck: {len(NATIVE_MODULES)} native modules import, {len(scripts)} console scripts answer --help "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
