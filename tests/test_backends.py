"""The backend records (ltx_ascend/backends.py): each resolves, names and messages are today's, and a
backend registered here alone (its record, a session factory and a compile step in this file) is found,
compiled and opened by the finder, ltx-compile and the opener: adding one touches no other module."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from ltx_ascend import backends
from ltx_ascend.backends import BACKENDS, Backend, CompileOptions, OpenOptions, Requirement
from ltx_ascend.compile import cli as compile_cli
from ltx_ascend.engine.artifact_finder import ArtifactFinder, BackendChoice
from ltx_ascend.errors import UserError
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.runtime.session import Session, TensorSpec
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import MANIFEST, Manifest, file_hashes, file_sizes
from ltx_ascend.tools.bench import BENCH_VARIANTS
from tests.conftest import run_cli

PROFILE = shape_profile("9x64x96", text_tokens=64)
UNKNOWN = "--backend nope: choose one of om, ort, onnx (or eager)"


def test_every_record_resolves_and_is_consistent():
    assert list(BACKENDS) == ["om", "ort", "onnx", "eager"]
    for name, record in BACKENDS.items():
        assert record.name == name and record.summary
        if record.session is not None:
            assert callable(record.session_factory())
        if record.compile is not None:
            assert callable(record.compile_step()) and record.folder is not None and record.compile_hint
        assert record.compiled == (record.session is not None)  # what runs artifact files opens them
        for requirement in record.requires:
            assert requirement.module and requirement.hint
    assert backends.names(compiled=True) == ("om", "ort", "onnx")
    assert BACKENDS["ort"].folder_name(ep="cuda") == "ort-cuda" and BACKENDS["ort"].folder_name() == "ort-*"
    assert BACKENDS["om"].folder_name(soc="Ascend910B4") == "om-Ascend910B4-*"
    assert BACKENDS["onnx"].folder is None and BACKENDS["onnx"].compile is None  # the export itself
    assert {runs_on for runs_on, _ in BENCH_VARIANTS.values()} <= set(BACKENDS)  # bench variants run on backends


def test_unknown_names_get_todays_one_line_and_aliases_resolve(monkeypatch):
    for lookup in (backends.backend, backends.compiled_backend):
        with pytest.raises(UserError) as caught:
            lookup("nope")
        assert str(caught.value) == UNKNOWN
    with pytest.raises(UserError, match=r"^--backend eager: choose one of om, ort, onnx \(or eager\)$"):
        backends.compiled_backend("eager")
    with pytest.raises(UserError) as caught:
        BackendChoice.parse("dit=nope")
    assert str(caught.value) == "--backend dit=nope: backend 'nope' is not one of om, ort, onnx, eager"
    assert backends.find("onnxruntime") is None  # no alias today: the accepted names are unchanged
    monkeypatch.setitem(BACKENDS, "ort", dataclasses.replace(BACKENDS["ort"], aliases=("onnxruntime",)))
    assert backends.backend("onnxruntime") is BACKENDS["ort"]
    choice = BackendChoice.parse("onnxruntime,vocoder=eager")
    assert choice.default == "ort" and choice.of("vocoder") == "eager"


def test_dtype_limits_defaults_and_requirements():
    ort_cpu = (
        "dit: --backend ort on the CPU provider needs float32 graphs (ONNX Runtime's CPU provider lacks "
        "bfloat16 kernels): pass --dtype float32, or --backend eager for bfloat16"
    )
    with pytest.raises(UserError) as caught:
        BACKENDS["ort"].check_dtype("dit", "bfloat16", "cpu")
    assert str(caught.value) == ort_cpu
    with pytest.raises(UserError, match=r"^vocoder: --backend onnx on the CPU provider"):
        BACKENDS["onnx"].check_dtype("vocoder", "bfloat16", "cpu")
    BACKENDS["ort"].check_dtype("dit", "bfloat16", "cuda")
    BACKENDS["ort"].check_dtype("dit", "float32", "cpu")
    BACKENDS["om"].check_dtype("dit", "bfloat16", "cpu")
    assert [backends.default_for(k) for k in ("npu", "cuda", "cpu", "gpu")] == ["om", "ort", "ort", "ort"]
    assert BACKENDS["ort"].available() and BACKENDS["onnx"].available()  # onnxruntime is a dependency
    absent = dataclasses.replace(BACKENDS["om"], requires=(Requirement("no_such_module_ltx", "comes with X"),))
    assert not absent.available() and absent.missing() == "--backend om needs `no_such_module_ltx` (comes with X)"


# -- a backend added in this file alone -------------------------------------------------------------------


class FakeSession(Session):
    backend = "fake"

    def __init__(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], options: OpenOptions):
        self.path, self.name, self.options = path, path.stem, options
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.closed = False

    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        return {}

    def close(self) -> None:
        self.closed = True


def open_fake(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], options: OpenOptions) -> FakeSession:
    return FakeSession(path, inputs, outputs, options)


COMPILES: list[Path] = []


def compile_fake(folder: Path, options: CompileOptions) -> tuple[Path, bool]:
    """Copy the export's graphs into `fake-<ep>/` under a manifest of kind "fake" made from this export."""
    export = Manifest.read(folder)
    out = folder / BACKENDS["fake"].folder_name(ep=options.ep)
    out.mkdir(exist_ok=True)
    for name in export.files:
        shutil.copy2(folder / name, out / name)
    names = sorted(export.files)
    request = {"export": export.request, "target": {"kind": "fake", "ep": options.ep}}
    Manifest("fake", export.component, export.variant, request, export.io, file_hashes(out, names),
             file_sizes(out, names)).write(out)  # fmt: skip
    COMPILES.append(out)
    return out, False


