"""ltx-verify: passes good artifacts, fails (exit 1) broken ones, localises a bad block, reports LoRAs."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from ltx_ascend.export import cli as export_cli
from ltx_ascend.export.items import ExportItem
from ltx_ascend.store import Manifest, file_hashes, file_sizes, store_root, weight_files
from ltx_ascend.tools import verify
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def block_artifact(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    argv = ["--component", "dit", "--shape", "9x128x192", "--stage", "1", "--dit-layout", "blocks",
            "--checkpoint-path", str(tiny.checkpoint), "--out", str(out)]  # fmt: skip
    assert export_cli.main(argv) == 0
    (folder,) = (out / "dit").glob("*/*")
    return folder


def test_good_artifact_passes_with_json_report(block_artifact, tmp_path, capsys):
    report, js = tmp_path / "r.md", tmp_path / "r.json"
    argv = [str(block_artifact), "--backend", "onnx", "--per-block", "--report", str(report), "--json", str(js)]
    code, _, err = run_cli(verify.main, argv, capsys)
    assert code == 0, err
    body = json.loads(js.read_text())
    # the per-sample AdaLN graphs (one timestep per batch row: step cache x CFG) are verified like the rest
    graphs = {"dit-input", "dit-block", "dit-output", "dit-input-sample-adaln", "dit-block-sample-adaln"}
    assert {g["graph"] for g in body["graphs"]} == graphs
    assert all(g["passed"] for g in body["graphs"]), body["graphs"]
    block = next(g for g in body["graphs"] if g["graph"] == "dit-block")  # the per-block scan runs the shared graph
    assert len(block["per_block"]) == 2 and block["first_bad_block"] is None
    assert "| dit-output |" in report.read_text()


def _reseal(folder):
    """Record the edited files in the manifest, as an exporter that wrote wrong numbers would have: the
    integrity check passes and only the numerical comparison can catch it."""
    manifest = Manifest.read(folder)
    manifest.files = file_hashes(folder, list(manifest.files))
    manifest.sizes = file_sizes(folder, list(manifest.files))
    manifest.write(folder)
    (folder / ".verified.json").unlink(missing_ok=True)


def _copy_store(folder, tmp_path):
    """The artifact in a copy of its whole store (its block weights live in the store's weights/)."""
    root = store_root(folder)
    shutil.copytree(root, tmp_path / "store")
    return tmp_path / "store" / folder.relative_to(root)


def test_per_block_scan_finds_the_first_bad_block(block_artifact, tmp_path, capsys):
    folder = _copy_store(block_artifact, tmp_path)
    block_1 = weight_files(folder)[1]
    assert block_1.name == "block_01.safetensors" and block_1.parent.parent.name == "weights"
    weights = load_file(str(block_1))
    weights["attn1.to_out.0.weight"] = weights["attn1.to_out.0.weight"] * 3  # a bad compile of block 1
    save_file(weights, str(block_1))
    _reseal(block_1.parent)
    # eager reads the checkpoint, the compiled chain the (now wrong) block file: block 1 must be flagged
    results = verify.verify_artifact(folder, backend="onnx", per_block=True)
    block = next(r for r in results if r.graph == "dit-block")
    assert block.first_bad_block == 1
    assert block.per_block[0]["passed"] and not block.per_block[1]["passed"]


def test_broken_graph_fails_with_exit_1(block_artifact, tmp_path, capsys):
    folder = _copy_store(block_artifact, tmp_path)
    path = folder / "dit-output.onnx"
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * 1.5, biggest.name))
    onnx.save(model, str(path))
    _reseal(folder)
    code, out, _ = run_cli(verify.main, [str(folder), "--backend", "onnx"], capsys)
    assert code == 1 and "**no**" in out


def test_float16_overflow_is_reported():
    class Loud(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Linear(4, 4)
            torch.nn.init.constant_(self.scale.weight, 3e4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (self.scale(x) / 1e4,)

    x = torch.ones(1, 4)
    item = ExportItem("toy", Loud(), ["x"], ["y"], {"x": x}, lambda f: (f["x"],))
    hits = verify.overflow_scan(item, {"x": x})
    assert hits and hits[0][0] == "scale" and hits[0][1] > 65504


def test_lora_report(tiny):
    report = verify.lora_report(verify.LoraSpec(tiny.distilled_lora, 0.8), tiny.checkpoint, torch.device("cpu"))
    assert report["ranks"] == [4] and report["touches"] == 68 and report["tensors"] == 136
    assert report["merge_vs_cpu_max_abs"] == 0.0


def test_nothing_to_verify_is_a_usage_error(capsys):
    code, _, err = run_cli(verify.main, [], capsys)
    assert code == 2 and "nothing to verify" in err
