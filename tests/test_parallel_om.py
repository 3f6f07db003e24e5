"""Each rank on its own card: a 2-rank om run (torchrun, gloo) against the stand-in pyACL with two
devices, each with its own memory. Every rank must load its graphs on NPU LOCAL_RANK, not all on 0."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch

from ltx_ascend.checkpoints.loader import CheckpointSet
from ltx_ascend.compile.compiler import compile_om
from ltx_ascend.export.exporter import export_component
from ltx_ascend.runtime import device as dev
from ltx_ascend.runtime import om_session
from ltx_ascend.runtime.om_session import OmSession
from ltx_ascend.runtime.session import TensorSpec
from tests.fake_cann import FAKE_ATC, FakeAcl, doubling_model
from tests.test_parallel import REPO, _torchrun

SHAPE = "9x128x192"


@pytest.fixture
def fake_atc(tmp_path, monkeypatch) -> None:
    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.contract
def test_two_ranks_open_their_om_graphs_on_their_own_npu(tiny, tmp_path, fake_atc):
    from ltx_ascend.shapes import shape_profile

    out = tmp_path / "artifacts"
    result = export_component("vocoder", CheckpointSet(tiny.checkpoint), shape_profile(SHAPE), out=out)
    compile_om(result.folder, "Ascend910B4", None, force=False, dry_run=False)
    ranks = _torchrun(tmp_path / "logs", str(REPO / "tests" / "om_rank_driver.py"), str(out), str(tiny.checkpoint),
                      SHAPE)  # fmt: skip
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in ranks]
    assert [r["loaded_on"] for r in reports] == [[0], [1]], reports
    assert all(not r["violations"] for r in reports), reports


def test_the_rank_card_comes_from_local_rank_within_visible_devices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dev.accelerator_index(cpu) == 3
    assert dev.accelerator_index(torch.device("cuda", 2)) == 2  # ORT's CUDA provider: the tensors' GPU
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "6")  # one card per process: it is device 0 there
    assert dev.accelerator_index(cpu) == 0
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    with pytest.raises(Exception, match="LOCAL_RANK 3"):
        dev.accelerator_index(cpu)


@pytest.mark.contract
def test_stand_in_refuses_memory_of_one_card_used_under_another(tmp_path, monkeypatch):
    """The stand-in's own check (what makes the 2-rank test meaningful): a model loaded on NPU 1 fed
    a buffer of NPU 0 fails, and an unknown card is refused at set_device."""
    fake = FakeAcl(devices=2, model=doubling_model((2, 3)))
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    path = tmp_path / "double.om"
    path.write_bytes(b"stand-in om")
    spec = [TensorSpec("x", (2, 3), "float32")], [TensorSpec("y", (2, 3), "float32")]
    session = OmSession(path, *spec, device_id=1, torch_device=torch.device("cpu"))
    x = torch.ones(2, 3)
    assert torch.equal(session.run({"x": x})["y"], x * 2)  # host feeds are copied onto NPU 1: fine
    assert fake.model_devices() == [1] and not fake.violations
    acl = fake.module
    ptr, _ = acl.rt.malloc(24, 0)  # under NPU 1's context
    acl.rt.set_device(0)  # now NPU 0 is current
    assert acl.rt.memcpy(ptr, 24, x.data_ptr(), 24, 1) != 0  # host -> NPU 1 memory under NPU 0: refused
    assert fake.violations and "device 1 used under device 0" in fake.violations[0]
    session.close()
    assert acl.rt.set_device(2) != 0  # no third card


def test_ort_cuda_takes_the_rank_gpu():
    from ltx_ascend.runtime.ort_session import session_providers

    assert session_providers("cuda", torch.device("cuda", 3))[0] == ("CUDAExecutionProvider", {"device_id": 3})
    assert session_providers("cpu", torch.device("cpu")) == ["CPUExecutionProvider"]
