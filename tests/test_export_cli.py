"""ltx-export / ltx-compile end to end on the tiny set: artifacts, manifests, cache, refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.compile import cli as compile_cli
from ltx_ascend.components import request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export import cli as export_cli
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import MANIFEST, Manifest, artifact_dir, check_matches
from tests.conftest import run_cli

SHAPE = ["--shape", "9x128x192", "--stage", "1"]


def _ckpt_args(tiny, *loras):
    args = ["--checkpoint-path", str(tiny.checkpoint), "--gemma-root", str(tiny.gemma_root)]
    for path, strength in loras:
        args += ["--lora", str(path), str(strength)]
    return args


def _export(capsys, tiny, out, *extra, loras=()):
    code, stdout, err = run_cli(
        export_cli.main, ["--component", "dit", *SHAPE, "--out", str(out), *_ckpt_args(tiny, *loras), *extra], capsys
    )
    assert code == 0, err
    (folder,) = [line.split("-> ")[1].split(" (cached)")[0] for line in stdout.splitlines() if "-> " in line]
    return Path(folder), stdout


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    """One exported DiT artifact shared by the tests that only read it (or copy it first)."""
    out = tmp_path_factory.mktemp("exported")
    code = export_cli.main(["--component", "dit", *SHAPE, "--out", str(out), *_ckpt_args(tiny)])
    assert code == 0
    (folder,) = (out / "dit").glob("*/*")
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_export_writes_manifest_and_hits_cache(tiny, tmp_path, capsys):
    folder, out = _export(capsys, tiny, tmp_path, "--verify")
    assert "exported" in out
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["kind"] == "onnx" and manifest["component"] == "dit"
    assert manifest["extra"]["profile"]["video_tokens"] == 12  # traced at; the key holds the graph shape
    assert "fps" not in manifest["request"]["profile"] and "path" not in manifest["request"]["source"]["checkpoint"]
    assert manifest["request"]["source"]["checkpoint"]["sha256_sampled"]
    assert "fingerprint_method" in manifest and manifest["tools"]["ltx-core"] == "1.0.0"
    graph = manifest["io"]["graphs"]["dit"]
    assert [i["name"] for i in graph["inputs"]][:2] == ["video_latent", "video_timesteps"]
    assert all(i["dtype"] == "float32" for i in graph["inputs"])
    assert set(manifest["files"]) == {"dit.onnx"}
    mtime = (folder / "dit.onnx").stat().st_mtime_ns
    again, out = _export(capsys, tiny, tmp_path)
    assert again == folder and "cached" in out
    assert (folder / "dit.onnx").stat().st_mtime_ns == mtime


def test_changed_lora_strength_misses_cache_and_stale_artifact_is_refused(tiny, tmp_path, capsys):
    a, _ = _export(capsys, tiny, tmp_path, loras=[(tiny.distilled_lora, 0.8)])
    b, _ = _export(capsys, tiny, tmp_path, loras=[(tiny.distilled_lora, 0.6)])
    assert a != b
    ckset = tiny.checkpoint_set(LoraSpec(tiny.distilled_lora, 0.6))
    import torch

    request = request_for("dit", ckset, shape_profile("9x128x192", stage=1), torch.float32)
    assert check_matches(b, request).component == "dit"
    with pytest.raises(UserError, match=r"source\.loras\[0\]\.strength"):
        check_matches(a, request)


def test_manifest_round_trip_and_tamper_detection(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    manifest = Manifest.read(folder)
    assert artifact_dir(exported.parents[2], manifest.request) == exported  # the layout is the request's
    body = json.loads((folder / MANIFEST).read_text())
    body["request"]["dtype"] = "float16"
    (folder / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(UserError, match="does not match its request"):
        Manifest.read(folder)


def test_compile_ort_then_cache(exported, tmp_path, capsys):
    folder = _copy(exported, tmp_path)
    code, out, err = run_cli(compile_cli.main, ["--target", "ort", str(folder)], capsys)
    assert code == 0, err
    assert (folder / "ort-cpu" / "dit.onnx").is_file()
    assert Manifest.read(folder / "ort-cpu").extra["execution_provider"] == "CPUExecutionProvider"
    code, out, _ = run_cli(compile_cli.main, ["--target", "ort", str(folder)], capsys)
    assert code == 0 and "cached" in out


def test_om_dry_run_prints_the_atc_plan(exported, capsys):
    folder = exported
    code, out, err = run_cli(
        compile_cli.main, ["--target", "om", "--dry-run", "--soc", "Ascend910B4", str(folder)], capsys
    )
    assert code == 0, err
    (line,) = [x for x in out.splitlines() if "--framework=5" in x]
    assert "--soc_version=Ascend910B4" in line and "--precision_mode_v2=origin" in line
    assert "video_latent:1,12,128" in line
    assert not (folder / "om-Ascend910B4-origin" / "dit.om").exists()


def test_om_without_atc_is_a_one_line_error(exported, capsys, monkeypatch):
    folder = exported
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    code, _, err = run_cli(compile_cli.main, ["--target", "om", "--soc", "Ascend910B4", str(folder)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "set_env.sh" in err


def test_lint_flags_a_bad_graph_in_an_artifact(exported, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    folder = _copy(exported, tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="bad_gelu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(folder / "dit.onnx"))
    code, out, _ = run_cli(compile_cli.main, ["--lint", str(folder)], capsys)
    assert code == 2 and "bad_gelu" in out


def test_bad_component_and_shape(tmp_path, capsys):
    code, _, err = run_cli(
        export_cli.main, ["--component", "unet", "--shape", "9x128x192", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "--component unet" in err
    code, _, err = run_cli(
        export_cli.main, ["--component", "dit", "--shape", "10x128x192", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "8k+1" in err


@pytest.mark.contract
def test_om_compile_records_the_file_atc_wrote_and_ltx_verify_runs_it(exported, tmp_path, capsys, monkeypatch):
    """Cross-compiling (--host-arch of another CPU) adds --host_env_os/--host_env_cpu, ATC then writes
    dit_linux_<arch>.om (the fake atc does as documented), the manifest records that name, and
    `ltx-verify --backend om` loads it through the stand-in pyACL (which runs the ONNX inside) and
    compares it with eager ltx-core."""
    import stat
    import sys

    from ltx_ascend.compile.atc import this_host
    from ltx_ascend.runtime import om_session
    from ltx_ascend.tools import verify as verify_cli
    from tests.fake_cann import FAKE_ATC, FakeAcl

    folder = _copy(exported, tmp_path)
    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    other = "x86_64" if this_host()[1] == "aarch64" else "aarch64"
    args = ["--target", "om", "--soc", "Ascend910B4", "--host-arch", other, str(folder)]
    code, out, err = run_cli(compile_cli.main, args, capsys)
    assert code == 0, err
    assert f"--host_env_os=linux --host_env_cpu={other}" in out
    compiled = folder / "om-Ascend910B4-origin"
    manifest = Manifest.read(compiled)
    assert manifest.io["graphs"]["dit"]["file"] == f"dit_linux_{other}.om"
    assert manifest.extra["host_cpu"] == other and list(manifest.files) == [f"dit_linux_{other}.om"]
    assert not (compiled / "dit.om").exists()

    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    code, out, err = run_cli(verify_cli.main, [str(folder), "--backend", "om"], capsys)
    assert code == 0, out + err
    rows = [line for line in out.splitlines() if "| dit |" in line]
    assert len(rows) == 2 and all("| om |" in row and row.endswith("| yes |") for row in rows), out
    assert fake.count("mdl.execute_async") == 1 and not fake.violations and not fake.initialised
