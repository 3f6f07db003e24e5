"""Faults that are not bugs are not reported as bugs: a full disk is one line naming the folder and the
bytes it needs (exit 1, no traceback: docs/design/bad-input.md says why), and SIGTERM cleans up the
temporary outputs as SIGINT does and exits 143."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ltx_ascend.media as media_module
from ltx_ascend.atomic import atomic_path
from ltx_ascend.errors import cli_entry
from ltx_ascend.export import cli as export_cli
from ltx_ascend.export import exporter
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def _disk_full_line(code: int, err: str, folder: Path) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err  # the environment: exit 1, one line, no traceback
    line = lines[0]
    assert line.startswith("error: no space left on device in ") and str(folder) in line, line
    assert "Traceback" not in err and "internal error" not in err and "bytes" in line, line
    return line


def test_enospc_while_writing_an_output(tmp_path, capsys):
    """Before the fix: "internal error: OSError (a bug in ltx-ascend ...)" with a traceback."""

    @cli_entry
    def write(argv=None):
        with atomic_path(tmp_path / "out.mp4") as tmp, open(tmp, "wb") as f:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    code, _, err = run_cli(write, [], capsys)
    line = _disk_full_line(code, err, tmp_path)
    assert "writing out.mp4 needs more than 4096 bytes" in line and "free" in line, line
    assert list(tmp_path.iterdir()) == []  # no temp folder, no half-written output


def test_enospc_from_safetensors_is_recognised(tmp_path, capsys, monkeypatch):
    """safetensors wraps ENOSPC in its own error type: still the environment, not a bug."""
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")  # fmt: skip

    monkeypatch.setattr(media_module, "save_file", full)

    @cli_entry
    def write(argv=None):
        media_module.write_raw(tmp_path / "raw.safetensors", torch.zeros(1, 2, 2, 3, dtype=torch.uint8), None)

    code, _, err = run_cli(write, [], capsys)
    _disk_full_line(code, err, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_enospc_while_building_an_artifact(tiny, tmp_path, capsys, monkeypatch):
    def full(component, ckset, profile, dtype, options, verify, request, building, *rest):
        (building / "dit.onnx").write_bytes(b"\0" * 2048)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(building / "dit.onnx"))

    monkeypatch.setattr(exporter, "_build", full)
    out = tmp_path / "a"
    argv = ["--component", "dit", "--shape", "9x128x192", "--stage", "1", "--out", str(out),
            "--checkpoint-path", str(tiny.checkpoint), "--gemma-root", str(tiny.gemma_root)]  # fmt: skip
    code, _, err = run_cli(export_cli.main, argv, capsys)
    line = _disk_full_line(code, err, out / "dit")
    assert "building dit needs more than 2048 bytes" in line, line
    assert not list((out / "dit").rglob("*.partial"))  # the half-built folder is gone


def test_an_unwrapped_enospc_still_names_its_folder(tmp_path, capsys):
    @cli_entry
    def write(argv=None):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "x.json"))

    code, _, err = run_cli(write, [], capsys)
    _disk_full_line(code, err, tmp_path)


# The writer takes SIGINT as an interactive shell starts a command: a job a non-interactive shell puts in the
# background (`.ci/run &`) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt at all.
WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from ltx_ascend.atomic import atomic_path
from ltx_ascend.errors import cli_entry

@cli_entry
def main(argv=None):
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"partial mp4")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    return 0

main()
"""


@pytest.mark.parametrize(
    ("sig", "code", "said"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_signal_while_writing_cleans_up_the_temp_output(tmp_path, sig, code, said):
    """Before the fix SIGTERM killed the process (-15) and left `.out.mp4.XXXX.tmp/` behind."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path / "out.mp4")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp output is there
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(said), err
    deadline = time.monotonic() + 5
    while list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []  # no temp folder, no output
