"""Layer streaming and offload: same output as resident runs, and the DiT's weights bounded by N + 1 blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.engine import resident as engine_module
from ltx_ascend.engine import stack as stack_module
from ltx_ascend.errors import UserError
from ltx_ascend.runtime.dit_memory import choose_prefetch, dit_memory
from ltx_ascend.runtime.weight_streaming import StreamedBlockWeights
from ltx_ascend.shapes import shape_profile
from ltx_ascend.tools import plan
from ltx_ascend.tools import run as cli
from tests import pipeline_harness as H
from tests.conftest import run_cli


class _Recording(StreamedBlockWeights):
    """The stack's StreamedBlockWeights, remembered so a test can read its counters after the run."""

    made: ClassVar[list[_Recording]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.block_bytes = max(sum(t.nbytes for t in self.source.read(i).values()) for i in range(len(self.source)))
        _Recording.made.append(self)


@pytest.fixture
def recording(monkeypatch):
    _Recording.made = []
    monkeypatch.setattr(stack_module, "StreamedBlockWeights", _Recording)
    return _Recording.made


@pytest.fixture(scope="module")
def resident(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("resident")
    return H.run_ours("ti2vid_two_stages", tiny, out, backend="eager")


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key].float() - b[key].float()).abs().max()}"


def _assert_streamed(made: list[StreamedBlockWeights], prefetch: int) -> None:
    assert len(made) == 2  # stage 1 and stage 2 (distilled LoRA fused per block)
    for weights in made:
        assert weights.prefetch == prefetch
        assert weights.loads >= 2 * len(weights.source)  # every block read again on every call
        assert 0 < weights.peak_live_bytes <= (prefetch + 1) * weights.block_bytes


def test_eager_streaming_chosen_by_max_device_memory_is_bit_exact(tiny, tmp_path, resident, recording, capsys):
    # Tiny DiT: 2 blocks, so prefetch 1 holds them all; this budget fits one block and not two.
    memory = dit_memory(tiny_config(tiny), shape_profile((9, 128, 192), stage=1, batch=4), 4, 4)
    budget_gb = (memory.peak_bytes(0) + memory.peak_bytes(None)) / 2 / 0.9 / 1e9
    streamed = H.run_ours("ti2vid_two_stages", tiny, tmp_path, "--max-device-memory", f"{budget_gb:.9f}")
    assert "--streaming-prefetch-count 0" in capsys.readouterr().out
    _assert_streamed(recording, prefetch=0)
    _assert_identical(resident, streamed)


def test_offload_all_is_bit_exact_one_module_on_device_at_a_time(tiny, tmp_path, resident, monkeypatch):
    stacks = []

    class _Stack(stack_module.ModelStack):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            stacks.append(self)

    monkeypatch.setattr(engine_module, "ModelStack", _Stack)  # ltx-run builds its stack in the engine
    offloaded = H.run_ours("ti2vid_two_stages", tiny, tmp_path, "--offload", "all")
    _assert_identical(resident, offloaded)
    (stack,) = stacks
    log, on = stack.device_log, set()
    for name, move in log:
        if move == "in":
            on.add(name)
        else:
            on.discard(name)
        assert len(on) <= 2, log  # the upsampler needs the video encoder's statistics beside it
    moved = {n for n, m in log if m == "in"}
    assert {"text_encoder", "spatial_upsampler", "video_decoder", "audio_decoder", "vocoder"} <= moved
    assert not on  # every module went back to host memory


def test_ort_block_chain_streaming_is_bit_exact(tiny, tmp_path, recording):
    run = ("ti2vid_two_stages", tiny, tmp_path, "--fallback", "none")  # the DiT on ORT or an error
    resident = H.run_ours(*run, "--dit-layout", "blocks", backend="dit=ort")
    assert not recording
    streamed = H.run_ours(*run, "--streaming-prefetch-count", "1", backend="dit=ort")
    _assert_streamed(recording, prefetch=1)
    _assert_identical(resident, streamed)


