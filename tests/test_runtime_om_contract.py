"""API-contract tests of the om session against the stand-in `acl` of tests/fake_cann.py: no Ascend
hardware here. The stand-in follows the pyACL documents (return conventions, per-thread contexts that
must be restored, aclDataType enums, model description calls) and really moves bytes, so these tests
check results, not only call lists.
"""

from __future__ import annotations

import sys
import threading
import types

import pytest
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.runtime import om_session
from ltx_ascend.runtime.om_session import (
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    OmSession,
    memcpy_kind,
)
from ltx_ascend.runtime.session import TensorSpec
from tests.fake_cann import (
    ACL_BF16,
    ACL_FLOAT,
    ACL_FLOAT16,
    HANDLE_CALLS,
    Call,
    FakeAcl,
    FakeModel,
    Io,
)

pytestmark = pytest.mark.contract

SHAPE = (2, 3)
NBYTES = 2 * 3 * 4
INPUTS = [TensorSpec("x", SHAPE, "float32")]
OUTPUTS = [TensorSpec("y", SHAPE, "float32")]
ERROR = 507011

# What each creating call is undone by.
UNDO = {
    "init": "finalize",
    "rt.set_device": "rt.reset_device",
    "rt.create_context": "rt.destroy_context",
    "rt.create_stream": "rt.destroy_stream",
    "mdl.load_from_file": "mdl.unload",
    "mdl.create_desc": "mdl.destroy_desc",
    "mdl.create_dataset": "mdl.destroy_dataset",
    "rt.malloc": "rt.free",
    "create_data_buffer": "destroy_data_buffer",
}


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # no torch_npu in this process unless a test says so


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "double.om"
    path.write_bytes(b"stand-in om")
    return path


def install(monkeypatch, fake: FakeAcl) -> FakeAcl:
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    return fake


def open_session(path, inputs=INPUTS, outputs=OUTPUTS, **kwargs) -> OmSession:
    return OmSession(path, inputs, outputs, device_id=0, torch_device=torch.device("cpu"), **kwargs)


def fake_npu(monkeypatch, fake: FakeAcl) -> None:
    """Treat tensors registered with the stand-in as NPU tensors, and outputs as NPU (bound) ones."""
    monkeypatch.setattr(om_session, "on_device", lambda t, i: fake._is_device(t.data_ptr(), t.nbytes))
    monkeypatch.setattr(om_session, "binds_outputs", lambda device: True)
    real_empty = torch.empty

    def empty(*args, **kwargs):
        kwargs.pop("device", None)  # host memory standing in for torch_npu's
        tensor = real_empty(*args, **kwargs)
        fake.register_device_tensor(tensor)
        return tensor

    monkeypatch.setattr(om_session.torch, "empty", empty)


