"""ltx-prepare, ltx-run --check, content-addressed weights and portable stores, on the tiny set.

One store is prepared for two pipelines at two shapes (module fixture); the tests then read it, copy
it, or check against it. The DiT and the video decoder run compiled (ORT, float32), the rest eager,
so the build stays small; the DiT is the block layout, whose weights are the shared files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ltx_ascend.checkpoints.loader import CheckpointSet, LoraSpec
from ltx_ascend.components import request_for
from ltx_ascend.engine.stack import BackendChoice
from ltx_ascend.export.dit_blocks import weights_material
from ltx_ascend.runtime import device as dev
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import WEIGHTS, ensure_weights, fingerprint_file, weight_files, weights_bytes, weights_key
from ltx_ascend.tools import prepare
from ltx_ascend.tools import run as cli
from tests.conftest import run_cli

SHAPES = ("9x128x192", "17x128x192")  # distilled is two-stage: sides multiples of 64
PIPELINES = "ti2vid_one_stage,distilled"
BACKEND = ("--backend", "eager,dit=ort,video_decoder=ort", "--dit-layout", "blocks", "--dtype", "float32")
GUIDANCE = ("--video-stg-blocks", "1", "--audio-stg-blocks", "1")  # the tiny DiT has 2 blocks


_LAYOUT: dict[str, Path] = {}  # flag -> path of the tiny set's file relative to its folder (set by `ckpt_root`)


def _ckpt(root: Path) -> list[str]:
    """The tiny set's flags for the same files under another folder `root`."""
    return [part for flag, rel in _LAYOUT.items() for part in (flag, str(root / rel))]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (lock files aside) with its size and mtime: what a run wrote shows here."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and ".locks" not in p.parts and not p.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def ckpt_root(tiny) -> Path:
    root = Path(tiny.checkpoint).parent
    for flag, path in (("--checkpoint-path", tiny.checkpoint), ("--gemma-root", tiny.gemma_root),
                       ("--spatial-upsampler-path", tiny.spatial_upsampler)):  # fmt: skip
        _LAYOUT[flag] = Path(path).relative_to(root)
    return root


