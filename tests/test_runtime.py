"""Runtime on a real tiny artifact: ORT session vs eager, IO binding, feed checks, resolve and fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltx_ascend.checkpoints.loader import LoraSpec
from ltx_ascend.compile.compiler import compile_ort
from ltx_ascend.components import request_for
from ltx_ascend.errors import UserError
from ltx_ascend.export import dit_layouts
from ltx_ascend.export.exporter import export_component
from ltx_ascend.export.items import ExportOptions
from ltx_ascend.metrics import TOLERANCES, compare
from ltx_ascend.runtime import artifacts
from ltx_ascend.runtime.artifacts import open_component, open_sessions
from ltx_ascend.runtime.eager_session import EagerSession
from ltx_ascend.runtime.ort_session import OrtSession
from ltx_ascend.runtime.session import TensorSpec, check_feeds, specs_from_manifest
from ltx_ascend.shapes import shape_profile
from ltx_ascend.store import find_compiled, resolve

PROFILE = shape_profile("9x128x192", stage=1)
STRENGTH = 0.8


def _ckset(tiny, strength=STRENGTH):
    return tiny.checkpoint_set(LoraSpec(tiny.distilled_lora, strength))


def _request(tiny, strength=STRENGTH):
    return request_for("dit", _ckset(tiny, strength), PROFILE, torch.float32)


@pytest.fixture(scope="module")
def artifact(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """(out root, exported folder) with an ort-cpu compile inside, built once for the module."""
    out = tmp_path_factory.mktemp("runtime")
    result = export_component("dit", _ckset(tiny), PROFILE, out=out)
    compile_ort(result.folder, "cpu", force=False)
    return out, result.folder


@pytest.fixture(scope="module")
def item(tiny):
    (item,) = dit_layouts.build_items(_ckset(tiny), PROFILE, torch.float32, ExportOptions())
    return item


@pytest.fixture(scope="module")
def session(tiny, artifact):
    resolution = resolve(_request(tiny), artifact[0], "ort")
    assert resolution.ok, resolution.reason
    (graph,) = resolution.graphs.values()
    inputs, outputs = specs_from_manifest(resolution.io["dit"])
    with OrtSession(graph, inputs, outputs, threads=2) as opened:
        yield opened


def test_ort_session_matches_eager(session, item):
    assert session.preoptimized, "an ort-cpu graph must be loaded without re-optimising"
    assert session.input_names == list(item.input_names) and session.output_names == list(item.output_names)
    ort_out = session.run(item.sample)
    eager_out = EagerSession(item.module, item.input_names, item.output_names, "cpu", torch.float32).run(item.sample)
    from_item = EagerSession.from_item(item).run(item.sample)
    assert all(torch.equal(from_item[n], eager_out[n]) for n in item.output_names)
    for name in item.output_names:
        assert ort_out[name].shape == eager_out[name].shape and ort_out[name].dtype == torch.float32
        result = compare(eager_out[name], ort_out[name])
        assert result.passes(TOLERANCES["float32"]), f"{name}: {result}"


def test_io_binding_reuses_output_buffers(session, item):
    first = session.run(item.sample, copy_outputs=False)
    ptrs = {n: t.data_ptr() for n, t in first.items()}
    kept = {n: t.clone() for n, t in first.items()}
    safe = session.run(item.sample)  # copy_outputs=True: clones, not the buffers
    assert all(safe[n].data_ptr() != ptrs[n] for n in ptrs)
    changed = dict(item.sample, video_latent=item.sample["video_latent"] * 0.5)
    second = session.run(changed, copy_outputs=False)
    assert {n: t.data_ptr() for n, t in second.items()} == ptrs
    assert all(session.output_buffer(n).data_ptr() == p for n, p in ptrs.items())
    assert not torch.equal(second["video_denoised"], kept["video_denoised"]), "the run wrote into the same buffer"
    assert torch.equal(safe["video_denoised"], kept["video_denoised"]), "a copied output survives later runs"


def test_feed_validation(session, item):
    feeds = dict(item.sample)
    missing = {k: v for k, v in feeds.items() if k != "audio_sigma"}
    with pytest.raises(UserError, match=r"missing input\(s\) audio_sigma") as info:
        session.run(missing)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"unexpected input\(s\) bogus"):
        session.run(dict(feeds, bogus=torch.zeros(1)))
    shape = "x".join(map(str, feeds["video_latent"].shape))
    with pytest.raises(UserError, match=rf"video_latent has shape 1x2x3, expected {shape}"):
        session.run(dict(feeds, video_latent=torch.zeros(1, 2, 3)))
    with pytest.raises(UserError, match="video_sigma has dtype float16, expected float32"):
        session.run(dict(feeds, video_sigma=feeds["video_sigma"].half()))
    with pytest.raises(UserError, match=r"expected a torch\.Tensor"):
        check_feeds([TensorSpec("x", (1,), "float32")], {"x": [1.0]})


def test_bfloat16_graph_on_ort_cpu_is_refused(artifact):
    path = next(artifact[1].glob("*.onnx"))
    spec = [TensorSpec("x", (1,), "bfloat16")]
    with pytest.raises(UserError, match="export with --dtype float32 for ORT on CPU"):
        OrtSession(path, spec, spec)


def test_resolve_finds_the_artifact(tiny, artifact):
    out, folder = artifact
    ort = resolve(_request(tiny), out, "ort")
    assert ort.ok and ort.folder == folder and ort.compiled == folder / "ort-cpu"
    assert ort.graphs == {"dit": folder / "ort-cpu" / "dit.onnx"}
    assert find_compiled(folder, "ort") == folder / "ort-cpu" == find_compiled(folder, "ort", ep=None)
    assert find_compiled(folder, "ort", ep="cuda") is None and find_compiled(folder, "om") is None
    onnx = resolve(_request(tiny), out, "onnx")
    assert onnx.ok and onnx.graphs == {"dit": folder / "dit.onnx"}
    om = resolve(_request(tiny), out, "om")
    assert not om.ok and om.reason.startswith("not compiled for om: run ltx-compile --target om")
    missing = resolve(_request(tiny), out / "elsewhere", "ort")
    assert missing.reason.startswith("missing: no exported artifact")


def test_resolve_names_the_stale_field(tiny, artifact):
    resolution = resolve(_request(tiny, strength=0.5), artifact[0], "ort")
    assert not resolution.ok
    assert resolution.reason.startswith(f"stale: {artifact[1]}")
    assert "(source.loras[0].strength differ)" in resolution.reason


def test_fallback_policy(tiny, artifact, capsys):
    out = artifact[0]
    opened = open_component(resolve(_request(tiny), out, "ort"), fallback="none", threads=1)
    assert isinstance(opened["dit"], OrtSession) and opened["dit"].preoptimized
    opened["dit"].close()
    assert capsys.readouterr().err == ""

    stale = _request(tiny, strength=0.5)
    assert open_component(resolve(stale, out, "ort"), fallback="eager") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: dit: stale: ")
    assert err.endswith("; falling back to eager\n") and "source.loras[0].strength" in err
    with pytest.raises(UserError, match=r"^dit: stale: .*source\.loras\[0\]\.strength"):
        open_component(resolve(stale, out, "ort"), fallback="none")

    assert open_component(resolve(_request(tiny), out, "om")) is None
    assert capsys.readouterr().err.startswith("warning: dit: not compiled for om: run ltx-compile --target om")


def test_a_fixable_open_failure_falls_back_too(tiny, artifact, capsys, monkeypatch):
    def no_pyacl(*args, **kwargs):
        raise UserError("cannot import pyACL's `acl` module (No module named 'acl'); pyACL comes with CANN")

    monkeypatch.setattr(artifacts, "open_sessions", no_pyacl)
    assert open_component(resolve(_request(tiny), artifact[0], "ort")) is None
    err = capsys.readouterr().err
    assert (
        err == "warning: dit: cannot import pyACL's `acl` module (No module named 'acl'); pyACL comes with CANN"
        "; falling back to eager\n"
    )


def test_open_sessions_on_raw_onnx(tiny, artifact, item):
    sessions = open_sessions(resolve(_request(tiny), artifact[0], "onnx"), threads=1)
    try:
        assert not sessions["dit"].preoptimized
        out = sessions["dit"].run(item.sample)
        assert set(out) == set(item.output_names)
    finally:
        for s in sessions.values():
            s.close()
