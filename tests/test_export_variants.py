"""DiT graph variants: ort-fused (ORT's fused attention and RMSNorm), W8A8 for ORT and for Ascend."""

from __future__ import annotations

import dataclasses

import onnx
import onnxruntime as ort
import pytest
import torch

from ltx_ascend.components import request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export import dit_layouts, quantize
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.graph_lint import lint_onnx, op_histogram
from ltx_ascend.metrics import TOLERANCES, compare
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import Variant, weight_files

PROFILE = shape_profile("9x64x96", text_tokens=64)


def _run(path, item):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(item.output_names), {n: item.sample[n].numpy() for n in item.input_names})


def test_ort_fused_whole_dit_matches_eager_without_scores(tiny, tmp_path, capsys):
    """MultiHeadAttention + SimplifiedLayerNormalization, no Softmax: float32 parity with eager ltx-core,
    and a perturbed input leaves tolerance (the comparison can fail)."""
    options = ExportOptions(dit_layout="whole", ort_fused=True)
    result = export_component("dit", tiny.checkpoint_set(), PROFILE, out=tmp_path, options=options, verify=True)
    (graph,) = result.graphs
    assert all(c.passes(TOLERANCES["float32"]) for c in graph.comparisons.values()), graph.comparisons
    assert graph.ops["MultiHeadAttention"] == 12 and graph.ops["SimplifiedLayerNormalization"] > 0
    assert "Softmax" not in graph.ops and "ReduceMean" not in graph.ops
    path = result.folder / graph.file
    assert lint_onnx(path, target="ort") == []
    atc = lint_onnx(path)  # the ATC lint refuses com.microsoft ops
    assert any("com.microsoft" in v.detail for v in atc)
    (item,) = dit_layouts.build_items(tiny.checkpoint_set(), PROFILE, torch.float32, options)
    broken = dataclasses.replace(item, sample={**item.sample, "video_latent": item.sample["video_latent"] * -1.0})
    out = _run(path, broken)
    assert not compare(item.reference(item.sample)[0], torch.from_numpy(out[0])).passes(TOLERANCES["float32"])
    # ltx-compile: ATC refuses the ORT-only variant in one line; the ORT target compiles it
    from ltx_ascend.compile import cli as compile_cli
    from tests.conftest import run_cli

    code, out_text, _ = run_cli(compile_cli.main, ["--target", "om", "--dry-run", str(result.folder)], capsys)
    assert code == 2 and "ONNX Runtime-only" in out_text
    code, out_text, err = run_cli(compile_cli.main, ["--target", "ort", str(result.folder)], capsys)
    assert code == 0 and (result.folder / "ort-cpu" / "dit.onnx").is_file(), err


def test_variant_names_and_request_keys(tiny):
    """The portable request is unchanged (same cache keys as before variants existed); variants differ."""
    ckset = tiny.checkpoint_set()
    plain = request_for("dit", ckset, PROFILE, torch.float32, Variant())
    assert "variant" not in plain and "quantization" not in plain and plain["opset"] == 18
    fused = request_for("dit", ckset, PROFILE, torch.float32, Variant(ort_fused=True))
    quant = request_for("dit", ckset, PROFILE, torch.float32, Variant(npu_ops=True, quantization="w8a8"))
    assert fused["variant"] == "ort-fused" and quant["variant"] == "npu-ops+w8a8" and quant["opset"] == 16
    assert Variant(ort_fused=True, quantization="w8a8").name == "ort-fused+w8a8"
    for label, ort_only in {"ort-fused": True, "w8a8": True, "npu-ops+w8a8": False, "portable": False}.items():
        assert Variant.parse(label).label == label and Variant.parse(label).ort_only == ort_only
    with pytest.raises(UserError, match="exclude each other"):
        request_for("dit", ckset, PROFILE, torch.float32, Variant(npu_ops=True, ort_fused=True))
    with pytest.raises(UserError, match="--quantization int4"):
        request_for("dit", ckset, PROFILE, torch.float32, Variant(quantization="int4"))