@pytest.fixture(scope="module")
def prepared(ckpt_root, tmp_path_factory):
    store = tmp_path_factory.mktemp("prepared") / "store"
    # No guidance flags (distilled refuses them): the STG block list changes no graph shape, only the runs' masks.
    argv = [PIPELINES, "--shapes", ",".join(SHAPES), *_ckpt(ckpt_root), *BACKEND, "--artifacts", str(store)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = prepare.main(argv)
        except SystemExit as exc:
            code = exc.code
    print(out.getvalue())
    return store, code, out.getvalue(), err.getvalue()


def _run_argv(pipeline: str, root: Path, store: Path, shape: str, out: Path, *extra: str) -> list[str]:
    frames, height, width = shape.split("x")
    return [pipeline, *_ckpt(root), *BACKEND, *GUIDANCE, "--artifacts", str(store), "--num-frames", frames,
            "--height", height, "--width", width, "--num-inference-steps", "2", "--prompt", "a red fox",
            "--output-path", str(out / "out.mp4"), "--raw-output", str(out / "out.safetensors"), *extra]  # fmt: skip


def test_prepare_prints_the_plan_builds_and_proves_every_run(prepared, ckpt_root, capsys):
    store, code, out, err = prepared
    assert code == 0, err[-2000:]
    assert out.startswith("plan: 2 pipeline(s) x 2 shape(s) -> ")
    plan = out.split("\n\n")[0]
    assert "(0 present, 8 to build)" in plan and plan.count("  missing") == 8  # a fresh store: all to build
    # The DiT rows: guided one-stage at 4 passes a step; distilled's two stages at 1 (stage 1 at half size)
    for shape in ("9x128x192-b4", "17x128x192-b4", "9x64x96-b1", "9x128x192-b1", "17x64x96-b1", "17x128x192-b1"):
        assert f"dit                {shape} " in plan, (shape, plan)
    assert plan.count(" new ") == 1 and plan.count(" shared ") == 5  # one weight set, then shared by five
    for pipeline in PIPELINES.split(","):
        for shape in SHAPES:
            assert f"ok       {pipeline} {shape}: a run finds all" in out
    assert "export dit" in out and "check" in out and "total" in out  # the per-stage timing table
    # Again: everything is there, nothing to build.
    argv = [PIPELINES, "--shapes", ",".join(SHAPES), *_ckpt(ckpt_root), *BACKEND, "--artifacts", str(store),
            "--plan-only"]  # fmt: skip
    code, again, err = run_cli(prepare.main, argv, capsys)
    assert code == 0, err
    assert "(8 present, 0 to build)" in again and "  missing" not in again


def test_two_shapes_of_one_dit_share_one_set_of_block_files(prepared, tiny):
    store, code, _, _ = prepared
    assert code == 0
    folders = sorted(p for p in (store / "dit").glob("*/*") if p.is_dir())
    assert len(folders) == 6  # one-stage: 1 DiT per shape; distilled: 2 (stage 1 and 2) per shape
    assert not [p for p in (store / "dit").rglob("block_*.safetensors")]  # no artifact holds its own copy
    sets = {tuple(weight_files(f)) for f in folders}
    assert len(sets) == 1, sets  # every shape and both pipelines bind the same files
    (files,) = sets
    one_shape = sum(f.stat().st_size for f in files)
    on_disk = sum(f.stat().st_size for f in (store / WEIGHTS).rglob("*.safetensors"))
    print(f"block weights on disk {on_disk} B for {len(folders)} DiT artifacts; one shape's set {one_shape} B")
    assert on_disk == one_shape and len(files) == 2  # the tiny DiT's 2 blocks, once
    assert load_file(str(files[0]))  # real tensors
    # Made of other weights (a LoRA fused), the files get another key.
    ckset = CheckpointSet(tiny.checkpoint)
    plain = weights_key(weights_material(ckset, 2, torch.float32))
    fused = weights_key(weights_material(ckset.with_loras([LoraSpec(tiny.distilled_lora, 0.8)]), 2, torch.float32))
    assert plain != fused and Path(files[0]).parent.name == plain


def test_a_copied_store_with_moved_checkpoints_runs_with_no_rebuild(prepared, ckpt_root, tmp_path, capsys):
    store, code, _, _ = prepared
    assert code == 0
    first = tmp_path / "first"
    first.mkdir()
    argv = _run_argv("ti2vid_one_stage", ckpt_root, store, SHAPES[0], first, "--fallback", "none")
    code, out, err = run_cli(cli.main, argv, capsys)
    assert code == 0, err
    assert "dit=ort (portable)" in out and "video_decoder=ort" in out
    # Both moved: the store to another folder, the checkpoints to other paths.
    moved = tmp_path / "elsewhere"
    shutil.copytree(store, moved / "store")
    shutil.copytree(ckpt_root, moved / "checkpoints")
    before = _files(moved / "store")
    second = tmp_path / "second"
    second.mkdir()
    argv = _run_argv("ti2vid_one_stage", moved / "checkpoints", moved / "store", SHAPES[0], second)
    argv += ["--fallback", "none"]
    code, out, err = run_cli(cli.main, argv, capsys)
    assert code == 0, err
    assert "dit=ort (portable)" in out and "building" not in out + err
    assert _files(moved / "store") == before  # nothing rebuilt, re-hashed or re-encoded (prompt cache hit)
    a, b = load_file(str(first / "out.safetensors")), load_file(str(second / "out.safetensors"))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])


def test_check_names_each_miss_and_the_prepare_command_and_writes_nothing(prepared, ckpt_root, tmp_path, capsys):
    store, code, _, _ = prepared
    assert code == 0
    store = tmp_path / "store"  # a copy whose hash caches are gone: --check hashes, and must not record it
    shutil.copytree(prepared[0], store)
    for cache in store.rglob(".verified.json"):
        cache.unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _files(store)
    code, out, err = run_cli(cli.main, _run_argv("ti2vid_one_stage", ckpt_root, store, "25x128x192", out_dir,
                                                 "--check"), capsys)  # fmt: skip
    assert code == 2
    assert "MISS  dit at 25x128x192-b4 on ort" in out and "MISS  video_decoder at 25x128x192-b1" in out, out
    assert "ltx-prepare ti2vid_one_stage --shapes 25x128x192 --checkpoint-path" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, out, err = run_cli(cli.main, _run_argv("ti2vid_one_stage", ckpt_root, store, SHAPES[1], out_dir,
                                                 "--check"), capsys)  # fmt: skip
    assert code == 0, err
    assert "finds all 2 compiled artifacts" in out
    assert _files(store) == before and not list(out_dir.iterdir())  # --check wrote nothing


def test_fallback_none_refuses_a_missing_dit_before_gemma_loads(prepared, ckpt_root, tmp_path, capsys, monkeypatch):
    """The DiT's profile (4 passes, its conditioning tokens) is known from the stage declarations up
    front: a missing DiT is refused before the text encoder loads, naming the ltx-prepare command."""
    store, _, _, _ = prepared
    from ltx_ascend.engine import text

    def no_gemma(*args, **kwargs):
        raise AssertionError("Gemma loaded before the DiT was checked")

    monkeypatch.setattr(text, "load_component", no_gemma)
    argv = _run_argv("ti2vid_one_stage", ckpt_root, store, "25x128x192", tmp_path, "--fallback", "none")
    argv[argv.index("eager,dit=ort,video_decoder=ort")] = "eager,dit=ort"
    code, _, err = run_cli(cli.main, argv, capsys)
    assert code == 2, err
    assert "dit: at 25x128x192-b4" in err and "ltx-prepare ti2vid_one_stage --shapes 25x128x192" in err


