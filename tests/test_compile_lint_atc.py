"""ATC lint, ATC command lines and runs (against a fake atc), and the ONNX Runtime optimiser, on crafted graphs."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ltx_ascend.compile import atc as atc_mod
from ltx_ascend.compile.atc import (
    PRECISIONS,
    AtcJob,
    build_atc_argv,
    check_precision_for_soc,
    default_precision,
    find_atc,
    missing_atc_message,
    parse_npu_smi,
    parse_npu_smi_board,
    run_atc,
)
from ltx_ascend.compile.ort import optimize_for_ort
from ltx_ascend.errors import UserError
from ltx_ascend.graph_lint import Violation, format_violations, lint_onnx, op_histogram
from tests.fake_cann import FAKE_ATC, FAKE_ATC_ALWAYS_SUFFIX, FakeAcl

IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would otherwise write 14


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    opset: int = 18,
    initializers: list[onnx.TensorProto] | None = None,
    extra_opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    opsets = [helper.make_opsetid("", opset), *(extra_opsets or [])]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _clean_model(opset: int = 18) -> onnx.ModelProto:
    """x[2,4] @ w[4,4] -> Softmax -> + b: the shape of an attention score block, in miniature."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Softmax", ["mm"], ["sm"], name="softmax", axis=-1),
        helper.make_node("Add", ["sm", "b"], ["y"], name="add"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        opset=opset,
        initializers=[w, b],
    )


def _identity_model(in_type: int, out_type: int | None = None, shape: list | None = None) -> onnx.ModelProto:
    shape = [2, 3] if shape is None else shape
    out_type = in_type if out_type is None else out_type
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="ident")]
    if out_type != in_type:
        nodes = [helper.make_node("Cast", ["x"], ["y"], name="cast", to=out_type)]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", in_type, shape)],
        [helper.make_tensor_value_info("y", out_type, shape)],
    )


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def _rules(violations: list[Violation]) -> set[str]:
    return {v.rule for v in violations}


# ---------------------------------------------------------------- lint


def test_clean_graph_lints_clean(tmp_path: Path) -> None:
    path = _save(_clean_model(), tmp_path / "m.onnx")
    assert lint_onnx(path) == []
    assert format_violations([]) == "lint: clean"
    assert op_histogram(path) == {"MatMul": 1, "Softmax": 1, "Add": 1}


def test_opset_19_flags_opset_and_every_op(tmp_path: Path) -> None:
    violations = lint_onnx(_save(_clean_model(opset=19), tmp_path / "m.onnx"))
    opset = [v for v in violations if v.rule == "opset"]
    assert len(opset) == 1 and opset[0].node == "<model>" and "opset 19" in opset[0].detail
    op_nodes = {v.node for v in violations if v.rule == "op"}
    assert op_nodes == {"matmul", "softmax", "add"}
    assert any("ai.onnx::19::MatMul" in v.detail for v in violations)
    table = format_violations(violations)
    assert table.splitlines()[0].split() == ["rule", "node", "detail"]
    assert "lint: 4 violations" in table


