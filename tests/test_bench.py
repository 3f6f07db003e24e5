"""ltx-bench runs every backend on the same inputs and writes the documented JSON (tiny preset)."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from ltx_ascend.tools import bench
from tests.conftest import run_cli


def test_bench_tiny_dit_json_schema(tmp_path, capsys):
    js = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--component", "dit", "--repeats", "1", "--shape", "9x128x192",
            "--artifacts", str(tmp_path), "--json", str(js)]  # fmt: skip
    code, out, err = run_cli(bench.main, argv, capsys)
    assert code == 0, err
    report = json.loads(js.read_text())
    row = report["components"]["dit"]
    assert set(row) == {"eager", "ort"}
    for stats in row.values():
        assert {"median_s", "min_s", "speedup_vs_eager", "peak_mem_mb"} <= set(stats)
        assert stats["median_s"] > 0 and stats["peak_mem_mb"] > 0
    assert row["eager"]["speedup_vs_eager"] == 1.0
    assert set(report["dit_step"]) == {"eager", "ort"} and report["dit_step"]["ort"]["gflops"] > 0
    assert report["matmul_peak_gflops"] == max(report["matmul_gflops"].values()) > 1
    assert set(report["matmul_gflops"]) == {"torch", "onnxruntime"}
    assert "GFLOP/s" in out


@pytest.mark.slow  # the command's run and schema: test_bench_tiny_dit_json_schema; this adds every variant
def test_bench_variants_side_by_side(tmp_path, capsys):
    """Variants are backend keys (ort-w8a8 here: ort-fused + W8A8); each backend ran in its own process."""
    js = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--component", "dit", "--repeats", "1", "--shape", "9x128x192",
            "--backends", "eager,ort-w8a8", "--artifacts", str(tmp_path), "--json", str(js)]  # fmt: skip
    code, out, err = run_cli(bench.main, argv, capsys)
    assert code == 0, err
    row = json.loads(js.read_text())["components"]["dit"]
    assert set(row) == {"eager", "ort-w8a8"}
    assert all(s["median_s"] > 0 and s["speedup_vs_eager"] > 0 and s["peak_mem_mb"] > 0 for s in row.values())
    assert "ort-w8a8" in out
    code, _, err = run_cli(bench.main, ["--preset", "tiny", "--backends", "eager,int4"], capsys)
    assert code == 2 and "--backends eager,int4" in err


def test_bench_preset_component_mismatch(tmp_path, capsys):
    code, _, err = run_cli(bench.main, ["--preset", "bench", "--component", "vocoder"], capsys)
    assert code == 2 and "DiT only" in err


def test_bench_om_without_cann_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", None)
    monkeypatch.setenv("PATH", os.defpath)
    argv = ["--component", "audio_decoder", "--backends", "om", "--artifacts", str(tmp_path)]
    code, _, err = run_cli(bench.main, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs an Ascend host with CANN" in err and "no pyACL and no npu-smi" in err
    code, _, err = run_cli(bench.main, [*argv, "--soc", "Ascend910B4"], capsys)
    assert code == 2 and "ATC was not found" in err and "set_env.sh" in err
    assert not (tmp_path / "bench").exists(), "nothing exported before the CANN check"


@pytest.mark.contract
def test_bench_om_end_to_end_on_the_stand_ins(tiny, tmp_path, capsys, monkeypatch):
    """ltx-bench --backends om: export, ATC (fake), load and time through the stand-in pyACL."""
    (tmp_path / "tiny").symlink_to(tiny.root)  # the session's tiny set, not a second one
    from ltx_ascend.runtime import om_session
    from tests.fake_cann import FAKE_ATC, FakeAcl

    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    fake = FakeAcl(soc_name="Ascend910B3")
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    js = tmp_path / "bench.json"
    argv = ["--component", "audio_decoder", "--backends", "om", "--repeats", "2", "--shape", "9x64x96",
            "--artifacts", str(tmp_path), "--json", str(js)]  # fmt: skip
    code, out, err = run_cli(bench.main, argv, capsys)
    assert code == 0, err
    assert "audio_decoder                om" in out
    assert set(json.loads(js.read_text())["components"]["audio_decoder"]) == {"om"}
    assert list((tmp_path / "bench" / "audio_decoder").glob("*/*/om-Ascend910B3-origin/audio_decoder.om"))
    assert fake.count("mdl.execute_async") == 3 and not fake.violations  # warm-up + 2 repeats
