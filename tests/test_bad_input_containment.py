"""A manifest never names a file outside its folder: no absolute path, no `..`, no symlink out, each
refused in one line before the file is opened (a store shared between hosts or users is not a way in)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.components import request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export.exporter import export_component
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import MANIFEST, Manifest, contained, resolve, sha256_file

PROFILE = shape_profile("9x128x192", stage=1)


@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    result = export_component("dit", tiny.checkpoint_set(), PROFILE, out=out, dtype=torch.float32)
    compile_ort(result.folder, "cpu", force=False)
    return out


def _copy(store: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the store, and its ORT-compiled DiT folder."""
    out = tmp_path / "store"
    shutil.copytree(store, out)
    return out, next(out.rglob("ort-cpu"))


def _resolve(tiny, out: Path):
    return resolve(request_for("dit", tiny.checkpoint_set(), PROFILE, torch.float32), out, "ort")


def _edit(folder: Path, edit) -> None:
    body = json.loads((folder / MANIFEST).read_text())
    edit(body)
    (folder / MANIFEST).write_text(json.dumps(body))


def _refused(tiny, out: Path, *needles: str) -> str:
    with pytest.raises(UserError) as exc:
        resolution = _resolve(tiny, out)
        if not resolution.ok:  # a refusal reported as the resolution's reason counts too
            raise UserError(resolution.reason)
    message = str(exc.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def _outside_graph(compiled: Path, tmp_path: Path) -> tuple[Path, str]:
    """A working copy of the graph outside the store, with its true sha256 (what an attacker plants)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.onnx"
    shutil.copy(compiled / "dit.onnx", secret)
    return secret, sha256_file(secret)


def test_intact_store_resolves(tiny, store, tmp_path):
    out, compiled = _copy(store, tmp_path)
    resolution = _resolve(tiny, out)
    assert resolution.ok and resolution.graphs["dit"] == compiled / "dit.onnx"


@pytest.mark.parametrize("form", ["dotdot", "absolute"])
def test_graph_file_outside_the_folder_is_refused(tiny, store, tmp_path, form):
    """Before the fix: the outside graph was loaded and run (exit 0)."""
    out, compiled = _copy(store, tmp_path)
    secret, digest = _outside_graph(compiled, tmp_path)
    name = os.path.relpath(secret, compiled) if form == "dotdot" else str(secret)
    assert (compiled / name).resolve() == secret.resolve()

    def edit(body):
        body["files"] = {name: digest}
        body["sizes"] = {name: secret.stat().st_size}
        body["io"]["graphs"]["dit"]["file"] = name

    _edit(compiled, edit)
    _refused(tiny, out, "outside", "refused", name)


def test_extra_files_entry_outside_is_not_read(tiny, store, tmp_path, monkeypatch):
    """Before the fix: an extra `files` entry `../../x` with its true sha256 was read and hashed."""
    out, compiled = _copy(store, tmp_path)
    secret, digest = _outside_graph(compiled, tmp_path)
    name = os.path.relpath(secret, compiled)
    _edit(compiled, lambda body: body["files"].update({name: digest}))
    opened = []
    real_open = Path.open

    def spy(self, *args, **kwargs):
        if self.resolve() == secret.resolve():
            opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    _refused(tiny, out, "outside", name)
    assert opened == []  # refused before it was opened


def test_symlink_out_of_the_folder_is_refused(tiny, store, tmp_path):
    out, compiled = _copy(store, tmp_path)
    secret, _ = _outside_graph(compiled, tmp_path)  # same bytes: the sha256 in the manifest still matches
    (compiled / "dit.onnx").unlink()
    (compiled / "dit.onnx").symlink_to(secret)
    _refused(tiny, out, "outside", "symlink")


def test_manifest_read_refuses_before_any_caller_joins_a_name(store, tmp_path):
    """Every reader (runtime, compile, verify, bench) goes through Manifest.read: one check for all."""
    _, compiled = _copy(store, tmp_path)
    export = compiled.parent
    _edit(export, lambda body: body["io"]["graphs"]["dit"].update({"file": "../../../../etc/passwd"}))
    with pytest.raises(UserError, match="outside its folder"):
        Manifest.read(export)
    with pytest.raises(UserError, match="outside its folder"):
        compile_ort(export, "cpu", force=True)


@pytest.mark.parametrize(
    "name", ["../x.onnx", "a/../../x.onnx", "/etc/passwd", "", "a\\..\\x.onnx", "nul\x00.onnx"]
)
def test_contained_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(UserError):
        contained(tmp_path, name)


def test_contained_keeps_names_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.onnx").write_bytes(b"x")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "sub" / "g.onnx")  # a link that stays inside is fine
    assert contained(tmp_path, "sub/g.onnx") == tmp_path / "sub" / "g.onnx"
    assert contained(tmp_path, "link.onnx") == tmp_path / "link.onnx"
    assert contained(tmp_path, "not-yet-written.onnx") == tmp_path / "not-yet-written.onnx"
    with pytest.raises(UserError, match="outside"):
        contained(tmp_path / "sub", "../sub/g.onnx")


def test_onnx_external_data_outside_the_folder_is_refused_for_atc(tmp_path):
    """A graph whose initializer's external data `location` leaves the folder: refused before ATC reads it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ltx_ascend.compile.compiler import Graph, check_external_data

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(tmp_path / "g.onnx"), save_as_external_data=True, location="g.onnx.data",
                    size_threshold=0)  # fmt: skip
    check_external_data(Graph(tmp_path, "g", "g.onnx", []))  # inside: fine
    model = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match="outside its folder"):
        check_external_data(Graph(tmp_path, "g", "g.onnx", []))
