"""ltx-run finds graph variants: --quantization w8a8 asks for the W8A8 DiT, --backend ort prefers
ort-fused and --backend om npu-ops when present, --variant names one, and the backends line names
the variant that ran."""

from __future__ import annotations

import pytest
import torch

from ltx_ascend.engine.stack import BackendChoice, ModelStack, check_quantization
from ltx_ascend.errors import UserError
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.export.quantize import QuantLinear
from ltx_ascend.runtime import device as dev
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import Variant
from ltx_ascend.tools import run as cli
from tests.conftest import run_cli

PROFILE = shape_profile("9x64x96", text_tokens=64)


def _stack(tiny, tmp_path, backend: str, **kw) -> ModelStack:
    return ModelStack(
        ckset=tiny.checkpoint_set(),
        policy=dev.policy_for("cpu", "float32"),
        backends=BackendChoice.parse(backend),
        artifacts=tmp_path,
        log=lambda _line: None,
        **kw,
    )


def test_ort_prefers_fused_then_portable_and_w8a8_is_its_own_variant(tiny, tmp_path, capsys):
    ckset = tiny.checkpoint_set()
    export_component("dit", ckset, PROFILE, out=tmp_path, options=ExportOptions())
    stack = _stack(tiny, tmp_path, "onnx")
    stack.dit(PROFILE)
    assert stack.used["dit"] == "onnx (portable)"  # only the portable graph exists
    export_component("dit", ckset, PROFILE, out=tmp_path, options=ExportOptions(ort_fused=True))
    stack.dit(PROFILE)
    assert stack.used["dit"] == "onnx (ort-fused)"
    # W8A8 never falls back to a float graph: missing -> one warning, eager W8A8
    quant = _stack(tiny, tmp_path, "onnx", quantization="w8a8")
    runner = quant.dit(PROFILE)
    assert "quantization, variant differ from ort-fused's" in capsys.readouterr().err
    assert quant.used["dit"] == "eager (w8a8)"
    block = runner.sessions["dit-block"].module.block  # eager runs as the same block chain
    assert isinstance(block.attn1.to_q, QuantLinear)
    built = _stack(tiny, tmp_path, "ort", quantization="w8a8", build_missing=True)
    built.dit(PROFILE)
    assert built.used["dit"] == "ort (ort-fused+w8a8)"
    assert "dit=ort (ort-fused+w8a8)" in built.describe_backends()


def test_fp8_only_on_cuda_eager(capsys):
    with pytest.raises(UserError, match="use --quantization w8a8"):
        check_quantization("fp8-cast", "eager", torch.device("cpu"))
    with pytest.raises(UserError, match="use --quantization w8a8"):
        check_quantization("fp8-scaled-mm", "ort", torch.device("cuda"))
    check_quantization("fp8-cast", "eager", torch.device("cuda"))  # accepted (ltx-core's policy builds it)
    check_quantization("w8a8", "om", torch.device("cpu"))
    code, _, err = run_cli(cli.main, ["ti2vid_two_stages", "--quantization", "fp8-cast", "--backend", "eager"], capsys)
    assert code == 2 and "w8a8" in err and "Traceback" not in err


def test_om_prefers_the_npu_fused_variant_and_variant_picks_one(tiny, tmp_path, monkeypatch):
    """Contract level (a stand-in `atc` that follows the ATC documents; no CANN here): the variants of one
    identity sit side by side; om takes npu-ops once it is compiled, portable until then; --variant pins
    one; a variant that is not there is one line naming the request fields that differ."""
    import os
    import stat

    from ltx_ascend.compile.compiler import compile_om
    from tests.fake_cann import FAKE_ATC

    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    ckset, out = tiny.checkpoint_set(), tmp_path / "store"
    portable = export_component("dit", ckset, PROFILE, out=out, options=ExportOptions()).folder
    compile_om(portable, "Ascend910B4", None, force=False, dry_run=False)
    stack = _stack(tiny, out, "om")
    assert stack._resolution("dit", ckset, PROFILE).variant == "portable"
    fused = export_component("dit", ckset, PROFILE, out=out, options=ExportOptions(npu_ops=True)).folder
    assert fused.parent == portable.parent and fused != portable  # one identity, two variants
    assert stack._resolution("dit", ckset, PROFILE).variant == "portable"  # npu-ops not compiled yet
    compile_om(fused, "Ascend910B4", None, force=False, dry_run=False)
    found = stack._resolution("dit", ckset, PROFILE)
    assert found.ok and found.variant == "npu-ops" and found.folder == fused
    pinned = _stack(tiny, out, "om", variant=Variant.parse("portable"))
    assert pinned._resolution("dit", ckset, PROFILE).folder == portable
    absent = _stack(tiny, out, "om", variant=Variant.parse("npu-ops+w8a8"), quantization="w8a8")
    reason = absent._resolution("dit", ckset, PROFILE).reason
    assert reason.startswith(f"no npu-ops+w8a8 variant of {portable.parent} (exported: ")
    assert "opset, quantization, variant differ from npu-ops's" in reason


def test_variant_flag_errors_are_one_line(capsys):
    code, _, err = run_cli(cli.main, ["ti2vid_two_stages", "--variant", "fused"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "choose portable, npu-ops or ort-fused" in err
    code, _, err = run_cli(cli.main, ["ti2vid_two_stages", "--variant", "npu-ops", "--backend", "eager"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pass --backend ort or om" in err