def test_loads_once_allocates_once_and_computes(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    session = open_session(model_file)
    assert session.backend == "om"
    context, stream = session._context, session._stream
    results = []
    for i in range(3):
        x = torch.arange(6, dtype=torch.float32).reshape(SHAPE) + i
        out = session.run({"x": x})
        assert set(out) == {"y"} and out["y"].dtype == torch.float32 and out["y"].shape == SHAPE
        torch.testing.assert_close(out["y"], x * 2, rtol=0, atol=0)
        results.append(out["y"])
    assert not torch.equal(results[0], results[1]), "copy_outputs=True must return independent tensors"
    assert fake.count("mdl.load_from_file") == 1
    # host feeds and host outputs: one staging buffer each, allocated once
    assert fake.count("rt.malloc") == 2 and fake.count("create_data_buffer") == 2
    assert fake.count("mdl.add_dataset_buffer") == 2 and fake.count("rt.create_stream") == 1
    assert fake.count("mdl.execute_async") == 3 and fake.count("rt.synchronize_stream") == 3
    assert fake.count("rt.memcpy") == 6 and fake.count("update_data_buffer") == 0  # one in, one out per run
    load_context = next(c.context for c in fake.calls if c.name == "mdl.load_from_file")
    for call in fake.calls:
        if call.name == "mdl.execute_async":
            assert call.args[3] == stream, "execute_async must use the session's stream"
            assert call.context == load_context == context, "load and execute must share the session's context"
        if call.name == "rt.synchronize_stream":
            assert call.args == (stream,)
    kinds = [c.args[4] for c in fake.calls if c.name == "rt.memcpy"]
    assert kinds == [ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST] * 3
    session.close()
    assert not fake.violations


def test_hot_loop_returns_the_same_output_tensor(monkeypatch, model_file):
    install(monkeypatch, FakeAcl())
    with open_session(model_file) as session:
        first = session.run({"x": torch.ones(SHAPE)}, copy_outputs=False)["y"]
        ptr = first.data_ptr()
        second = session.run({"x": torch.full(SHAPE, 3.0)}, copy_outputs=False)["y"]
        assert second.data_ptr() == ptr and torch.equal(first, torch.full(SHAPE, 6.0))


def _created(call: Call):
    """(undo call name, the handle it must be given) for a creating call."""
    if call.name == "init":
        return ("finalize", ())
    if call.name == "rt.set_device":
        return ("rt.reset_device", call.args)
    handle = call.result[0] if isinstance(call.result, tuple) else call.result
    return (UNDO[call.name], (handle,))


def test_close_frees_everything_in_reverse_order(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    session = open_session(model_file)
    session.run({"x": torch.ones(SHAPE)})
    opened = len(fake.calls)
    created = [_created(c) for c in fake.calls if c.name in UNDO]
    session.close()
    undoing = set(UNDO.values())
    closing = [(c.name, c.args) for c in fake.calls[opened:] if c.name in undoing]
    assert closing == list(reversed(created))
    context = session_context = created[2][1][0]
    assert closing[-3:] == [("rt.destroy_context", (context,)), ("rt.reset_device", (0,)), ("finalize", ())]
    assert not fake.live, f"left allocated: {fake.live}"
    assert not fake.memory and not fake.initialised and not any(fake.device_refs.values())
    unload = next(c for c in fake.calls[opened:] if c.name == "mdl.unload")
    assert unload.context == session_context, "unload must run in the context the model was loaded in"
    assert not fake.violations, fake.violations
    calls = len(fake.calls)
    session.close()  # idempotent
    assert len(fake.calls) == calls
    with pytest.raises(RuntimeError, match="closed"):
        session.run({"x": torch.ones(SHAPE)})


OPEN_CALLS = [
    "init",
    "rt.set_device",
    "rt.create_context",
    "rt.create_stream",
    "mdl.load_from_file",
    "mdl.create_desc",
    "mdl.get_desc",
    "mdl.get_input_dims",
    "mdl.create_dataset",
    "rt.malloc",
    "create_data_buffer",
    "mdl.add_dataset_buffer",
]
RUN_CALLS = ["rt.memcpy", "mdl.execute_async", "rt.synchronize_stream"]
CLOSE_CALLS = [
    "rt.set_context",
    "destroy_data_buffer",
    "rt.free",
    "mdl.destroy_dataset",
    "mdl.destroy_desc",
    "mdl.unload",
    "rt.destroy_stream",
    "rt.destroy_context",
    "rt.reset_device",
    "finalize",
]


@pytest.mark.parametrize("name", OPEN_CALLS)
def test_failing_call_at_load_raises_naming_it_and_releases(monkeypatch, model_file, name):
    fake = install(monkeypatch, FakeAcl(fail={name: ERROR}))
    with pytest.raises(RuntimeError, match=rf"acl\.{name.replace('.', '[.]')} failed") as info:
        open_session(model_file)
    if name not in HANDLE_CALLS:
        assert str(ERROR) in str(info.value)
    assert set(fake.live.values()) <= {"context"} and not fake.memory, f"a failed load leaked {fake.live}"
    assert not (set(fake.live) - set(fake.default_context.values())), "only device default contexts may remain"
    assert not any(fake.device_refs.values())
    assert not fake.initialised


@pytest.mark.parametrize("name", RUN_CALLS)
def test_failing_call_in_run_raises_naming_it(monkeypatch, model_file, name):
    fake = install(monkeypatch, FakeAcl())
    with open_session(model_file) as session:
        session.run({"x": torch.ones(SHAPE)})
        fake.fail[name] = ERROR
        with pytest.raises(RuntimeError, match=rf"acl\.{name.replace('.', '[.]')} failed with error code {ERROR}"):
            session.run({"x": torch.ones(SHAPE)})
        del fake.fail[name]
        torch.testing.assert_close(session.run({"x": torch.ones(SHAPE)})["y"], torch.full(SHAPE, 2.0))
    assert not fake.memory and not any(fake.device_refs.values())


@pytest.mark.parametrize("name", CLOSE_CALLS)
def test_failing_call_in_close_raises_naming_it_after_releasing_the_rest(monkeypatch, model_file, name):
    fake = install(monkeypatch, FakeAcl())
    session = open_session(model_file)
    fake.fail[name] = ERROR
    with pytest.raises(RuntimeError, match=rf"acl\.{name.replace('.', '[.]')} failed with error code {ERROR}"):
        session.close()
    attempted = {c.name for c in fake.calls}
    assert {"rt.free", "mdl.unload", "rt.destroy_context", "rt.reset_device", "finalize"} <= attempted


def test_missing_pyacl_is_one_line_user_error(monkeypatch, model_file):
    monkeypatch.setitem(sys.modules, "acl", None)  # `import acl` now raises ImportError
    with pytest.raises(UserError) as info:
        open_session(model_file)
    message = str(info.value)
    assert "\n" not in message and "pyACL" in message and "CANN" in message and "set_env.sh" in message


def _model(*inputs: Io, outputs=None, fn=None) -> FakeModel:
    return FakeModel(list(inputs), outputs or [Io("y", ACL_FLOAT, SHAPE)], fn or (lambda f: [f["x"] * 2]))


def test_model_description_must_match_the_manifest(monkeypatch, model_file):
    """Count, names, aclDataType and dims come from the model description, not only byte sizes."""
    cases = [
        (_model(Io("x", ACL_FLOAT, SHAPE), Io("z", ACL_FLOAT, SHAPE)), "model has 2 inputs but the manifest lists 1"),
        (_model(Io("x", ACL_FLOAT, (3, 2))), r"input x is 3x2 in the model but x \[2x3 float32\]"),
        (_model(Io("other", ACL_FLOAT, SHAPE)), "input 0 is named 'other', which the manifest does not list"),
        (_model(Io("x", ACL_FLOAT, SHAPE), outputs=[Io("y", ACL_FLOAT, (2, 6))]), "output y is 2x6 in the model"),
    ]
    for model, message in cases:
        fake = install(monkeypatch, FakeAcl(model=model))
        with pytest.raises(UserError, match=message):
            open_session(model_file)
        assert set(fake.live) <= set(fake.default_context.values())


def test_bf16_and_fp16_are_told_apart(monkeypatch, model_file):
    """Both are 2 bytes: only the aclDataType (FLOAT16=1, BF16=27) tells them apart."""
    spec = [TensorSpec("x", SHAPE, "float16")]
    out = [TensorSpec("y", SHAPE, "float16")]
    fake = install(monkeypatch, FakeAcl(model=_model(Io("x", ACL_BF16, SHAPE), outputs=[Io("y", ACL_FLOAT16, SHAPE)])))
    with pytest.raises(UserError, match=r"input x is bfloat16 in the model but x \[2x3 float16\] in the manifest"):
        open_session(model_file, spec, out)
    fp16 = _model(Io("x", ACL_FLOAT16, SHAPE), outputs=[Io("y", ACL_FLOAT16, SHAPE)])
    fake = install(monkeypatch, FakeAcl(model=fp16))
    with open_session(model_file, spec, out) as session:
        got = session.run({"x": torch.full(SHAPE, 1.5, dtype=torch.float16)})["y"]
        assert got.dtype == torch.float16 and torch.equal(got, torch.full(SHAPE, 3.0, dtype=torch.float16))
    assert not fake.violations


def test_equal_shaped_inputs_are_bound_by_name_not_position(monkeypatch, model_file):
    """The .om lists w.b before w.a (same shape, same dtype): feeding by position would swap them."""
    model = FakeModel(
        [Io("w.b", ACL_FLOAT, SHAPE), Io("w.a", ACL_FLOAT, SHAPE)],
        [Io("y", ACL_FLOAT, SHAPE)],
        lambda f: [f["w.a"] - 2 * f["w.b"]],
    )
    install(monkeypatch, FakeAcl(model=model))
    specs = [TensorSpec("w.a", SHAPE, "float32"), TensorSpec("w.b", SHAPE, "float32")]
    a, b = torch.full(SHAPE, 10.0), torch.ones(SHAPE)
    with open_session(model_file, specs) as session:
        torch.testing.assert_close(session.run({"w.a": a, "w.b": b})["y"], a - 2 * b, rtol=0, atol=0)


def test_device_tensors_are_bound_not_copied(monkeypatch, model_file):
    """NPU feeds go into the data buffer as they are (acl.update_data_buffer on data_ptr): no memcpy per
    call, whatever their size; outputs are torch tensors the model writes into directly."""
    fake = install(monkeypatch, FakeAcl())
    fake_npu(monkeypatch, fake)
    feeds = [torch.arange(6, dtype=torch.float32).reshape(SHAPE) + i for i in range(3)]
    for x in feeds:
        fake.register_device_tensor(x)
    with open_session(model_file) as session:
        for x in feeds:
            y = session.run({"x": x}, copy_outputs=False)["y"]
            torch.testing.assert_close(y, x * 2, rtol=0, atol=0)
        assert fake.count("rt.memcpy") == 0 and fake.count("rt.malloc") == 0
        bound = [c.args[c.name == "update_data_buffer"] for c in fake.calls if "data_buffer" in c.name]
        assert bound == [y.data_ptr(), *(x.data_ptr() for x in feeds)], "each feed is bound at its own address"
        # a host feed still works: it goes through one staging buffer, copied host-to-device
        host = torch.full(SHAPE, 4.0)
        torch.testing.assert_close(session.run({"x": host})["y"], torch.full(SHAPE, 8.0))
        assert [c.args[4] for c in fake.calls if c.name == "rt.memcpy"] == [ACL_MEMCPY_HOST_TO_DEVICE]
    assert not fake.violations


def test_a_feed_that_is_an_output_buffer_is_staged(monkeypatch, model_file):
    """Chaining copy_outputs=False results back in (the DiT block loop) must not alias in and out."""
    fake = install(monkeypatch, FakeAcl(model=_model(Io("x", ACL_FLOAT, SHAPE), fn=lambda f: [f["x"][::-1, ::-1] + 1])))
    fake_npu(monkeypatch, fake)
    x = torch.arange(6, dtype=torch.float32).reshape(SHAPE)
    fake.register_device_tensor(x)
    with open_session(model_file) as session:
        y = session.run({"x": x}, copy_outputs=False)["y"]
        expected = y.flip(0, 1) + 1
        again = session.run({"x": y}, copy_outputs=False)["y"]
        torch.testing.assert_close(again, expected, rtol=0, atol=0)
        assert [c.args[4] for c in fake.calls if c.name == "rt.memcpy"] == [ACL_MEMCPY_DEVICE_TO_DEVICE]


def test_feeds_are_validated_before_any_copy(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    with open_session(model_file) as session:
        with pytest.raises(UserError, match="has dtype float16, expected float32"):
            session.run({"x": torch.ones(SHAPE, dtype=torch.float16)})
        with pytest.raises(UserError, match="has shape 3x2, expected 2x3"):
            session.run({"x": torch.ones(3, 2)})
        assert fake.count("rt.memcpy") == 0


def test_acl_initialised_elsewhere_is_shared_not_finalised(monkeypatch, model_file):
    """torch_npu calls aclInit first: acl.init answers REPEAT_INITIALIZE, and we must not finalise."""
    fake = install(monkeypatch, FakeAcl(initialised=True))
    with open_session(model_file) as session:
        torch.testing.assert_close(session.run({"x": torch.ones(SHAPE)})["y"], torch.full(SHAPE, 2.0))
    assert fake.count("finalize") == 0 and fake.initialised


def test_never_finalize_while_torch_npu_is_loaded(monkeypatch, model_file):
    """Even when our acl.init came first, torch_npu in the process owns ACL's end: no acl.finalize."""
    fake = install(monkeypatch, FakeAcl())
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    with open_session(model_file) as session:
        session.run({"x": torch.ones(SHAPE)})
    assert fake.count("init") == 1 and fake.count("finalize") == 0


def test_torch_npu_initialises_acl_before_us(monkeypatch, model_file):
    """On an NPU torch device, torch_npu sets its device (its aclInit, its context) before any acl call,
    so torch_npu owns ACL and our acl.init gets REPEAT_INITIALIZE instead of the other way round."""
    fake = install(monkeypatch, FakeAcl())
    seen = []
    monkeypatch.setattr(om_session.devices, "set_device", lambda d: seen.append((d.type, len(fake.calls))))
    open_session(model_file).close()
    assert seen == [], "a cpu torch device leaves torch_npu alone"
    fake_npu(monkeypatch, fake)
    calls = len(fake.calls)
    session = OmSession(model_file, INPUTS, OUTPUTS, device_id=0, torch_device=types.SimpleNamespace(type="npu"))
    assert seen == [("npu", calls)]
    session.close()


def test_two_sessions_share_one_init_and_finalise_once(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    a, b = open_session(model_file), open_session(model_file)
    assert a._context != b._context and a._stream != b._stream
    a.close()
    assert fake.count("finalize") == 0
    torch.testing.assert_close(b.run({"x": torch.ones(SHAPE)})["y"], torch.full(SHAPE, 2.0))
    b.close()
    assert fake.count("finalize") == 1 and not fake.live and not fake.violations


def test_the_callers_context_is_restored_after_load_run_and_close(monkeypatch, model_file):
    """torch_npu's context is current on the thread: after load, after each run and after close the
    thread is back on it, and a torch_npu op then works (never a destroyed context)."""
    fake = install(monkeypatch, FakeAcl())
    torch_ctx = fake.foreign_context()
    session = open_session(model_file)
    assert fake.current == torch_ctx, "load must give the thread its context back"
    session.run({"x": torch.ones(SHAPE)})
    execute = next(c for c in fake.calls if c.name == "mdl.execute_async")
    assert execute.context == session._context != torch_ctx
    assert fake.current == torch_ctx, "run must give the thread its context back"
    session.close()
    assert fake.current == torch_ctx, "close must give the thread its context back"
    assert fake.torch_npu_op() == 0 and not fake.violations


def test_no_thread_is_left_on_the_destroyed_context(monkeypatch, model_file):
    """A thread with no context of its own: after close it is not on the destroyed session context."""
    fake = install(monkeypatch, FakeAcl())
    a = open_session(model_file)  # the default context is current (set_device), then ours, then restored
    b = open_session(model_file)
    a.close()
    assert fake.current != a._context and fake.live.get(fake.current) == "context"
    torch.testing.assert_close(b.run({"x": torch.ones(SHAPE)})["y"], torch.full(SHAPE, 2.0))
    b.close()
    assert not fake.violations


def test_one_lock_per_model_serialises_runs(monkeypatch, model_file):
    """Two threads on one session: the stand-in flags overlapping executions of one model."""
    fake = install(monkeypatch, FakeAcl(execute_seconds=0.02))
    errors = []
    with open_session(model_file) as session:

        def work(value: float) -> None:
            try:
                for _ in range(5):
                    got = session.run({"x": torch.full(SHAPE, value)})["y"]
                    assert torch.equal(got, torch.full(SHAPE, 2 * value))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(float(v),)) for v in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and not fake.violations, (errors, fake.violations)
    assert fake.count("mdl.execute_async") == 15


def test_output_device_defaults_to_cpu_without_torch_npu(monkeypatch, model_file):
    install(monkeypatch, FakeAcl())
    monkeypatch.setattr(om_session.devices, "available_backends", lambda: ["cpu"])
    with OmSession(model_file, INPUTS, OUTPUTS) as session:
        assert session.torch_device == torch.device("cpu")
        assert session.run({"x": torch.ones(SHAPE)})["y"].device.type == "cpu"


def test_memcpy_kinds():
    assert memcpy_kind("npu", "npu") == ACL_MEMCPY_DEVICE_TO_DEVICE
    assert memcpy_kind("cpu", "npu") == ACL_MEMCPY_HOST_TO_DEVICE
    assert memcpy_kind("npu", "cpu") == ACL_MEMCPY_DEVICE_TO_HOST
    with pytest.raises(UserError, match="cpu or npu tensors, not cuda"):
        memcpy_kind("cuda", "npu")