FAKE = Backend(
    name="fake",
    summary="a stand-in backend registered by tests/test_backends.py",
    kind="fake",
    folder="fake-{ep}",
    session="tests.test_backends:open_fake",
    preference=({"npu_ops": True}, {}),
    compile="tests.test_backends:compile_fake",
    compile_hint="--target fake",
    compile_help="fake: tests",
    builds_missing=True,
)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(store, portable dit folder, npu-ops dit folder), exported once."""
    out = tmp_path_factory.mktemp("backends")
    ckset = tiny.checkpoint_set()
    portable = export_component("dit", ckset, PROFILE, out=out, options=ExportOptions()).folder
    fused = export_component("dit", ckset, PROFILE, out=out, options=ExportOptions(npu_ops=True)).folder
    return out, portable, fused


def _finder(out: Path, **kw) -> ArtifactFinder:
    return ArtifactFinder(BackendChoice.parse("fake"), out, torch.device("cpu"), torch.float32, log=lambda _: None,
                          keep=False, **kw)  # fmt: skip


def test_a_backend_added_by_its_record_alone_is_compiled_found_and_opened(tiny, exported, monkeypatch, capsys):
    out, portable, fused = exported
    monkeypatch.setitem(BACKENDS, "fake", FAKE)
    ckset = tiny.checkpoint_set()
    missing = _finder(out).resolution("dit", ckset, PROFILE)
    assert not missing.ok and missing.reason == f"not compiled for fake: run ltx-compile --target fake {fused}"
    # ltx-compile offers it and runs its compile step.
    code, stdout, _ = run_cli(compile_cli.main, ["--target", "fake", str(portable)], capsys)
    assert code == 0 and f"compiled -> {portable / 'fake-cpu'}" in stdout and COMPILES[-1] == portable / "fake-cpu"
    found = _finder(out).resolution("dit", ckset, PROFILE)
    assert found.ok and found.backend == "fake" and found.variant == "portable"  # npu-ops not compiled yet
    compile_fake(fused, CompileOptions())
    found = _finder(out).resolution("dit", ckset, PROFILE)
    assert found.ok and found.variant == "npu-ops" and found.compiled == fused / "fake-cpu"  # its preference
    monkeypatch.setitem(BACKENDS, "fake", dataclasses.replace(FAKE, preference=({}, {"npu_ops": True})))
    assert _finder(out).resolution("dit", ckset, PROFILE).variant == "portable"  # the record's order decides
    # The opener opens it with the record's session factory.
    sessions = open_component(found, fallback="none", threads=3, device_id=2)
    assert sessions is not None and set(sessions) == set(found.graphs)
    session = sessions["dit"]
    assert isinstance(session, FakeSession) and session.path == found.graphs["dit"]
    assert session.options == OpenOptions(device=torch.device("cpu"), ep="cpu", threads=3, device_id=2)
    assert (found.compiled / MANIFEST).is_file()


def test_build_missing_runs_the_records_compile_step(tiny, exported, monkeypatch):
    """--build-missing on a backend whose record builds: the export is made (here: found), then its step."""
    out, portable, _ = exported
    monkeypatch.setitem(BACKENDS, "fake", dataclasses.replace(FAKE, folder="fake2-{ep}", preference=({},)))
    resolution = _finder(out, build_missing=True).resolution("dit", tiny.checkpoint_set(), PROFILE)
    assert resolution.ok and resolution.compiled == portable / "fake2-cpu" == COMPILES[-1]