def test_whole_layout_cannot_stream(tiny, tmp_path, capsys):
    argv = ["ti2vid_two_stages", *H.checkpoint_args(tiny), *H.setting_args(), "--artifacts", str(tmp_path)]
    code, _, err = run_cli(cli.main, [*argv, "--dit-layout", "whole", "--streaming-prefetch-count", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--dit-layout blocks" in err
    code, _, err = run_cli(cli.main, [*argv, "--streaming-prefetch-count", "-1"], capsys)
    assert code == 2 and ">= 0" in err


def tiny_config(tiny) -> dict:
    from ltx_ascend.checkpoints.loader import read_model_config

    return read_model_config(tiny.checkpoint)


# ------------------------------------------------------------------------------------------------
# The bound, through the seam and in process memory


class _Fresh:
    """A block source that makes fresh tensors per read (as a dtype conversion or LoRA fusion does)."""

    def __init__(self, blocks: int, numel: int) -> None:
        self.blocks, self.numel = blocks, numel

    def __len__(self) -> int:
        return self.blocks

    def read(self, index: int) -> dict[str, torch.Tensor]:
        return {"a": torch.full((self.numel,), float(index)), "b": torch.full((self.numel // 2,), -float(index))}


class _Unbounded(StreamedBlockWeights):
    """A deliberately broken streamer: keeps every block it ever loaded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept = []

    def __getitem__(self, index):
        weights = super().__getitem__(index)
        self.kept.append(weights)
        return weights


def _walk(weights: StreamedBlockWeights, passes: int = 3) -> list[float]:
    """The runner's access pattern: ask for block i, compute with it, release it; `passes` calls."""
    seen = []
    for _ in range(passes):
        for i in range(len(weights)):
            block = weights[i]
            seen.append(float(block["a"][0] + block["b"][0]))
            del block
            weights.release(i)
    return seen


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_live_block_bytes_never_exceed_prefetch_plus_one(prefetch):
    source = _Fresh(blocks=8, numel=3000)
    block_bytes = 4 * (3000 + 1500)
    good = StreamedBlockWeights(source, "cpu", prefetch)
    assert _walk(good) == [0.0] * 24  # a + b of every block is 0: the right block came back each time
    assert good.peak_live_bytes <= (prefetch + 1) * block_bytes
    assert 24 <= good.loads <= 24 + prefetch  # the last call may already prefetch the next call's first blocks
    good.close()
    assert good.live_bytes == 0
    bad = _Unbounded(source, "cpu", prefetch)
    _walk(bad)
    assert bad.peak_live_bytes > (prefetch + 1) * block_bytes  # the accounting sees a leak
    bad.close()


def test_out_of_order_requests_keep_the_bound():
    weights = StreamedBlockWeights(_Fresh(blocks=6, numel=1000), "cpu", 1)
    for i in (0, 3, 1, 5, 2):  # e.g. a step cache skipping blocks
        assert float(weights[i]["a"][0]) == i
        weights.release(i)
    assert weights.peak_live_bytes <= 2 * 4 * 1500
    weights.close()


_RSS_PROBE = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil
    import torch
    from ltx_ascend.runtime.block_weights import ResidentBlockWeights
    from ltx_ascend.runtime.weight_streaming import BlockFileSource, StreamedBlockWeights
    files, prefetch = json.loads(sys.argv[1]), int(sys.argv[2])
    process = psutil.Process()
    torch.zeros(1).sum()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        global peak
        while not done.wait(0.002):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    if prefetch < 0:
        weights = ResidentBlockWeights.from_files(files, "cpu")
    else:
        weights = StreamedBlockWeights(BlockFileSource(files), "cpu", prefetch)
    total = 0.0
    for _ in range(2):
        for i in range(len(weights)):
            total += float(sum(t.sum() for t in weights[i].values()))
            time.sleep(0.02)  # the block's compute: the prefetch of the next one lands meanwhile
            peak = max(peak, process.memory_info().rss)
            weights.release(i)
    done.set()
    sampler.join()
    print(json.dumps({"peak_growth_mb": (peak - before) / 2**20, "total": total}))
    """
)


def _peak_growth_mb(files, prefetch: int) -> float:
    argv = [sys.executable, "-c", _RSS_PROBE, json.dumps([str(f) for f in files]), str(prefetch)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1"} | _env())
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mb"]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def test_peak_rss_of_memory_mapped_block_files_is_n_plus_one_blocks(tmp_path):
    """Process peak RSS (file-backed pages included) while streaming 6 x 16 MB block files."""
    block_mb, blocks = 16, 6
    files = []
    for i in range(blocks):
        path = tmp_path / f"block_{i:02d}.safetensors"
        save_file({"w": torch.full((block_mb * 2**20 // 4,), float(i))}, str(path))
        files.append(path)
    streamed = _peak_growth_mb(files, 1)
    resident = _peak_growth_mb(files, -1)  # the unbounded variant: every block kept
    bound = (1 + 1) * block_mb + block_mb  # N + 1 blocks, plus one block of slack for the allocator
    print(f"peak RSS growth: streamed (N=1) {streamed:.0f} MB, resident {resident:.0f} MB, bound {bound} MB")
    assert streamed <= bound, (streamed, resident)
    assert resident > bound, (streamed, resident)


# ------------------------------------------------------------------------------------------------
# The memory model ltx-run and ltx-plan share


def test_choose_prefetch_22b():
    memory = dit_memory(config_22b(), shape_profile("41x1024x1536", stage=1, batch=4), 2, 4)
    assert choose_prefetch(memory, 64e9) is None  # 39 GB fits a 64 GB card
    assert choose_prefetch(memory, 32e9) == 1
    assert memory.peak_bytes(1) < memory.peak_bytes(None) / 8
    with pytest.raises(UserError, match="--max-device-memory"):
        choose_prefetch(memory, 1e9)


def test_plan_predicts_streamed_memory_and_step_time(capsys, tmp_path):
    argv = ["ti2vid_two_stages", "--shape", "41x1024x1536", "--streaming-prefetch-count", "2", "--hbm-gb", "32"]
    code, out, err = run_cli(plan.main, [*argv, "--json", str(tmp_path / "plan.json")], capsys)
    assert code == 0, err
    assert "--streaming-prefetch-count 1" in out and "3 of 48 on the device" in out
    assert "6.76" in out and "published reference figures" in out
    stage1 = json.loads((tmp_path / "plan.json").read_text())["streaming"][0]
    assert stage1["per_pass"]["calls_per_step"] == 4 and stage1["batched"]["calls_per_step"] == 1
    # one pass per call copies the weights 4x per step: copy-bound; a batched call hides its copy
    assert stage1["per_pass"]["s_per_step"] > stage1["batched"]["s_per_step"] == pytest.approx(2.68)
    assert stage1["batched"]["peak_gb"] < 5 < stage1["batched"]["resident_peak_gb"]