def test_the_fallback_warning_names_the_prepare_command(ckpt_root, tmp_path, caplog):
    checked = cli.parse_and_check(_run_argv("ti2vid_one_stage", ckpt_root, tmp_path / "none", "9x128x192", tmp_path))
    checked = cli.Checked(**{**checked.__dict__, "backends": BackendChoice.parse("eager,vocoder=om")})
    ckset, policy, parallel = cli.run_setup(checked, cli.distributed.Layout(), connect=False)
    stack = cli.make_stack(checked, ckset, policy, parallel, checked.step_cache, None)
    with caplog.at_level(logging.WARNING):
        assert stack._sessions("vocoder", ckset, shape_profile("9x128x192")) is None
    (record,) = [r for r in caplog.records if "vocoder" in r.getMessage()]
    assert "falling back to eager" in record.getMessage()
    assert "to build it: ltx-prepare ti2vid_one_stage --shapes 9x128x192" in record.getMessage()


def test_an_ascend_host_defaults_to_om_never_ort_cpu(monkeypatch, ckpt_root, tmp_path):
    monkeypatch.setattr(dev, "available_backends", lambda: ["npu", "cpu"])
    # RunSettings resolves its device when built: this host has no torch_npu, so the "NPU" is the CPU here.
    monkeypatch.setattr(dev, "resolve_device", lambda spec=None: torch.device("cpu"))
    assert cli.default_backend(None) == "om" and cli.default_backend("npu:1") == "om"
    assert cli.default_backend("cpu") == "ort"
    argv = [a for a in _run_argv("ti2vid_one_stage", ckpt_root, tmp_path, "9x128x192", tmp_path) if a not in BACKEND]
    assert cli.parse_and_check(argv).backends.default == "om"
    monkeypatch.setattr(dev, "available_backends", lambda: ["cpu"])
    assert cli.parse_and_check(argv).backends.default == "ort"


def test_sources_are_identified_by_content_and_profiles_by_graph_shape(tiny, tmp_path):
    copy = tmp_path / "moved.safetensors"
    shutil.copy(tiny.checkpoint, copy)
    assert fingerprint_file(copy) == fingerprint_file(tiny.checkpoint) and "path" not in fingerprint_file(copy)
    data = bytearray(copy.read_bytes())
    data[8 + int.from_bytes(data[:8], "little")] ^= 0xFF  # the first tensor byte: in the first sample
    copy.write_bytes(bytes(data))
    assert fingerprint_file(copy) != fingerprint_file(tiny.checkpoint)
    ckset = CheckpointSet(tiny.checkpoint, tiny.gemma_root)
    request = lambda c, p: request_for(c, ckset, p, torch.float32)  # noqa: E731
    # The text connectors' graphs depend on the tokens only: one artifact for every shape.
    text = [request("text_connectors", shape_profile(shape)) for shape in ("9x64x96", "25x256x384")]
    assert text[0] == text[1]
    # Stage 1 of a two-stage 9x128x192 and a one-stage 9x64x96 run the same DiT graph; the frame rate
    # changes it only where it changes the audio latent's length.
    assert request("dit", shape_profile("9x128x192", stage=1)) == request("dit", shape_profile("9x64x96"))
    assert request("dit", shape_profile("9x64x96", fps=24.0)) == request("dit", shape_profile("9x64x96", fps=24.5))
    assert request("dit", shape_profile("9x64x96", fps=24.0)) != request("dit", shape_profile("9x64x96", fps=12.0))
    assert request("dit", shape_profile("9x64x96")) != request("dit", shape_profile("9x64x96", batch=2))