def test_w8a8_reference_arithmetic():
    """Per-channel symmetric weights, per-token symmetric activations; one outlier token does not
    change the other tokens' result (it would under a per-tensor activation scale)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    x = torch.randn(2, 64, 256)
    q = quantize.QuantLinear(linear)
    assert q.weight.dtype == torch.int8 and q.weight_scale.shape == (128,)
    assert q.weight.abs().amax(dim=1).eq(127).all()  # every output channel uses its full range
    with torch.no_grad():
        ref, out = linear(x), q(x)
        assert compare(ref, out).cosine > 0.999
        spiky = x.clone()
        spiky[0, 0] *= 1000.0
        assert torch.allclose(q(spiky)[:, 1:], out[:, 1:])
        wrong = quantize.w8a8_reference(x, q.weight, q.weight_scale * 1.5, q.bias)  # a broken rescale
        assert compare(ref, out).rel_l2 < 0.02 and compare(ref, wrong).rel_l2 > 0.2


def test_quantization_skip_and_state_dict_agree():
    attn = torch.nn.ModuleDict({"to_q": torch.nn.Linear(32, 32)})
    block = torch.nn.ModuleDict({"attn1": attn, "ff": torch.nn.Linear(32, 16)})
    assert quantize.quantizable(block, ("attn1.*",)) == ["ff"]
    state = {k: v.detach().clone() for k, v in block.state_dict().items()}
    names = quantize.quantize_module_(block, ("attn1.*",))
    assert isinstance(block["ff"], quantize.QuantLinear) and isinstance(block["attn1"]["to_q"], torch.nn.Linear)
    streamed = quantize.quantize_state_dict(state, names)  # the block files are written this way
    for name, param in block.named_parameters():
        assert torch.equal(streamed[name], param), name


def test_w8a8_blocks_on_ort_match_eager_w8a8(tiny, tmp_path):
    """ORT's lowering (per-token uint8 + MatMulInteger) equals the eager W8A8 reference; weights are
    int8 inputs with a float32 scale per output channel; norms, AdaLN and attention stay float."""
    options = ExportOptions(dit_layout="blocks", ort_fused=True, quantization="w8a8")
    result = export_component("dit", tiny.checkpoint_set(), PROFILE, out=tmp_path, options=options, verify=True)
    graphs = {g.name: g for g in result.graphs}
    for g in graphs.values():
        assert all(c.passes(TOLERANCES["float32"]) for c in g.comparisons.values()), (g.name, g.comparisons)
    block = graphs["dit-block"]
    model = onnx.load(str(result.folder / block.file))
    weights = {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name.startswith("w.")}
    int8 = [n for n, t in weights.items() if t == onnx.TensorProto.INT8]
    assert len(int8) == block.ops["MatMulInteger"] == 34
    assert all(weights[n + "_scale"] == onnx.TensorProto.FLOAT for n in int8)
    assert "MatMulInteger" not in graphs["dit-input"].ops and "MatMulInteger" not in graphs["dit-output"].ops
    assert block.ops["MultiHeadAttention"] == 6
    manifest = (result.folder / "manifest.json").read_text()
    assert '"variant": "ort-fused+w8a8"' in manifest


def test_w8a8_whole_dit_close_to_float(tiny):
    """Information, asserted loosely: the quantized tiny DiT's X0 stays close to the float one."""
    whole = ExportOptions(dit_layout="whole")
    (float_item,) = dit_layouts.build_items(tiny.checkpoint_set(), PROFILE, torch.float32, whole)
    (quant_item,) = dit_layouts.build_items(
        tiny.checkpoint_set(), PROFILE, torch.float32, ExportOptions(dit_layout="whole", quantization="w8a8")
    )
    ref, out = float_item.reference(float_item.sample), quant_item.reference(quant_item.sample)
    assert compare(ref[0], out[0]).cosine > 0.99
    assert not torch.equal(ref[0], out[0])


def test_ascend_w8a8_graph_contract(tiny, tmp_path):
    """Contract only (no CANN here): opset 16 (CANN registers ai.onnx::QuantBatchMatMul for 8-16),
    ai.onnx NPUDynamicQuant -> QuantBatchMatMul(x1, x2 [N, K] transposed, scale, -, bias,
    pertoken_scale), BSH fused attention, ATC-lint clean."""
    options = ExportOptions(npu_ops=True, dit_layout="blocks", quantization="w8a8")
    result = export_component("dit", tiny.checkpoint_set(), PROFILE, out=tmp_path, options=options)
    path = result.folder / "dit-block.onnx"
    assert lint_onnx(path) == []
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import} == {"": 16, "npu": 1}
    ops = op_histogram(path)
    assert ops["NPUDynamicQuant"] == ops["QuantBatchMatMul"] == 34 and ops["NPUPromptFlashAttention"] == 6
    assert "MatMulInteger" not in ops and "Softmax" not in ops
    matmul = next(n for n in model.graph.node if n.op_type == "QuantBatchMatMul")
    quant = next(n for n in model.graph.node if n.output[0] == matmul.input[0])
    assert matmul.domain == "" and quant.op_type == "NPUDynamicQuant" and quant.domain == ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in matmul.attribute}
    assert attrs == {"dtype": 0, "transpose_x1": 0, "transpose_x2": 1}
    assert len(matmul.input) == 6 and matmul.input[3] == "" and matmul.input[5] == quant.output[1]
    assert matmul.input[1].startswith("w.") and matmul.input[2] == matmul.input[1] + "_scale"
    fa = next(n for n in model.graph.node if n.op_type == "NPUPromptFlashAttention")
    fa_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fa.attribute}
    assert fa_attrs["input_layout"] == b"BSH" and fa_attrs["scale_value"] == pytest.approx(16**-0.5)