def test_gelu_is_not_registered(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gelu", ["x"], ["y"], name="blocks.0.ff.gelu")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    violations = lint_onnx(_save(model, tmp_path / "m.onnx"))
    assert [(v.rule, v.node) for v in violations] == [("op", "blocks.0.ff.gelu")]


def test_unnamed_nodes_and_if_subgraphs_are_checked(tmp_path: Path) -> None:
    then_graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1.0, 2.0])),
        helper.make_node("Add", ["x", "c"], ["s"]),
        helper.make_node("ReduceSum", ["s"], ["r"], keepdims=0),
        helper.make_node("Greater", ["r", "r"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = _save(model, tmp_path / "m.onnx")
    violations = lint_onnx(path)
    assert [(v.rule, v.node) for v in violations] == [("op", "branch/then_branch/Gelu_0")]
    assert op_histogram(path)["Gelu"] == 1


@pytest.mark.parametrize(
    ("in_type", "out_type", "name"),
    [
        (TensorProto.DOUBLE, TensorProto.FLOAT, "x"),
        (TensorProto.BOOL, TensorProto.FLOAT, "x"),
        (TensorProto.FLOAT, TensorProto.INT64, "y"),
        (TensorProto.COMPLEX64, TensorProto.COMPLEX64, "x"),
    ],
)
def test_boundary_dtypes(tmp_path: Path, in_type: int, out_type: int, name: str) -> None:
    violations = [
        v for v in lint_onnx(_save(_identity_model(in_type, out_type), tmp_path / "m.onnx")) if v.rule != "op"
    ]
    assert violations, "expected a dtype violation"
    assert all(v.rule == "dtype" for v in violations)
    assert name in {v.node for v in violations}
    type_name = TensorProto.DataType.Name(in_type if name == "x" else out_type).lower()
    assert any(type_name in v.detail and repr(name) in v.detail for v in violations)


def test_int32_and_internal_int64_are_fine(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),  # int64 inside the graph is normal
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 3])],
    )
    model.graph.value_info.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
    assert lint_onnx(_save(model, tmp_path / "m.onnx")) == []


def test_float64_initializer_and_value_info(tmp_path: Path) -> None:
    model = _clean_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(2, dtype=np.float64), "unused64"))
    model.graph.value_info.append(helper.make_tensor_value_info("mm", TensorProto.DOUBLE, [2, 4]))
    violations = lint_onnx(_save(model, tmp_path / "m.onnx"))
    assert {(v.rule, v.node) for v in violations} == {("dtype", "unused64"), ("dtype", "mm")}


def test_dynamic_input_dim(tmp_path: Path) -> None:
    model = _identity_model(TensorProto.FLOAT, shape=["batch", 3])
    violations = lint_onnx(_save(model, tmp_path / "m.onnx"))
    assert [(v.rule, v.node) for v in violations] == [("shape", "x")]
    assert "batch" in violations[0].detail and "dynamic" in violations[0].detail


def test_zero_dim(tmp_path: Path) -> None:
    violations = lint_onnx(_save(_identity_model(TensorProto.FLOAT, shape=[0, 3]), tmp_path / "m.onnx"))
    assert {(v.rule, v.node) for v in violations} == {("shape", "x"), ("shape", "y")}
    assert all("is 0" in v.detail for v in violations)


