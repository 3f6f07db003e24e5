"""ltx-run finds graph variants: --quantization w8a8 asks for the W8A8 DiT, --backend ort prefers
ort-fused when present, and the backends line names the variant that ran."""

from __future__ import annotations

import pytest
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.export.components import ExportOptions
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.quantize import QuantLinear
from ltx_ascend.pipelines import cli
from ltx_ascend.pipelines.stack import BackendChoice, ModelStack, check_quantization
from ltx_ascend.runtime import device as dev
from ltx_ascend.shapes import shape_profile
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
    assert stack.used["dit"] == "onnx"  # only the portable graph exists
    export_component("dit", ckset, PROFILE, out=tmp_path, options=ExportOptions(ort_fused=True))
    stack.dit(PROFILE)
    assert stack.used["dit"] == "onnx (ort-fused)"
    # W8A8 never falls back to a float graph: missing -> one warning, eager W8A8
    quant = _stack(tiny, tmp_path, "onnx", quantization="w8a8")
    runner = quant.dit(PROFILE)
    assert "(quantization, variant differ)" in capsys.readouterr().err and quant.used["dit"] == "eager (w8a8)"
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
