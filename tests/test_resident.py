"""A resident engine: the second call builds no model and opens no session, its outputs are bit-exact
(float32) call after call and equal to a fresh `ltx-run` process, and the memory policy places models
by the device's memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ltx_ascend import Engine, GenerationRequest, RunSettings
from ltx_ascend.checkpoints import loader as loader_module
from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.engine import loading, text
from ltx_ascend.engine import stack as stack_module
from ltx_ascend.engine.memory_policy import COMPONENTS, choose_policy, parse_placement
from ltx_ascend.errors import UserError
from ltx_ascend.shapes import shape_profile
from tests import pipeline_harness as H

REPO = Path(__file__).resolve().parents[1]
SMALL = H.SMALL_REQUEST


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args[0] if args else kwargs.get("component"))
        return self.fn(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    """Every model build (load_component, wherever it is called from) and every session opened."""
    loads = _Counter(loader_module.load_component)
    opens = _Counter(stack_module.open_component)
    for module in (loading, text):
        monkeypatch.setattr(module, "load_component", loads)
    monkeypatch.setattr(stack_module, "open_component", opens)
    return loads, opens


def _settings(tiny, tmp: Path, backend: str, **overrides) -> RunSettings:
    return H.tiny_settings(tiny, tmp, backend=backend, build_missing=True, **overrides)


@pytest.mark.parametrize("backend", ["eager", "ort"])
def test_second_call_loads_no_model_and_opens_no_session(tiny, tmp_path, counted, backend):
    loads, opens = counted
    engine = Engine(_settings(tiny, tmp_path, backend))
    first = engine.generate(GenerationRequest(**SMALL))
    after_first = len(loads.calls), len(opens.calls)
    assert after_first[0] > 0 and (backend == "eager" or after_first[1] > 0)  # the counters see the loads
    # A new prompt too: Gemma stays resident, so even a prompt-cache miss builds nothing.
    second = engine.generate(GenerationRequest(**{**SMALL, "prompt": "a grey wolf at dusk"}))
    third = engine.generate(GenerationRequest(**SMALL))
    assert (len(loads.calls), len(opens.calls)) == after_first, (loads.calls, opens.calls)
    assert engine.counts == {"loads": after_first[0], "opens": after_first[1]}
    assert torch.equal(first.frames, third.frames) and torch.equal(first.audio, third.audio)  # bit-exact again
    assert not torch.equal(first.frames, second.frames)  # the prompt matters: the comparison can fail
    assert first.backends["dit"] == third.backends["dit"]


def test_resident_output_equals_a_fresh_ltx_run_process(tiny, tmp_path):
    """float32, ORT: the third call of a resident engine equals a fresh `ltx-run` process bit for bit."""
    settings = _settings(tiny, tmp_path, "ort")
    engine = Engine(settings)
    for _ in range(2):
        engine.generate(GenerationRequest(**{**SMALL, "seed": 7}))
    resident = engine.generate(GenerationRequest(**SMALL))
    raw = tmp_path / "fresh.safetensors"
    argv = [
        "ti2vid_two_stages", *H.checkpoint_args(tiny), "--backend", "ort", "--dtype", "float32",
        "--artifacts", str(settings.artifacts), "--prompt-cache", str(tmp_path / "fresh-cache"),
        "--output-path", str(tmp_path / "fresh.mp4"), "--raw-output", str(raw),
        *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()],
    ]  # fmt: skip
    code = "import sys; from ltx_ascend.tools.run import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env={"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = load_file(str(raw))
    assert torch.equal(fresh["video"], resident.frames) and torch.equal(fresh["audio"], resident.audio)
    resident.write_mp4(tmp_path / "resident.mp4")
    assert (tmp_path / "resident.mp4").read_bytes() == (tmp_path / "fresh.mp4").read_bytes()


def test_memory_policy_parks_what_does_not_fit_and_obeys_overrides():
    config = config_22b()
    profile = shape_profile((41, 1024, 1536), stage=2)
    kw = dict(device="npu:0", dtype=torch.bfloat16, components=COMPONENTS, host_bytes=512 * 10**9)
    big = choose_policy(config, profile, device_bytes=200 * 10**9, dit_sets=2, **kw)
    assert all(big.place(c) == "device" for c in COMPONENTS)  # 200 GB: everything resident
    small = choose_policy(config, profile, device_bytes=64 * 10**9, dit_sets=2, **kw)
    assert small.place("text_encoder") == "host" and small.place("dit") == "host"  # 2 x 38 GB + Gemma: no
    assert small.place("video_decoder") == "device"
    assert small.peak_bytes() <= small.usable_bytes
    rebuild = {"text_encoder": "rebuild"}
    one = choose_policy(config, profile, device_bytes=96 * 10**9, dit_sets=1, overrides=rebuild, **kw)
    assert one.place("dit") == "device" and one.place("text_encoder") == "rebuild"
    assert "text_encoder" in one.describe() and "rebuild" in one.describe()
    # 64 GB, the DiT pinned on the device: Gemma (rebuilt or parked) cannot come in beside it
    pinned = choose_policy(config, profile, device_bytes=64 * 10**9, dit_sets=1, overrides={"dit": "device"}, **kw)
    assert "placement pins dit=device" in pinned.does_not_fit and "does not fit" in pinned.describe()
    assert small.does_not_fit is None
    with pytest.raises(UserError, match="choose device, host or rebuild"):
        parse_placement("dit=disk")
    with pytest.raises(UserError, match="no component 'gpu'"):
        parse_placement("gpu=host")


def test_placement_rebuild_builds_every_call(tiny, tmp_path, counted):
    """The override is obeyed: the text encoder rebuilt per prompt-cache miss, the rest resident."""
    loads, _ = counted
    engine = Engine(_settings(tiny, tmp_path, "eager", placement="text_encoder=rebuild"))
    assert engine.settings.placements == {"text_encoder": "rebuild"}
    engine.generate(GenerationRequest(**SMALL))
    first = list(loads.calls)
    assert "text_encoder" in first
    engine.generate(GenerationRequest(**{**SMALL, "prompt": "something else"}))
    assert loads.calls[len(first) :] == ["text_encoder"]  # Gemma again, nothing else
