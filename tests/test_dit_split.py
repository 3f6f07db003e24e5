"""The split block layout (export/dit_split.py) in one process: the block graph cut at its attention
cores, run as segments with ltx-core's core between them, must be the block graph (U = 1: the
shard is the whole sequence), and a segment boundary that hands on the wrong tensor must show."""

from __future__ import annotations

import onnx
import pytest
import torch
from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType
from ltx_core.model.transformer.modality import Modality

from ltx_ascend.checkpoints.loader import CheckpointSet, read_model_config
from ltx_ascend.compile.compiler import compile_om
from ltx_ascend.engine.dit_runner import DiTRunner, Pass
from ltx_ascend.export import cli as export_cli
from ltx_ascend.export.dit_split import MARKER_DOMAIN
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.runtime.artifacts import open_component
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import resolve_folder
from tests.conftest import run_cli

SHAPE = "17x128x192"  # stage 1: 18 video and 18 audio tokens
MAX_ABS_ERROR = 1e-5  # float32 rounding (the same ops, in other graphs)


def _runner(tiny, tmp_path, layout: str, backend: str = "onnx", soc: str | None = None) -> tuple[DiTRunner, dict]:
    ckset = CheckpointSet(tiny.checkpoint)
    profile = shape_profile(SHAPE, stage=1, batch=2)
    options = ExportOptions(dit_layout=layout)
    result = export_component("dit", ckset, profile, options=options, out=tmp_path, verify=layout == "split")
    if backend == "om":
        compile_om(result.folder, soc, None, force=False, dry_run=False)
    resolution = resolve_folder(result.folder, backend, soc=soc)
    sessions = open_component(resolution, fallback="none", threads=1)
    weights = list(resolution.weights)
    reports = {g.name: g for g in result.graphs}
    return DiTRunner(read_model_config(ckset.checkpoint), sessions, block_weights=weights), reports


def _step_inputs(runner: DiTRunner) -> tuple[Modality, Modality, list[Pass]]:
    """One call of two passes: plain, and STG on block 1 (the skip masks cross the cut too)."""
    g = torch.Generator().manual_seed(0)

    def modality(dims: int) -> Modality:
        timesteps = torch.rand(1, 18, 1, generator=g)
        timesteps[:, :2] = 0.0  # conditioned tokens: per-token AdaLN
        return Modality(
            latent=torch.randn(1, 18, 128, generator=g),
            sigma=torch.tensor([0.7]),
            timesteps=timesteps,
            positions=torch.rand(1, dims, 18, 2, generator=g) * 8,
            context=torch.zeros(1),
        )

    block = runner._meta.transformer_blocks[0]
    context = [torch.randn(1, 1024, a.to_k.in_features, generator=g) for a in (block.attn2, block.audio_attn2)]
    stg = PerturbationConfig([Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [1])])
    return modality(3), modality(1), [Pass(PerturbationConfig.empty(), *context), Pass(stg, *context)]


def _error(got, ref) -> float:
    return max((a - b).abs().max().item() for g, r in zip(got, ref, strict=True) for a, b in zip(g, r, strict=True))


class _Swapped:
    """A segment whose outputs `a` and `b` (same shape) trade places: a boundary handing on the wrong tensor."""

    def __init__(self, session, a: str, b: str) -> None:
        self.session, self.a, self.b = session, a, b
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        out = self.session.run(feeds)
        out[self.a], out[self.b] = out[self.b], out[self.a]
        return out


def test_segments_equal_the_block_graph(tiny, tmp_path):
    blocks, _ = _runner(tiny, tmp_path, "blocks")
    split, reports = _runner(tiny, tmp_path, "split")
    assert blocks.layout == "blocks" and split.layout == "split" and len(split.segments) == 3
    # the exporter's own check: segments + ltx-core's cores against ltx-core's block
    assert reports["dit-segment2"].comparisons["video_x_out"].max_abs < MAX_ABS_ERROR
    # no marker survives, and each segment's boundary is what the cut says
    names = [s.output_names for s in split.segments]
    assert {n for n in names[0] if n.endswith((".q", ".k", ".v"))} == {
        f"{c}.{s}" for c in ("attn1", "audio_attn1") for s in "qkv"
    }
    assert {n for n in names[1] if n.endswith(".q")} == {"audio_to_video_attn.q", "video_to_audio_attn.q"}
    assert names[2] == ["video_x_out", "audio_x_out"]
    for path in sorted(tmp_path.glob("dit/*/dit-segment*.onnx")):
        assert all(n.domain != MARKER_DOMAIN for n in onnx.load(str(path)).graph.node), path
    video, audio, passes = _step_inputs(blocks)
    reference = blocks(video, audio, passes)
    error = _error(split(video, audio, passes), reference)
    print(f"split (U=1) vs block graph: max abs error {error:.2e}")
    assert error <= MAX_ABS_ERROR
    # a wrong tensor at any boundary shows: two carried values, or q and k of a core, swapped
    carried = [n for n in split.segments[1].output_names if n.startswith("carry.")]
    shapes = {s.name: s.shape for s in split.segments[1].outputs}
    same = next((a, b) for a in carried for b in carried if a < b and shapes[a] == shapes[b])
    cross = ("video_to_audio_attn.q", "video_to_audio_attn.k")
    for index, (a, b) in ((1, same), (0, ("attn1.q", "attn1.k")), (1, cross)):
        good = split.segments[index]
        split.segments[index] = _Swapped(good, a, b)
        broken = _error(split(video, audio, passes), reference)
        split.segments[index] = good
        print(f"segment {index} with {a} and {b} swapped: max abs error {broken:.2e}")
        assert broken > 1e3 * MAX_ABS_ERROR, (a, b, broken)