def test_weight_sets_are_written_whole_or_not_at_all(tmp_path):
    """An interrupted write leaves nothing a later run uses; a complete set is written once; a damaged
    one (truncated) is not taken as complete, and is written again."""
    material = {"component": "dit", "kind": "blocks", "probe": 1}
    folder = tmp_path / WEIGHTS / weights_key(material)

    def killed(building: Path) -> list[str]:
        (building / "block_00.safetensors").write_bytes(b"half a block")
        raise KeyboardInterrupt  # the process stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        ensure_weights(tmp_path, material, killed)
    assert not folder.exists() and not weights_bytes(tmp_path, weights_key(material))
    writes = []

    def good(building: Path) -> list[str]:
        writes.append(building)
        (building / "block_00.safetensors").write_bytes(b"x" * 64)
        return ["block_00.safetensors"]

    key, names, written = ensure_weights(tmp_path, material, good)
    assert written and names == ["block_00.safetensors"] and weights_bytes(tmp_path, key) == 64
    assert ensure_weights(tmp_path, material, good)[2] is False and len(writes) == 1  # found, not rewritten
    (folder / "block_00.safetensors").write_bytes(b"x" * 10)  # truncated after the fact
    assert weights_bytes(tmp_path, key) is None
    assert ensure_weights(tmp_path, material, good)[2] is True and weights_bytes(tmp_path, key) == 64


@pytest.mark.contract
def test_prepare_for_om_compiles_with_atc_in_parallel(ckpt_root, tmp_path, capsys, monkeypatch):
    """--backend om: exports, then ATC (the stand-in `atc`) compiles in a pool of --jobs; the proof
    finds the .om artifacts where `ltx-run --backend om` looks."""
    import os
    import stat

    from tests.fake_cann import FAKE_ATC

    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path / "store"
    argv = ["ti2vid_one_stage", "--shapes", "9x128x192", *_ckpt(ckpt_root), "--backend",
            "eager,dit=om,video_decoder=om", "--dit-layout", "blocks", "--dtype", "float32", "--soc", "Ascend910B4",
            "--jobs", "2", "--artifacts", str(store)]  # fmt: skip
    code, out, err = run_cli(prepare.main, argv, capsys)
    assert code == 0, err
    assert "(0 present, 2 to build)" in out and "ok       ti2vid_one_stage 9x128x192" in out
    assert "compile dit (ATC, waited)" in out
    assert len(list(store.glob("dit/*/*/om-Ascend910B4-*/manifest.json"))) == 1
    assert len(list(store.glob("video_decoder/*/*/om-Ascend910B4-*/manifest.json"))) == 1


def test_every_pipeline_lists_its_lookups_at_the_guide_shape_without_loading_a_model(tiny, tmp_path, monkeypatch):
    """The guide's command of each pipeline (121x1024x1536 where it sets a size) on the recording stack:
    its DiT at each stage's passes and conditioning tokens, its upsampler and decoders, in seconds."""
    from ltx_ascend.checkpoints import loader
    from ltx_ascend.engine.lookups import lookups
    from tests.test_pipeline_a2vid_two_stage import sine, write_wav
    from tests.test_pipeline_ic_lora import write_video
    from tests.test_run_inputs import guide_commands

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    from ltx_ascend.engine import loading as stack_module
    from ltx_ascend.engine import text as text_module

    for module in (loader, stack_module, text_module):
        monkeypatch.setattr(module, "load_component", no_model)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "media"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (96, 64)).save(folder / "first_frame.png")
    Image.new("RGB", (96, 64)).save(folder / "last_frame.png")
    paths = {"first_frame.png": folder / "first_frame.png", "last_frame.png": folder / "last_frame.png",
             "speech.wav": write_wav(folder / "speech.wav", sine(2, seconds=6.0)),
             "source.mp4": write_video(folder / "source.mp4", frames=9, height=96, width=160),
             "control.mp4": write_video(folder / "control.mp4", frames=9, height=96, width=160)}  # fmt: skip
    found = {}
    for name, argv in guide_commands(tiny, paths).items():
        # Two steps: the step count changes no graph (the sigma tables of the distilled stages keep theirs).
        argv = [*argv, "--backend", "ort", "--artifacts", str(tmp_path / "store"), "--num-inference-steps", "2"]
        checked = cli.parse_and_check(argv)
        ckset, policy, parallel = cli.run_setup(checked, cli.distributed.Layout(), connect=False, write_tiny=False)
        stack = cli.make_stack(checked, ckset, policy, parallel, checked.step_cache, None)
        found[name] = lookups(checked.module, checked.request, stack)
    assert not (tmp_path / "store").exists()
    dits = {name: [lk.shape for lk in found[name] if lk.component == "dit"] for name in found}
    # keyframe interpolation: every image a keyframe, 2 x (512/32 x 768/32) tokens at stage 1, 4 guided passes
    assert dits["keyframe_interpolation"] == ["121x512x768-b4-c768", "121x1024x1536-b1-c3072"], dits
    assert dits["ti2vid_two_stages"] == ["121x512x768-b4", "121x1024x1536-b1"], dits
    for name, listed in found.items():
        components = {lk.component for lk in listed}
        assert {"dit", "video_decoder"} <= components, (name, components)
        if name not in ("ti2vid_one_stage", "retake"):
            assert "spatial_upsampler" in components, (name, components)
