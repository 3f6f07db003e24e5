"""ltx-bench runs every backend on the same inputs and writes the documented JSON (tiny preset)."""

from __future__ import annotations

import json

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
    assert report["matmul_peak_gflops"] > 1
    assert "GFLOP/s" in out


def test_bench_preset_component_mismatch(tmp_path, capsys):
    code, _, err = run_cli(bench.main, ["--preset", "bench", "--component", "vocoder"], capsys)
    assert code == 2 and "DiT only" in err