@pytest.mark.contract
def test_split_segments_on_the_om_session(tiny, tmp_path, monkeypatch):
    """Contract only (no Ascend here): the segments through ATC (the fake `atc`) and the om session
    (the stand-in pyACL, which runs the ONNX inside the .om): every segment loads and binds its
    named boundary tensors (carry.*, <core>.out) by name, and the chain gives the ORT chain's X0."""
    import os
    import stat
    import sys

    from ltx_ascend.runtime import om_session
    from tests.fake_cann import FAKE_ATC, FakeAcl

    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    fake = FakeAcl(soc_name="Ascend910B4")
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    ort, _ = _runner(tiny, tmp_path, "split")
    om, _ = _runner(tiny, tmp_path, "split", backend="om", soc="Ascend910B4")
    assert om.layout == "split" and all(s.backend == "om" for s in om.segments)
    video, audio, passes = _step_inputs(ort)
    error = _error(om(video, audio, passes), ort(video, audio, passes))
    # 2 layers x 3 segments + input + output graphs, one call of two passes
    assert fake.count("mdl.execute_async") == 2 * 3 + 2 and not fake.violations
    assert error <= MAX_ABS_ERROR, error
    for session in om.sessions.values():
        session.close()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ulysses", "2"], "--ulysses 2 shards the split block chain: add --dit-layout split"),
        (["--dit-layout", "split", "--ulysses", "4"], "has 2 heads, not divisible by ulysses=4"),
        (["--dit-layout", "split", "--npu-ops", "--ort-fused"], "--npu-ops and --ort-fused exclude each other"),
        (["--dit-layout", "split", "--ulysses", "0"], "--ulysses 0: must be >= 1"),
    ],
)
def test_split_export_refusals(tiny, tmp_path, capsys, extra, expected):
    argv = ["--component", "dit", "--checkpoint-path", str(tiny.checkpoint), "--shape", SHAPE, "--stage", "1"]
    code, _, err = run_cli(export_cli.main, [*argv, "--out", str(tmp_path), *extra], capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("dit/*/*.onnx"))


def test_ulysses_refuses_the_whole_dit_graph(tiny, tmp_path, capsys, monkeypatch):
    """Before any load or process group: a whole-DiT graph cannot be sharded over the sequence."""
    from ltx_ascend.tools import run as cli
    from tests import pipeline_harness as H

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["ti2vid_two_stages", *H.checkpoint_args(tiny), "--backend", "ort", "--dtype", "float32",
            "--artifacts", str(tmp_path), "--output-path", str(tmp_path / "x.mp4"),
            "--parallel", "ulysses=2", "--dit-layout", "whole"]  # fmt: skip
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2 and "--dit-layout whole with --parallel cfg=1,ulysses=2" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.mp4").exists()


def test_bench_parallel_times_the_split_graphs_on_ort(tiny, tmp_path, monkeypatch):
    """`ltx-bench --parallel cfg=1 --backends ort` (the one-rank base) on the tiny set's geometry:
    the split graphs are exported, compiled for ORT and timed through the runner; no torchrun."""
    from ltx_ascend.tools import bench

    monkeypatch.setattr(bench, "bench_config", lambda layers=1: read_model_config(tiny.checkpoint))
    threads = torch.get_num_threads()
    try:
        row = bench.bench_parallel("cfg=1", "9x128x192", 1, 1, "ort", tmp_path)  # sets 1 thread, as a rank
    finally:
        torch.set_num_threads(threads)
    assert row is not None and row["backend"] == "ort" and row["ranks"] == 1 and row["median_s"] > 0
    segments = list((tmp_path / "bench" / "dit").rglob("ort-cpu/dit-segment*.onnx"))
    assert len(segments) == 3, segments