def test_size_limit(tmp_path: Path) -> None:
    path = _save(_clean_model(), tmp_path / "m.onnx")
    size = path.stat().st_size
    assert [v.rule for v in lint_onnx(path, max_protobuf_bytes=size // 2)] == ["size"]


def test_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        _clean_model(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.data",
        size_threshold=0,
    )
    data = tmp_path / "w.data"
    assert data.stat().st_size > 0
    assert lint_onnx(path) == []

    data.write_bytes(data.read_bytes()[:10])  # truncated
    violations = lint_onnx(path)
    assert violations and _rules(violations) == {"external_data"}
    assert {v.node for v in violations} >= {"b"} and "truncated" in violations[-1].detail

    data.unlink()
    violations = lint_onnx(path)
    assert {(v.rule, v.node) for v in violations} == {("external_data", "w"), ("external_data", "b")}
    assert all("missing" in v.detail for v in violations)


@pytest.mark.parametrize(("npu_version", "clean"), [(1, True), (2, False)])
def test_npu_domain_version(tmp_path: Path, npu_version: int, clean: bool) -> None:
    gamma = numpy_helper.from_array(np.ones(4, dtype=np.float32), "gamma")
    nodes = [helper.make_node("NPURmsNorm", ["x", "gamma"], ["y", "rstd"], name="norm", domain="npu", epsilon=1e-6)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializers=[gamma],
        extra_opsets=[helper.make_opsetid("npu", npu_version)],
    )
    violations = lint_onnx(_save(model, tmp_path / "m.onnx"))
    if clean:
        assert violations == []
    else:
        assert [(v.rule, v.node) for v in violations] == [("op", "norm")]
        assert "npu::2::NPURmsNorm" in violations[0].detail


def test_unreadable_file_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        lint_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(UserError):
        lint_onnx(bad)


# ---------------------------------------------------------------- ATC argv


def test_build_atc_argv_golden() -> None:
    job = AtcJob(
        model=Path("/models/transformer.onnx"),
        output=Path("/out/transformer"),
        soc="Ascend910B4",
        input_shapes={"latent": (1, 4096, 128), "timestep": (1,), "context": (1, 256, 4096)},
        precision="mixed_bfloat16",
        external_weight=True,
    )
    assert build_atc_argv(job, atc="/usr/local/Ascend/ascend-toolkit/latest/bin/atc") == [
        "/usr/local/Ascend/ascend-toolkit/latest/bin/atc",
        "--framework=5",
        "--model=/models/transformer.onnx",
        "--output=/out/transformer",
        "--soc_version=Ascend910B4",
        "--input_shape=latent:1,4096,128;timestep:1;context:1,256,4096",
        "--precision_mode_v2=mixed_bfloat16",
        "--external_weight=1",
        "--log=error",
    ]
    assert job.om_path == Path("/out/transformer.om")


def test_build_atc_argv_defaults() -> None:
    job = AtcJob(model=Path("vae.onnx"), output=Path("vae"), soc="Ascend310P3", input_shapes={"z": (1, 128, 6, 8, 8)})
    argv = build_atc_argv(job)
    assert argv == [
        "atc",
        "--framework=5",
        "--model=vae.onnx",
        "--output=vae",
        "--soc_version=Ascend310P3",
        "--input_shape=z:1,128,6,8,8",
        "--precision_mode_v2=origin",
        "--log=error",
    ]
    assert not any(a.startswith("--precision_mode=") for a in argv)


@pytest.mark.parametrize(
    "soc", ["910B4", "ascend910b4", "Ascend910B4 ", "Ascend", "Ascend910B4;rm", "", "Ascend910_93"]
)
def test_bad_soc(soc: str) -> None:
    with pytest.raises(UserError, match="soc_version"):
        AtcJob(model=Path("m.onnx"), output=Path("m"), soc=soc, input_shapes={"x": (1,)})


@pytest.mark.parametrize("soc", ["Ascend910B4", "Ascend910B2C", "Ascend910B4-1", "Ascend910_9392", "Ascend310P3"])
def test_documented_soc_names(soc: str) -> None:
    assert build_atc_argv(AtcJob(model=Path("m.onnx"), output=Path("m"), soc=soc, input_shapes={"x": (1,)}))


@pytest.mark.parametrize("precision", ["must_keep_origin_dtype", "allow_fp32_to_fp16", "bf16", "ORIGIN", "mixed_hif8"])
def test_bad_precision(precision: str) -> None:
    """Only --precision_mode_v2's own values: must_keep_origin_dtype & co. belong to --precision_mode."""
    with pytest.raises(UserError, match="precision"):
        AtcJob(model=Path("m.onnx"), output=Path("m"), soc="Ascend910B4", input_shapes={"x": (1,)}, precision=precision)


def test_precision_mode_v2_values() -> None:
    assert set(PRECISIONS) == {"fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16"}
    for p in PRECISIONS:
        job = AtcJob(model=Path("m"), output=Path("m"), soc="Ascend910B4", input_shapes={"x": (1,)}, precision=p)
        assert f"--precision_mode_v2={p}" in build_atc_argv(job)


@pytest.mark.parametrize("soc", ["Ascend910B4", "Ascend910B2C", "Ascend910_9392"])
def test_bf16_on_atlas_a2_a3(soc: str) -> None:
    check_precision_for_soc(soc, "mixed_bfloat16", "float32")
    check_precision_for_soc(soc, "origin", "bfloat16")


@pytest.mark.parametrize("soc", ["Ascend310P3", "Ascend910ProB", "Ascend910A"])
def test_bf16_refused_where_there_is_none(soc: str) -> None:
    with pytest.raises(UserError) as info:
        check_precision_for_soc(soc, "mixed_bfloat16", "float32")
    assert "\n" not in str(info.value) and soc in str(info.value) and "mixed_float16" in str(info.value)
    with pytest.raises(UserError, match="re-export with --dtype float16"):
        check_precision_for_soc(soc, "origin", "bfloat16")
    check_precision_for_soc(soc, "mixed_float16", "float32")
    check_precision_for_soc(soc, "fp16", "bfloat16")


def test_host_env_flags() -> None:
    job = AtcJob(
        model=Path("m.onnx"), output=Path("o/m"), soc="Ascend910B4", input_shapes={"x": (1,)},
        host_os="linux", host_cpu="aarch64",
    )  # fmt: skip
    argv = build_atc_argv(job)
    assert argv[-3:] == ["--host_env_os=linux", "--host_env_cpu=aarch64", "--log=error"]
    with pytest.raises(UserError, match="give both or neither"):
        AtcJob(model=Path("m.onnx"), output=Path("m"), soc="Ascend910B4", input_shapes={"x": (1,)}, host_os="linux")
    with pytest.raises(UserError, match="--host-arch riscv64"):
        AtcJob(
            model=Path("m.onnx"), output=Path("m"), soc="Ascend910B4", input_shapes={"x": (1,)},
            host_os="linux", host_cpu="riscv64",
        )  # fmt: skip


def test_bad_input_shapes() -> None:
    for shapes in ({}, {"x": (1, -1)}, {"x": (0,)}, {"a;b": (1,)}):
        with pytest.raises(UserError):
            AtcJob(model=Path("m.onnx"), output=Path("m"), soc="Ascend910B4", input_shapes=shapes)


def test_default_precision() -> None:
    assert {default_precision(d) for d in ("float32", "bfloat16", "float16", "bf16")} == {"origin"}
    with pytest.raises(UserError):
        default_precision("float64")


# ---------------------------------------------------------------- finding ATC and the SoC


def _write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_find_atc_from_toolkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atc = _write_script(tmp_path / "toolkit" / "bin" / "atc", "exit 0\n")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path / "toolkit"))
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    assert find_atc() == atc


