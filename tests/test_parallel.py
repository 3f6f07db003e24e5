"""Multi-device ltx-run on CPU: 2 gloo ranks spawned through torchrun, compared with one process.

Pass parallel (cfg=2) and Ulysses sequence parallel (ulysses=2) must reproduce the single-process
output of ti2vid_two_stages and keyframe_interpolation (eager; ORT for cfg) in float32; the DiT
step with token counts that do not divide by U (padding) must match at the tensor level; bad
layouts get one-line errors before anything loads. The video decode spread over the ranks must
equal one process's decode exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ltx_ascend.metrics import compare
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli
from tests.test_pipeline_keyframe_interpolation import image_args, keyframes

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FRAMES_PSNR_DB = 60.0
AUDIO_MAX_ERROR = 1e-4
# Ulysses with the tiny set's 2 heads rounds ~1e-7 differently at the DiT's X0: ltx-core's per-head
# attention gate takes the sigmoid of [B, T, 2] values, and ATen's vector loop runs the last
# numel % 32 of them through its scalar sigmoid (<= 1 ulp apart), so which tokens round which way
# depends on the split. The tiny set's random VAE and vocoder amplify that to ~1e-4 on the
# waveform (measured 0.8e-4 to 1.3e-4 here; holding the audio whole on every rank instead of
# splitting it does not change that: the video carries it in through the A-V attention). With
# LTX-2.3's 32 heads the gates fill whole vectors and Ulysses is bit-exact (the `dit-heads` job).
# A split bug costs 0.2 to 0.8 at X0 (checked by breaking the all-to-all).
ULYSSES_AUDIO_MAX_ERROR = 3e-4
# 17 frames: 18 video tokens at stage 1, 72 at stage 2, 18 audio tokens (the padded case, tokens
# not divisible by U, is checked at the DiT step below, where rounding is not amplified by decoders)
STEPS = 2
FRAMES = 17


def _argv(pipeline: str, tiny, out: Path, name: str, backend: str, *extra: str) -> list[str]:
    return [
        pipeline, *H.checkpoint_args(tiny), *H.setting_args(num_inference_steps=STEPS, num_frames=FRAMES),
        *extra, "--backend", backend, "--dtype", "float32", "--artifacts", str(out / "artifacts"),
        "--build-missing", "--output-path", str(out / f"{name}.mp4"), "--raw-output", str(out / f"{name}.safetensors"),
    ]  # fmt: skip


def _torchrun(logs: Path, script: str, *args: str, nproc: int = 2) -> list[tuple[str, str]]:
    """(stdout, stderr) of each rank, as torchrun's --redirects keeps them apart."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "--log-dir", str(logs), "--redirects", "3"]
    result = subprocess.run([*cmd, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = lambda rank, name: next(logs.glob(f"*/attempt_0/{rank}/{name}.log")).read_text()  # noqa: E731
    ranks = [(log(r, "stdout"), log(r, "stderr")) for r in range(nproc)]
    assert result.returncode == 0, "\n".join(err[-3000:] for _, err in ranks)
    return ranks


def _assert_same(name: str, single: dict, parallel: dict) -> None:
    frames = compare(single["video"].float(), parallel["video"].float(), peak=255.0)
    audio_error = (single["audio"] - parallel["audio"]).abs().max().item()
    print(f"{name}: frames {frames.psnr_db:.1f} dB, audio max error {audio_error:.2e}")
    assert frames.psnr_db >= FRAMES_PSNR_DB, (name, frames)
    assert audio_error <= (ULYSSES_AUDIO_MAX_ERROR if "-uly-" in name else AUDIO_MAX_ERROR), (name, audio_error)


def test_cfg_and_ulysses_match_single_process(tiny, tmp_path):
    """One torchrun launch runs every 2-rank check; the single-process runs follow in-process."""
    specs = keyframes(tmp_path)[:1]  # keyframe tokens appended to the video sequence
    kf = image_args(specs)
    two, kfi = "ti2vid_two_stages", "keyframe_interpolation"
    runs = {
        "two-cfg-eager": _argv(two, tiny, tmp_path, "two-cfg-eager", "eager", "--parallel", "cfg=2"),
        "two-uly-eager": _argv(two, tiny, tmp_path, "two-uly-eager", "eager", "--parallel", "ulysses=2"),
        "two-cfg-ort": _argv(two, tiny, tmp_path, "two-cfg-ort", "ort", "--parallel", "cfg=2"),
        "kf-cfg-eager": _argv(kfi, tiny, tmp_path, "kf-cfg-eager", "eager", *kf, "--parallel", "cfg=2"),
        "kf-uly-eager": _argv(kfi, tiny, tmp_path, "kf-uly-eager", "eager", *kf, "--parallel", "ulysses=2"),
        "kf-cfg-ort": _argv(kfi, tiny, tmp_path, "kf-cfg-ort", "ort", *kf, "--parallel", "cfg=2"),
    }
    # the video decode's tiles over the ranks, at sizes where ltx-core's tiled decode engages: 2 temporal
    # x 3 spatial tiles (eager and ORT graphs per tile shape) and 3 spatial tiles (rank 0 decodes two)
    artifacts = str(tmp_path / "artifacts")
    decodes = [(tiny.checkpoint, artifacts, b, s) for b, s in (("eager", "41x64x1152"), ("ort", "81x64x1152"))]
    jobs = [
        {"dit-step": str(tiny.checkpoint)},
        {"dit-heads": 32},  # LTX-2.3's head count: Ulysses bit-exact at the pipelines' token counts
        *({"decode": list(map(str, d))} for d in decodes),
        *({"ltx-run": argv} for argv in runs.values()),
    ]
    (out0, _), (out1, err1) = _torchrun(tmp_path / "logs", "tests/parallel_driver.py", json.dumps(jobs))
    print(out0)
    # the DiT step with padded shards: both layouts within float32 rounding of one process
    assert out0.count("max abs error") == 2, out0
    assert "ltx-plan model" in out0, out0  # and ltx-plan's Ulysses byte count equals what was sent
    heads = [line for line in out0.splitlines() if line.startswith("dit 32 heads")]  # Ulysses at LTX-2.3's heads
    assert len(heads) == 3 and all("(bit-exact" in line or "(within" in line for line in heads), out0
    # spread decode = one process's decode bit for bit; a rank sending a wrong tile is caught
    for _, _, backend, shape in decodes:
        line = next(line for line in out0.splitlines() if line.startswith(f"decode {backend} {shape}:"))
        assert "frames max error 0, video max error 0.00e+00" in line and "over 2 ranks" in line, line
        assert float(line.rsplit(" ", 1)[1]) > 0.1, line
    # rank 0 alone reports (one result line per run); rank 1 prints nothing, no progress bars
    assert out0.count(" frames -> ") == len(runs), out0
    assert out0.count("dit=ort") == 2, out0  # the ORT runs ran their DiT on ORT graphs of batch 2
    assert out1 == "" and "it/s" not in err1, (out1, err1[-2000:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: same kernels, same rounding
    try:
        singles = {
            "two-eager": _argv(two, tiny, tmp_path, "two-eager", "eager"),
            "two-ort": _argv(two, tiny, tmp_path, "two-ort", "ort"),
            "kf-eager": _argv(kfi, tiny, tmp_path, "kf-eager", "eager", *kf),
            "kf-ort": _argv(kfi, tiny, tmp_path, "kf-ort", "ort", *kf),
        }
        for argv in singles.values():
            assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    load = lambda name: load_file(str(tmp_path / f"{name}.safetensors"))  # noqa: E731
    for name, single in (
        ("two-cfg-eager", "two-eager"),
        ("two-uly-eager", "two-eager"),
        ("two-cfg-ort", "two-ort"),
        ("kf-cfg-eager", "kf-eager"),
        ("kf-uly-eager", "kf-eager"),
        ("kf-cfg-ort", "kf-ort"),
    ):
        _assert_same(name, load(single), load(name))
    assert len(list(tmp_path.glob("*.mp4"))) == len(runs) + len(singles)


@pytest.mark.parametrize(
    ("env", "parallel", "expected"),
    [
        ({}, "cfg=2", "--parallel cfg=2,ulysses=1 needs 2 processes: launch as `torchrun"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "cfg=2,ulysses=2", "is 2 x 2 = 4 ranks but torchrun started 2"),
        ({"RANK": "0", "WORLD_SIZE": "4"}, "ulysses=4", "has 2 heads, not divisible by ulysses=4"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, None, "torchrun started 2 ranks: pass --parallel"),
        ({}, "cfg=two", "expected cfg=C,ulysses=U with positive integers"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "ulysses=2 --step-cache auto", "ranks of a sequence could skip"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "cfg=2 --step-cache-search 40", "calibrates on one device"),
    ],
)
def test_bad_layouts_are_one_line_errors(tiny, tmp_path, capsys, monkeypatch, env, parallel, expected):
    """Checked before any model loads or any process group opens (so one process can see them)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = _argv("ti2vid_two_stages", tiny, tmp_path, "bad", "eager")
    extra = ["--parallel", *parallel.split()] if parallel else []
    code, out, err = run_cli(cli.main, [*argv, *extra], capsys)
    assert code == 2, (out, err)
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "bad.mp4").exists()


def test_plan_parallel(capsys, tmp_path):
    """ltx-plan --devices 8: per-rank passes, the cfg gather volume by hand, a faster predicted step."""
    from ltx_ascend.shapes import shape_profile
    from ltx_ascend.tools import plan

    report = tmp_path / "plan.json"
    base = ["ti2vid_two_stages", "--shape", "41x1024x1536"]
    code, out, err = run_cli(plan.main, [*base, "--devices", "8", "--parallel", "cfg=8", "--json", str(report)], capsys)
    assert code == 0, err
    assert "on 8 devices, cfg=8 x ulysses=1" in out and "published" in out
    stages = json.loads(report.read_text())["parallel"]["stages"]
    stage1 = shape_profile("41x1024x1536", stage=1)
    assert stages[0]["passes_per_rank"] == 1
    gather = (stage1.video_tokens + stage1.audio_tokens) * 128 * 2 * 7  # one X0 pass sent to 7 peers, bf16
    assert stages[0]["comm_mb_per_step"] == pytest.approx(gather / 1e6)
    assert stages[0]["predicted_s_n"] < stages[0]["measured_s_1"] / 3  # 4 passes over 4+ ranks
    code, _, err = run_cli(plan.main, [*base, "--devices", "8", "--parallel", "cfg=2,ulysses=2"], capsys)
    assert code == 2 and "= 4 devices, not --devices 8" in err
    code, _, err = run_cli(plan.main, [*base, "--devices", "6", "--parallel", "ulysses=6"], capsys)
    assert code == 2 and "32 heads, not divisible by ulysses=6" in err


def check_binding(kind: str, backend: str) -> None:
    """Rank 5 of 8 with LOCAL_RANK 1 binds device 1 of its kind, makes it current, and opens the
    process group with the backend that kind needs; torch.distributed and the device calls stubbed."""
    from unittest import mock

    from ltx_ascend.runtime import device as dev
    from ltx_ascend.runtime import distributed as D

    calls = {}
    with (
        mock.patch.dict(os.environ, {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}),
        mock.patch.object(D.dist, "is_initialized", lambda: "backend" in calls),
        mock.patch.object(D.dist, "init_process_group", lambda backend, device_id=None: calls.update(backend=backend)),
        mock.patch.object(D.dist, "new_group", lambda ranks: tuple(ranks)),
        mock.patch.object(D.atexit, "register", lambda fn: None),
        mock.patch.object(dev, "set_device", lambda device: calls.update(current=device)),
        mock.patch.object(dev, "require_npu_backend", lambda: calls.update(npu_checked=True)),
    ):
        world = D.init_world(D.Layout(cfg=2, ulysses=4), torch.device(kind))
    assert calls["backend"] == backend
    assert world.device == (torch.device("cpu") if kind == "cpu" else torch.device(kind, 1))
    assert calls.get("current") == (None if kind == "cpu" else torch.device(kind, 1))
    assert calls.get("npu_checked", False) == (kind == "npu")
    # rank 5 = cfg group 1, ulysses rank 1: its sequence group is ranks 4-7, its pass group ranks 1 and 5
    assert (world.cfg_rank, world.ulysses_rank) == (1, 1)
    assert world.ulysses_group == (4, 5, 6, 7) and world.cfg_group == (1, 5)


@pytest.mark.parametrize(("kind", "backend"), [("cuda", "nccl"), ("cpu", "gloo")])
def test_rank_binds_its_local_device_and_backend(kind, backend):
    """Contract only for cuda (no accelerator here)."""
    check_binding(kind, backend)


def test_npu_rank_binds_hccl():
    """API contract only (no Ascend here): in a child process, because naming torch's PrivateUse1
    backend "npu" (what torch_npu does) cannot be undone."""
    code = (
        "import torch; torch.utils.rename_privateuse1_backend('npu'); "
        "from tests.test_parallel import check_binding; check_binding('npu', 'hccl'); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize(
    "pipelines",
    [
        ("keyframe_interpolation",),
        pytest.param(("ti2vid_two_stages", "keyframe_interpolation"), marks=pytest.mark.slow),
    ],
)
def test_ulysses_on_ort_runs_the_split_block_graphs(tiny, tmp_path, pipelines):
    """ulysses=2 --backend ort: each rank runs the DiT compiled, as the block graph split at its
    attention cores (export/dit_split.py) on its half of the tokens, with the all-to-alls between
    the segment graphs; `--fallback none` makes any eager fallback an error. One ORT process is the
    reference. First, one DiT step on split graphs whose shards are padded (13 video, 9 audio
    tokens) against ltx-core eagerly (the driver fails the launch above 1e-5)."""
    kf = image_args(keyframes(tmp_path)[:1])  # keyframe tokens appended to the video sequence (CI's pipeline)
    names = {"ti2vid_two_stages": ("two", []), "keyframe_interpolation": ("kf", kf)}
    runs = [(p, *names[p]) for p in pipelines]
    split_step = {"dit-step-split": [str(tiny.checkpoint), str(tmp_path / "step-artifacts")]}  # padded shards
    uly = ["--parallel", "ulysses=2", "--fallback", "none"]
    ltx_runs = [{"ltx-run": _argv(p, tiny, tmp_path, f"{n}-uly-ort", "ort", *a, *uly)} for p, n, a in runs]
    jobs = json.dumps([split_step, *ltx_runs])
    (out0, err0), (out1, err1) = _torchrun(tmp_path / "logs", "tests/parallel_driver.py", jobs)
    print(out0)
    assert "dit step split graphs (ort) ulysses=2, 13+9 tokens: max abs error" in out0, out0
    assert "split at attention, 1/2 of the tokens)" in out0 and "warning" not in err0, (out0, err0[-2000:])
    assert out1 == "" and "warning" not in err1, (out1, err1[-2000:])
    segments = sorted(p.name for p in (tmp_path / "artifacts" / "dit").rglob("ort-cpu/dit-segment*.onnx"))
    assert len(segments) == len(runs) * 2 * 3, segments  # each pipeline's stage 1 and stage 2, three segments each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        for p, n, a in runs:
            assert cli.main(_argv(p, tiny, tmp_path, f"{n}-ort", "ort", *a)) == 0
    finally:
        torch.set_num_threads(threads)
    load = lambda name: load_file(str(tmp_path / f"{name}.safetensors"))  # noqa: E731
    for _, n, _ in runs:
        _assert_same(f"{n}-uly-ort", load(f"{n}-ort"), load(f"{n}-uly-ort"))


def test_decoder_that_draws_noise_is_not_spread(tiny, tmp_path, capsys, monkeypatch):
    """A video decoder whose forward draws noise (timestep conditioning: not LTX-2.3's) consumes the
    generator tile after tile, so its tiles are not spread: rank 0 decodes alone, as one process
    does, and says so; rank 1 yields nothing (and sends nothing: no process group is open here)."""
    from types import SimpleNamespace

    from ltx_ascend.engine import stack as stack_module
    from ltx_ascend.media import collect_frames
    from ltx_ascend.runtime import device as dev
    from ltx_ascend.shapes import shape_profile

    profile = shape_profile("41x64x1152")  # 3 tiles
    latent = torch.randn(profile.video_latent_shape, generator=torch.Generator().manual_seed(3))

    def decoded(rank: int | None, ranks: int) -> list[torch.Tensor]:
        parallel = SimpleNamespace(world=SimpleNamespace(rank=rank)) if rank is not None else None
        policy = dev.policy_for("cpu", torch.float32)
        stack = stack_module.ModelStack(
            tiny.checkpoint_set(), policy, stack_module.BackendChoice.parse("eager"), tmp_path, parallel=parallel
        )
        return list(stack.video_decoder(profile, ranks)(latent, None))

    expected = collect_frames(decoded(None, 1))
    monkeypatch.setattr(stack_module, "noise_source", lambda decoder: "timestep_conditioning=True")
    assert decoded(1, 2) == []
    assert torch.equal(collect_frames(decoded(0, 2)), expected)
    assert "video_decoder with timestep_conditioning=True draws noise tile by tile: rank 0 decodes alone" in (
        capsys.readouterr().err
    )


def test_bench_parallel_decode(tmp_path, capsys):
    """`ltx-bench --parallel --component video_decoder`: one process is the base row; the wrong preset
    or a backend it does not time are one-line errors."""
    from ltx_ascend.tools import bench

    base = ["--component", "video_decoder", "--parallel", "cfg=1", "--artifacts", str(tmp_path)]
    code, _, err = run_cli(bench.main, ["--preset", "bench", *base], capsys)
    assert code == 2 and "times the tiny set's decoder: pass --preset tiny" in err, err
    code, _, err = run_cli(bench.main, ["--preset", "tiny", "--backends", "ort-fused", *base], capsys)
    assert code == 2 and "times eager or ort" in err, err
    argv = ["--preset", "tiny", "--backends", "eager", "--shape", "41x64x1152", "--repeats", "1", "--threads", "1"]
    code, out, err = run_cli(bench.main, [*argv, *base], capsys)
    assert code == 0, err
    assert "video decode (eager, 41x64x1152, 3 tiles) cfg=1,ulysses=1 on 1 rank(s) x 1 thread(s): median" in out, out
