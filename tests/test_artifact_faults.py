"""Faults in the artifact store: tampered or damaged graphs, concurrent builds, failed rebuilds.

Every fault a user can fix is one line naming the file and the fix (exit 2), found before the graph
is used; a failed `--force` rebuild leaves the previous artifact in place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.components import request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export import cli as export_cli
from ltx_ascend.export import exporter
from ltx_ascend.export.exporter import export_component
from ltx_ascend.runtime.artifacts import open_sessions
from ltx_ascend.runtime.ort_session import OrtSession
from ltx_ascend.runtime.session import specs_from_manifest
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import MANIFEST, VERIFIED, Manifest, resolve
from tests.conftest import run_cli

PROFILE = shape_profile("9x128x192", stage=1)


@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory) -> Path:
    """An artifact store with the tiny DiT exported and compiled for ORT (copied by each test)."""
    out = tmp_path_factory.mktemp("store")
    result = export_component("dit", tiny.checkpoint_set(), PROFILE, out=out, dtype=torch.float32)
    compile_ort(result.folder, "cpu", force=False)
    return out


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(store, out)
    return out


def _resolve(tiny, out: Path, backend: str = "ort"):
    request = request_for("dit", tiny.checkpoint_set(), PROFILE, torch.float32)
    return resolve(request, out, backend)


def _graph(tiny, out: Path) -> Path:
    return _resolve(tiny, out).graphs["dit"]


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_intact_artifact_resolves_and_caches_its_verification(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)
    assert resolution.ok, resolution.reason
    cache = json.loads((resolution.compiled / VERIFIED).read_text())
    assert set(cache) == set(Manifest.read(resolution.compiled).files)
    open_sessions(resolution)["dit"].close()


def test_eight_zeroed_bytes_are_found_before_use(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    graph = _graph(tiny, out)
    (graph.parent / VERIFIED).unlink()
    data = bytearray(graph.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(8)
    graph.write_bytes(bytes(data))  # same size
    with pytest.raises(UserError) as exc:
        _resolve(tiny, out)
    _one_line(exc, str(graph), "sha256", "ltx-compile --target ort --ep cpu --force")


def test_a_change_after_verification_is_found_by_mtime(tiny, store, tmp_path):
    """The cached verification holds only for the same size and mtime."""
    out = _copy(store, tmp_path)
    graph = _graph(tiny, out)  # verified and cached
    data = bytearray(graph.read_bytes())
    data[100:108] = bytes(8)
    graph.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        _resolve(tiny, out)


def test_edited_sha256_in_the_manifest(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    compiled = _resolve(tiny, out).compiled
    body = json.loads((compiled / MANIFEST).read_text())
    body["files"]["dit.onnx"] = "0" * 64
    (compiled / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(UserError) as exc:
        _resolve(tiny, out)
    _one_line(exc, "dit.onnx", "sha256", "--force")


def test_graph_copied_from_another_artifact(tiny, store, tmp_path):
    """The exported (unoptimised) graph copied over the compiled one: another artifact's file."""
    out = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)
    shutil.copy(resolution.folder / "dit.onnx", resolution.graphs["dit"])
    with pytest.raises(UserError) as exc:
        _resolve(tiny, out)
    _one_line(exc, str(resolution.graphs["dit"]), "--force")