def test_find_atc_from_home_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atc = _write_script(tmp_path / "home" / "bin" / "atc", "exit 0\n")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path / "home"))
    assert find_atc() == atc


def test_find_atc_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    assert find_atc() is None
    message = missing_atc_message()
    assert "\n" not in message
    assert "set_env.sh" in message and "ASCEND_TOOLKIT_HOME" in message and "--target ort" in message


# Layout of `npu-smi info` on an Atlas 800I A2 (8 x 910B4), as documented by the driver's table format.
NPU_SMI_800I_A2 = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc2                 Version: 24.1.rc2                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B4               | OK            | 86.2        36                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          2863 / 32768         |
+===========================+===============+====================================================+
| 1     910B4               | OK            | 84.5        35                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          2862 / 32768         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| No running processes found in NPU 0                                                            |
+===========================+===============+====================================================+
"""

NPU_SMI_310P = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 24.1.0.1                                 Version: 24.1.0.1                                     |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 1       310P3                 | OK              | NA           47                0     / 0             |
| 0       0                     | 0000:01:00.0    | 0            1894 / 44215                            |
+===============================+=================+======================================================+
"""


# Older drivers print "910B" for every 910B1..B4; Atlas A3 prints "Ascend910", two chips per NPU.
NPU_SMI_910B_SHORT = NPU_SMI_800I_A2.replace("910B4      ", "910B       ")
NPU_SMI_A3 = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc3.7               Version: 24.1.rc3.7                                           |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     Ascend910           | OK            | 178.7       37                0    / 0             |
| 0     0                   | 0000:9D:00.0  | 0           0    / 0          3419 / 65536         |
+------------------------------------------------------------------------------------------------+
| 0     Ascend910           | OK            | -           36                0    / 0             |
| 1     1                   | 0000:9F:00.0  | 0           0    / 0          3196 / 65536         |
+===========================+===============+====================================================+
"""
# `npu-smi info -t board -i 0 -c 0`, the field layout of the driver's documented examples.
BOARD_A2 = "        NPU ID : 0\n        Chip ID : 0\n        Chip Type : Ascend\n        Chip Name : 910B3\n"
BOARD_A3 = "        NPU ID : 0\n        NPU Name : 9392\n        Chip ID : 0\n        Chip Name : Ascend910\n"


def test_parse_npu_smi() -> None:
    assert parse_npu_smi(NPU_SMI_800I_A2) == "Ascend910B4"
    assert parse_npu_smi(NPU_SMI_310P) == "Ascend310P3"
    assert parse_npu_smi(NPU_SMI_910B_SHORT) is None, "910B does not say which of B1..B4"
    assert parse_npu_smi(NPU_SMI_A3) is None, "an A3 is Ascend910_93xx, not Ascend910"
    assert parse_npu_smi("") is None
    assert parse_npu_smi("npu-smi: command failed\ndcmi module initialize failed. ret is -8005\n") is None
    assert parse_npu_smi_board(BOARD_A2) == "Ascend910B3"
    assert parse_npu_smi_board(BOARD_A3) == "Ascend910_9392"
    assert parse_npu_smi_board(BOARD_A2.replace("910B3", "910B")) is None
    assert parse_npu_smi_board("") is None


def _npu_smi(tmp_path: Path, table: str, board: str) -> None:
    cat = shutil.which("cat", path=os.defpath)
    (tmp_path / "table.txt").write_text(table)
    (tmp_path / "board.txt").write_text(board)
    body = (
        f'if [ "$*" = "info" ]; then {cat} "{tmp_path}/table.txt"; '
        f'elif [ "$*" = "info -t board -i 0 -c 0" ]; then {cat} "{tmp_path}/board.txt"; else exit 1; fi\n'
    )
    _write_script(tmp_path / "bin" / "npu-smi", body)


def test_detect_soc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "acl", None)  # no pyACL: npu-smi it is
    monkeypatch.setenv("PATH", "")
    assert atc_mod.detect_soc_with_source() == (None, "no pyACL and no npu-smi on this host")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _npu_smi(tmp_path, NPU_SMI_800I_A2, "")
    assert atc_mod.detect_soc_with_source() == ("Ascend910B4", "npu-smi info")
    _npu_smi(tmp_path, NPU_SMI_910B_SHORT, BOARD_A2)
    assert atc_mod.detect_soc_with_source() == ("Ascend910B3", "npu-smi info -t board -i 0 -c 0")
    _npu_smi(tmp_path, NPU_SMI_A3, BOARD_A3)
    assert atc_mod.detect_soc() == "Ascend910_9392"
    _npu_smi(tmp_path, NPU_SMI_910B_SHORT, "")
    soc, why = atc_mod.detect_soc_with_source()
    assert soc is None and "'910B'" in why


def test_detect_soc_prefers_pyacl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """acl.get_soc_name() (no aclInit needed) wins over npu-smi; a None answer falls through to it."""
    fake = FakeAcl(soc_name="Ascend910B2C")
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _npu_smi(tmp_path, NPU_SMI_800I_A2, "")
    assert atc_mod.detect_soc_with_source() == ("Ascend910B2C", "acl.get_soc_name()")
    fake.soc_name = None
    assert atc_mod.detect_soc_with_source() == ("Ascend910B4", "npu-smi info")


# ---------------------------------------------------------------- running ATC (fake)

FAKE_ATC_FAIL = """\
echo "ATC start working now, please wait for a moment."
echo "E19999: Inner Error! op [Gelu] is not supported" >&2
echo "ATC run failed, Please check the detail log, Try 'atc --help' for more information"
exit 1
"""


def _job(tmp_path: Path) -> AtcJob:
    return AtcJob(
        model=tmp_path / "m.onnx", output=tmp_path / "out dir" / "model", soc="Ascend910B4", input_shapes={"x": (2, 4)}
    )


def test_run_atc_success(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    atc = _write_script(tmp_path / "atc", FAKE_ATC)
    log = tmp_path / "logs" / "atc.log"
    om = run_atc(_job(tmp_path), atc, log_file=log)
    assert om == tmp_path / "out dir" / "model.om" and om.read_bytes() == b"om"
    text = log.read_text()
    assert "ATC start working now" in text and "ATC run success" in text and "warning line on stderr" in text
    assert "--precision_mode_v2=origin" in text
    assert "ATC run success" in capsys.readouterr().out


def test_run_atc_failure(tmp_path: Path) -> None:
    atc = _write_script(tmp_path / "atc", FAKE_ATC_FAIL)
    with pytest.raises(UserError) as info:
        run_atc(_job(tmp_path), atc, log_file=tmp_path / "atc.log")
    message = str(info.value)
    assert "ATC run failed, Please check the detail log" in message and "E19999" in message
    assert "exit code 1" in message and "\n" not in message


def test_run_atc_finds_the_name_atc_chose(tmp_path: Path) -> None:
    """ATC may write NAME_<os>_<arch>.om: with --host_env_os/--host_env_cpu, and in some releases always."""
    cross = AtcJob(
        model=tmp_path / "m.onnx", output=tmp_path / "out" / "model", soc="Ascend910B4", input_shapes={"x": (2, 4)},
        host_os="linux", host_cpu="aarch64",
    )  # fmt: skip
    (tmp_path / "m.onnx").write_bytes(b"graph")
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / "model.om"
    stale.write_bytes(b"old")  # a leftover from an earlier compile must not be taken for this one
    sibling = tmp_path / "out" / "model_tile_linux_x86_64.om"
    sibling.write_bytes(b"other graph")  # another graph's file is left alone
    om = run_atc(cross, _write_script(tmp_path / "atc", FAKE_ATC))
    assert om == tmp_path / "out" / "model_linux_aarch64.om" and om.read_bytes() == b"graph"
    assert not stale.exists() and sibling.exists()
    om = run_atc(_job(tmp_path), _write_script(tmp_path / "atc2", FAKE_ATC_ALWAYS_SUFFIX))
    assert om == tmp_path / "out dir" / "model_linux_aarch64.om"


def test_run_atc_without_om(tmp_path: Path) -> None:
    atc = _write_script(tmp_path / "atc", "echo done\n")
    with pytest.raises(UserError, match="wrote no"):
        run_atc(_job(tmp_path), atc)


def test_run_atc_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ATC was not found"):
        run_atc(_job(tmp_path), tmp_path / "no-atc")


# ---------------------------------------------------------------- ONNX Runtime


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_optimize_for_ort(tmp_path: Path) -> None:
    src = _save(_clean_model(), tmp_path / "m.onnx")
    out = optimize_for_ort(src, tmp_path / "opt" / "m.ort.onnx", threads=1)
    assert out == tmp_path / "opt" / "m.ort.onnx"
    onnx.load(str(out))
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(out.parent)) == ["m.ort.onnx"]


def test_optimize_for_ort_external_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        initializers=[w],
    )
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "m.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="w.data")
    out = optimize_for_ort(src, tmp_path / "opt" / "m.onnx")
    assert (tmp_path / "opt" / "m.onnx.data").is_file()
    assert lint_onnx(out) == []  # external-data offsets in the optimised file check out
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-5, atol=1e-5)


def test_optimize_for_ort_cuda_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _save(_clean_model(), tmp_path / "m.onnx")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UserError, match="CUDAExecutionProvider"):
        optimize_for_ort(src, tmp_path / "o.onnx", provider="cuda")
    with pytest.raises(UserError, match="provider"):
        optimize_for_ort(src, tmp_path / "o.onnx", provider="tpu")


def test_cast_to_complex_or_double_inside_the_graph_is_flagged(tmp_path):
    from onnx import TensorProto, helper

    from ltx_ascend.graph_lint import lint_onnx

    for to in (TensorProto.COMPLEX128, TensorProto.DOUBLE):
        graph = helper.make_graph(
            [
                helper.make_node("Cast", ["x"], ["c"], name="bad_cast", to=to),
                helper.make_node("Cast", ["c"], ["y"], name="back", to=TensorProto.FLOAT),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        )
        path = tmp_path / f"cast{to}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
        violations = lint_onnx(path)
        assert [(v.rule, v.node) for v in violations] == [("dtype", "bad_cast")]