def test_quantization_report_per_block_cosine(tiny):
    """ltx-verify --quantization's rows (tiny width here; the real width is the CLI's default): W8A8
    close to float; outlier channels cost cosine on the block's own update, SmoothQuant wins it back."""
    from ltx_ascend.checkpoints.loader import read_model_config
    from ltx_ascend.tools.quant_report import quantization_report

    config = read_model_config(tiny.checkpoint)
    rows = quantization_report(config, PROFILE)
    assert [r["output"] for r in rows] == ["video_x_out", "video_x_out - x", "audio_x_out", "audio_x_out - x"]
    assert all(r["cosine"] > 0.99 for r in rows)
    spiky = quantization_report(config, PROFILE, outlier_channels=2, outlier_scale=200.0)
    smoothed = quantization_report(config, PROFILE, outlier_channels=2, outlier_scale=200.0, smooth_alpha=0.5)
    update = lambda rs: min(r["cosine"] for r in rs if r["output"].endswith(" - x"))  # noqa: E731
    assert update(spiky) < update(rows) and update(smoothed) > update(spiky)


def test_sample_adaln_block_graph_equals_per_token_and_runs_only_on_shared_timesteps(tiny, tmp_path):
    """ort-fused block layouts also carry the block graph fed one video AdaLN row per pass. On one
    timestep per pass it gives what the per-token graph gives, bit for bit; the runner picks it only
    then (per-token timesteps keep the per-token graph); another timestep's row fails the comparison."""
    from ltx_core.guidance.perturbations import PerturbationConfig
    from ltx_core.model.transformer.modality import Modality

    from ltx_ascend.checkpoints.loader import read_model_config
    from ltx_ascend.engine.dit_runner import SAMPLE_ADALN_GRAPH, SAMPLE_INPUT_GRAPH, DiTRunner, Pass
    from ltx_ascend.export import dit, dit_blocks
    from ltx_ascend.runtime.artifacts import open_sessions
    from ltx_ascend.store import resolve_folder
    from ltx_ascend.tools.bench import _bench_block_item

    ckset = tiny.checkpoint_set()
    options = ExportOptions(dit_layout="blocks", ort_fused=True)
    result = export_component("dit", ckset, PROFILE, out=tmp_path, options=options, verify=True)
    graphs = {g.name: g for g in result.graphs}
    assert set(graphs) == {"dit-input", "dit-block", SAMPLE_INPUT_GRAPH, SAMPLE_ADALN_GRAPH, "dit-output"}
    for g in graphs.values():
        assert all(c.passes(TOLERANCES["float32"]) for c in g.comparisons.values()), (g.name, g.comparisons)
    sessions = open_sessions(resolve_folder(result.folder, "onnx"))
    adaln = next(s for s in sessions[SAMPLE_ADALN_GRAPH].inputs if s.name == "video_adaln")
    assert adaln.shape[1] == 1  # [passes, 1, 9 x dim]
    config, files = read_model_config(ckset.checkpoint), weight_files(result.folder)
    lean = DiTRunner(config, sessions, block_weights=files)
    per_token = DiTRunner(config, {k: v for k, v in sessions.items() if k != SAMPLE_ADALN_GRAPH}, block_weights=files)

    g = torch.Generator().manual_seed(0)
    video_pos, audio_pos = dit.latent_positions(PROFILE)
    dims = {s.name: s.shape for s in sessions["dit-input"].inputs}

    def modality(name: str, positions: torch.Tensor, timesteps: torch.Tensor) -> Modality:
        latent = torch.randn(dims[f"{name}_latent"], generator=g)
        return Modality(latent=latent, sigma=torch.tensor([0.7]), timesteps=timesteps, positions=positions,
                        context=torch.zeros(1))  # fmt: skip

    shared = {m: torch.full((1, dims[f"{m}_latent"][1], 1), 0.7) for m in ("video", "audio")}
    video, audio = modality("video", video_pos, shared["video"]), modality("audio", audio_pos, shared["audio"])
    contexts = (torch.randn(dims[f"{m}_context"], generator=g) for m in ("video", "audio"))
    passes = [Pass(PerturbationConfig.empty(), *contexts)]
    feeds = lean._feeds(video, audio, passes)
    acts = lean.run_input(feeds)
    assert acts["video_adaln"].shape[1] == 1 and lean.block_session(acts) is sessions[SAMPLE_ADALN_GRAPH]
    ((v_lean, a_lean),) = lean(video, audio, passes)
    ((v_tok, a_tok),) = per_token(video, audio, passes)
    assert torch.equal(v_lean, v_tok) and torch.equal(a_lean, a_tok)  # broadcast rows: the same arithmetic

    # Per-token timesteps (four tokens conditioned, as an image condition makes them): the per-token graph.
    conditioned = shared["video"].clone()
    conditioned[:, :4] = 0.0
    video_c = dataclasses.replace(video, timesteps=conditioned)
    acts_c = lean.run_input(lean._feeds(video_c, audio, passes))
    assert acts_c["video_adaln"].shape[1] > 1 and lean.block_session(acts_c) is sessions["dit-block"]
    ((v_c, _),) = lean(video_c, audio, passes)
    ((v_c_tok, _),) = per_token(video_c, audio, passes)
    assert torch.equal(v_c, v_c_tok)
    assert dit_blocks.shared_adaln(acts_c) is None  # the full compare alone sees it too

    # A deliberately wrong row (timestep 0.3's) in the per-sample graph fails against the per-token output.
    video_other = dataclasses.replace(video, timesteps=shared["video"] * 0.3 / 0.7)
    other = lean.run_input(lean._feeds(video_other, audio, passes))
    block_in = {**acts, **feeds, **dit_blocks.block_skip_columns(feeds, 0), "video_adaln": other["video_adaln"]}
    block_in |= {dit_blocks.WEIGHT_PREFIX + k: v for k, v in lean.block_weights[0].items()}
    session = sessions[SAMPLE_ADALN_GRAPH]
    wrong = session.run({s.name: block_in[s.name] for s in session.inputs})["video_x_out"]
    block_in["video_adaln"] = acts["video_adaln"]
    right = session.run({s.name: block_in[s.name] for s in session.inputs})["video_x_out"]
    full = per_token.run_input(feeds)
    block_in["video_adaln"] = full["video_adaln"]
    want = sessions["dit-block"].run({s.name: block_in[s.name] for s in sessions["dit-block"].inputs})["video_x_out"]
    assert compare(want, right).passes(TOLERANCES["float32"])
    assert not compare(want, wrong).passes(TOLERANCES["float32"])

    # ltx-bench's 22b-block preset times the graph the runner would pick on its (shared-timestep) sample.
    items = dit_layouts.build_items(ckset, PROFILE, torch.float32, options)
    assert _bench_block_item(items).variant == dit_blocks.SAMPLE_ADALN
    assert _bench_block_item([i for i in items if i.variant != dit_blocks.SAMPLE_ADALN]).variant == "block"
    for s in sessions.values():
        s.close()


def test_int8_matmul_is_exact_with_and_without_an_int8_dot_product(monkeypatch):
    """Without VNNI/AMX (an AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2) the W8A8 reference runs float32 GEMMs
    over exact K-chunks: the same int32 sums as torch's int8 GEMM, bit for bit, at K where one float32
    GEMM need not be exact (rows of 127: sums up to 66M > 2^24)."""
    from ltx_ascend import cpu_isa

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (64, 4096), generator=g, dtype=torch.int8)
    x[0] = 127  # extreme rows: every product 16,129
    w = torch.randint(-127, 128, (32, 4096), generator=g, dtype=torch.int8)
    w[0] = 127
    exact = (x.long() @ w.long().t()).float()  # int64, then the one rounding to float32 both paths make
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_isa.has_int8_dot() and "int8 dot product: no" in cpu_isa.describe()
    chunked = quantize._int8_matmul(x, w)
    assert torch.equal(chunked, exact)
    off_by_one = w.clone()
    off_by_one[5, 7] -= 1  # one weight one step off: the comparison sees it
    assert not torch.equal(chunked, (x.long() @ off_by_one.long().t()).float())
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert torch.equal(quantize._int8_matmul(x, w), exact)