def test_truncated_graph(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    graph = _graph(tiny, out)
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(UserError) as exc:
        _resolve(tiny, out)
    _one_line(exc, str(graph), "bytes", "truncated", "--force")


def test_truncated_graph_opened_directly_names_the_fix(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)
    graph = tmp_path / "dit.onnx"
    graph.write_bytes(resolution.graphs["dit"].read_bytes()[:1000])
    inputs, outputs = specs_from_manifest(resolution.io["dit"])
    with pytest.raises(UserError) as exc:
        OrtSession(graph, inputs, outputs)
    _one_line(exc, "could not load", "re-export it with `ltx-export --force`")


def test_edited_io_dtype(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)
    for folder in (resolution.compiled, resolution.folder):  # both manifests agree: only the graph can tell
        body = json.loads((folder / MANIFEST).read_text())
        body["io"]["graphs"]["dit"]["inputs"][0]["dtype"] = "float16"
        (folder / MANIFEST).write_text(json.dumps(body))
    resolution = _resolve(tiny, out)
    assert resolution.ok
    with pytest.raises(UserError) as exc:
        open_sessions(resolution)
    _one_line(exc, "video_latent", "tensor(float)", "float16", "--force")


def test_compiled_io_edited_alone(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    compiled = _resolve(tiny, out).compiled
    body = json.loads((compiled / MANIFEST).read_text())
    body["io"]["graphs"]["dit"]["inputs"][0]["dtype"] = "float16"
    (compiled / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(UserError) as exc:
        _resolve(tiny, out)
    _one_line(exc, "differ from the export's", "--force")


def test_invalid_compiled_manifest_is_not_called_uncompiled(tiny, store, tmp_path):
    out = _copy(store, tmp_path)
    compiled = _resolve(tiny, out).compiled
    (compiled / MANIFEST).write_text("{ not json")
    resolution = _resolve(tiny, out)
    assert not resolution.ok
    assert "not valid JSON" in resolution.reason and "not compiled" not in resolution.reason
    assert "ltx-compile --target ort --ep cpu --force" in resolution.reason


def test_failed_force_rebuild_keeps_the_previous_artifact(tiny, store, tmp_path, monkeypatch):
    out = _copy(store, tmp_path)
    folder = _resolve(tiny, out).folder
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def broken_export(*args, **kwargs):
        raise RuntimeError("simulated failure half-way through an export")

    monkeypatch.setattr(exporter, "export_onnx", broken_export)
    with pytest.raises(RuntimeError, match="simulated"):
        export_component("dit", tiny.checkpoint_set(), PROFILE, out=out, dtype=torch.float32, force=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert _resolve(tiny, out).ok
    assert not [p for p in folder.parent.iterdir() if p.name.endswith((".partial", ".old"))]


_BUILD = """
import sys, torch
from pathlib import Path
from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.export.exporter import export_component
from ltx_ascend.shapes import shape_profile
ckset = CheckpointSet(Path(sys.argv[1]), None, Path(sys.argv[2]), ())
profile = shape_profile("9x128x192", stage=1)
result = export_component("spatial_upsampler", ckset, profile, out=Path(sys.argv[3]), dtype=torch.float32)
compile_ort(result.folder, "cpu", force=False)
print("cached" if result.cached else "built")
"""


def test_two_concurrent_builds_of_one_artifact_both_succeed(tiny, tmp_path):
    """Two processes export and compile the same artifact into one fresh store at once."""
    out = tmp_path / "fresh"
    argv = [sys.executable, "-c", _BUILD, str(tiny.checkpoint), str(tiny.spatial_upsampler), str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(code == 0 for _, _, code in results), [err for _, err, _ in results]
    assert sorted(o.strip() for o, _, _ in results) == ["built", "cached"]  # the second waited, then found it
    profile = shape_profile("9x128x192", stage=1)
    request = request_for("spatial_upsampler", tiny.checkpoint_set(), profile, torch.float32)
    assert resolve(request, out, "ort").ok


def test_export_without_gemma_root_sizes_the_connectors_from_the_checkpoint(tiny, tmp_path, capsys):
    argv = ["--component", "text_connectors", "--shape", "9x128x192", "--text-tokens", "128"]
    argv += ["--checkpoint-path", str(tiny.checkpoint), "--out", str(tmp_path)]
    code, _, err = run_cli(export_cli.main, argv, capsys)
    assert code == 0, err
    (folder,) = (tmp_path / "text_connectors").glob("*/*")
    graph = Manifest.read(folder).io["graphs"]["text_connectors"]
    gemma = json.loads((tiny.gemma_root / "config.json").read_text())["text_config"]
    hidden, layers = gemma["hidden_size"], gemma["num_hidden_layers"]
    assert graph["inputs"][0]["shape"] == [1, 128, hidden, layers + 1]


def test_export_to_a_read_only_location_is_one_line_before_anything_is_written(tmp_path, capsys):
    argv = ["--component", "dit", "--shape", "9x128x192", "--out", "/proc/ltx-ascend-test/out"]
    code, _, err = run_cli(export_cli.main, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out /proc/ltx-ascend-test/out" in err and "writable" in err


def _tamper_graph(graph: Path) -> None:
    """A valid graph with one weight changed, written with the file's old mtime (what `touch -r` does)."""
    import onnx
    from onnx import numpy_helper

    stat = graph.stat()
    model = onnx.load(str(graph))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(graph))
    import os

    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_compile_force_over_a_tampered_export_refuses_instead_of_sealing_it(tiny, store, tmp_path, capsys):
    """Before the fix `ltx-compile --target ort --force` compiled the changed graph and sealed its new
    hash, so every later run trusted it. Compile re-hashes its input export first (no cache trusted)."""
    from ltx_ascend.compile import cli as compile_cli

    out = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)  # verified: .verified.json caches the export's hashes
    export_graph = resolution.folder / "dit.onnx"
    _tamper_graph(export_graph)
    sealed = (resolution.compiled / MANIFEST).read_text()
    code, _, err = run_cli(compile_cli.main, ["--target", "ort", "--force", str(resolution.folder)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "sha256" in lines[0] and str(export_graph) in lines[0], err
    assert (resolution.compiled / MANIFEST).read_text() == sealed  # nothing re-sealed


def test_rehash_finds_what_the_size_mtime_cache_trusts(tiny, store, tmp_path, capsys):
    """The size+mtime cache does not see a same-size change that keeps the mtime (documented in
    docs/design/hash-cache.md); `ltx-verify --rehash` re-hashes every file and does."""
    from ltx_ascend.tools import verify

    out = _copy(store, tmp_path)
    code, stdout, err = run_cli(verify.main, ["--rehash", str(out)], capsys)
    assert code == 0 and "2 artifact folders re-hashed: every file matches" in stdout, err
    resolution = _resolve(tiny, out)
    graph = resolution.graphs["dit"]
    data = bytearray(graph.read_bytes())
    stat = graph.stat()
    data[-64:-56] = bytes(8)  # same size, old mtime: the cache's blind spot
    graph.write_bytes(bytes(data))
    import os

    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _resolve(tiny, out).ok  # what the cache does not promise
    code, stdout, err = run_cli(verify.main, ["--rehash", str(out)], capsys)
    assert code == 2 and "DIFFERS" in stdout and str(graph) in stdout, stdout
    assert err.strip().splitlines() == [
        "error: 1 of 2 artifact folders do not match their manifests (listed above): rebuild them with --force"
    ]
