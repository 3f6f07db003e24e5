"""The hardware smoke command: one line without CANN; on the CANN stand-ins (fake atc, stand-in pyACL
running the ONNX inside the .om) it goes end to end and fails when the om results are wrong."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from ltx_ascend.runtime import om_session
from ltx_ascend.tools import ascend_smoke
from tests import fake_cann
from tests.conftest import run_cli
from tests.fake_cann import FAKE_ATC, FakeAcl, FakeModel


def _fake_atc(tmp_path, monkeypatch) -> None:
    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)


def test_without_cann_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    code, out, err = run_cli(ascend_smoke.main, [], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no CANN here (ATC not found" in err and "set_env.sh" in err
    _fake_atc(tmp_path, monkeypatch)  # ATC but no pyACL
    monkeypatch.setitem(sys.modules, "acl", None)
    code, _, err = run_cli(ascend_smoke.main, [], capsys)
    assert code == 2 and "pyACL" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def stand_ins(tmp_path, monkeypatch) -> FakeAcl:
    _fake_atc(tmp_path, monkeypatch)
    fake = FakeAcl(soc_name="Ascend910B4")
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    return fake


@pytest.mark.contract
def test_end_to_end_on_the_stand_ins(tiny, tmp_path, capsys, stand_ins):
    (tmp_path / "work" / "artifacts").mkdir(parents=True)
    (tmp_path / "work" / "artifacts" / "tiny").symlink_to(tiny.root)  # the session's tiny set, not a second one
    code, out, err = run_cli(ascend_smoke.main, ["--workdir", str(tmp_path / "work")], capsys)
    assert code == 0, out + err
    assert "ATC wrote smoke.om" in out and "host feeds (copied)" in out and out.count(": ok") >= 3
    assert "audio_decoder on om" in out and "ascend smoke on Ascend910B4: PASSED" in out
    assert not stand_ins.violations and not stand_ins.initialised


@pytest.mark.contract
def test_wrong_om_results_fail_the_smoke(tmp_path, capsys, stand_ins, monkeypatch):
    real = fake_cann.onnx_model

    def off_by_a_bit(path):
        model = real(path)
        return model and FakeModel(model.inputs, model.outputs, lambda f: [v + 0.01 for v in model.fn(f)])

    monkeypatch.setattr(fake_cann, "onnx_model", off_by_a_bit)
    code, out, _ = run_cli(ascend_smoke.main, ["--quick"], capsys)
    assert code == 1 and "FAIL" in out and "PASSED" not in out
