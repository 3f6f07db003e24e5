"""API-contract tests against a stand-in `acl` module: no Ascend hardware here.

The stand-in follows the documented pyACL signatures (CANN application development guide, Python API):
calls return `ret` or `(value, ret)`, `create_desc`/`create_dataset`/`create_data_buffer` return bare
handles. It records every call with its arguments and the thread's current context, keeps device memory
as bytearrays keyed by fake pointers so `memcpy` really moves bytes, and its `execute_async` doubles the
float32 input of a one-input, one-output model.
"""

from __future__ import annotations

import ctypes
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ltx_ascend.errors import UserError
from ltx_ascend.runtime import om_session
from ltx_ascend.runtime.om_session import (
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    OmSession,
    memcpy_kind,
)
from ltx_ascend.runtime.session import TensorSpec

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
# Calls that return a bare handle (0 = failure) rather than a status code.
HANDLE_CALLS = {"mdl.create_desc", "mdl.create_dataset", "create_data_buffer"}
TUPLE_CALLS = {"rt.create_context", "rt.create_stream", "mdl.load_from_file", "rt.malloc", "mdl.add_dataset_buffer"}


@dataclass
class Call:
    name: str
    args: tuple
    context: int | None  # the thread's current context when it was made
    result: object = None


class FakeAcl:
    """The stand-in: state plus a module object exposing `acl`, `acl.rt`, `acl.mdl` functions."""

    def __init__(self, in_sizes=(NBYTES,), out_sizes=(NBYTES,), fail=None, initialised=False):
        self.in_sizes, self.out_sizes = list(in_sizes), list(out_sizes)
        self.fail = dict(fail or {})
        self.calls: list[Call] = []
        self.memory: dict[int, bytearray] = {}
        self.live: dict[int, str] = {}  # handle -> what it is, until destroyed
        self.device_refs: dict[int, int] = {}
        self.initialised = initialised
        self.current: int | None = None
        self.model_context: dict[int, int] = {}
        self.datasets: dict[int, list[int]] = {}
        self.buffers: dict[int, tuple[int, int]] = {}
        self._next = 0x7F00_0000_0000
        module = types.ModuleType("acl")
        module.__doc__ = "stand-in for pyACL (API-contract test, no Ascend hardware)"
        module.rt = types.SimpleNamespace()
        module.mdl = types.SimpleNamespace()
        for name in [
            "init",
            "finalize",
            "create_data_buffer",
            "destroy_data_buffer",
            "rt.set_device",
            "rt.reset_device",
            "rt.create_context",
            "rt.destroy_context",
            "rt.set_context",
            "rt.get_context",
            "rt.create_stream",
            "rt.destroy_stream",
            "rt.malloc",
            "rt.free",
            "rt.memcpy",
            "rt.synchronize_stream",
            "mdl.load_from_file",
            "mdl.unload",
            "mdl.create_desc",
            "mdl.destroy_desc",
            "mdl.get_desc",
            "mdl.get_num_inputs",
            "mdl.get_num_outputs",
            "mdl.get_input_size_by_index",
            "mdl.get_output_size_by_index",
            "mdl.create_dataset",
            "mdl.destroy_dataset",
            "mdl.add_dataset_buffer",
            "mdl.execute_async",
        ]:
            owner = module
            if "." in name:
                owner = getattr(module, name.split(".")[0])
            setattr(owner, name.split(".")[-1], self._recorded(name))
        self.module = module

    # ---------------------------------------------------------------- plumbing

    def _recorded(self, name):
        impl = getattr(self, "_" + name.replace(".", "_"))

        def call(*args):
            record = Call(name, args, self.current)
            self.calls.append(record)
            if name in self.fail:
                if name in HANDLE_CALLS:
                    record.result = 0
                else:
                    record.result = (0, self.fail[name]) if name in TUPLE_CALLS else self.fail[name]
            else:
                record.result = impl(*args)
            return record.result

        return call

    def _new(self, what: str) -> int:
        self._next += 0x1000
        self.live[self._next] = what
        return self._next

    def _drop(self, handle: int, what: str) -> int:
        if self.live.get(handle) != what:
            return 100000  # ACL_ERROR_INVALID_PARAM
        del self.live[handle]
        return 0

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def count(self, name: str) -> int:
        return self.names().count(name)

    # ---------------------------------------------------------------- acl

    def _init(self):
        if self.initialised:
            return ACL_ERROR_REPEAT_INITIALIZE
        self.initialised = True
        return 0

    def _finalize(self):
        self.initialised = False
        return 0

    def _create_data_buffer(self, ptr, size):
        handle = self._new("data_buffer")
        self.buffers[handle] = (ptr, size)
        return handle

    def _destroy_data_buffer(self, handle):
        return self._drop(handle, "data_buffer")

    # ---------------------------------------------------------------- acl.rt

    def _rt_set_device(self, device_id):
        self.device_refs[device_id] = self.device_refs.get(device_id, 0) + 1  # ACL counts set/reset pairs
        return 0

    def _rt_reset_device(self, device_id):
        if not self.device_refs.get(device_id):
            return 100000
        self.device_refs[device_id] -= 1
        return 0

    def _rt_create_context(self, device_id):
        self.current = self._new("context")
        return self.current, 0

    def _rt_destroy_context(self, context):
        if self.current == context:
            self.current = None
        return self._drop(context, "context")

    def _rt_set_context(self, context):
        if self.live.get(context) != "context" and context != 0xC0FFEE:
            return 100000
        self.current = context
        return 0

    def _rt_get_context(self):
        return (self.current, 0) if self.current else (0, 107002)  # ACL_ERROR_RT_CONTEXT_NULL

    def _rt_create_stream(self):
        return self._new("stream"), 0

    def _rt_destroy_stream(self, stream):
        return self._drop(stream, "stream")

    def _rt_malloc(self, size, policy):
        ptr = self._new("device_memory")
        self.memory[ptr] = bytearray(size)
        return ptr, 0

    def _rt_free(self, ptr):
        self.memory.pop(ptr, None)
        return self._drop(ptr, "device_memory")

    def _rt_memcpy(self, dst, dest_max, src, count, kind):
        if count > dest_max:
            return 100000
        if kind == ACL_MEMCPY_HOST_TO_DEVICE and dst in self.memory and src not in self.memory:
            self.memory[dst][:count] = ctypes.string_at(src, count)
        elif kind == ACL_MEMCPY_DEVICE_TO_HOST and src in self.memory and dst not in self.memory:
            ctypes.memmove(dst, bytes(self.memory[src][:count]), count)
        elif kind == ACL_MEMCPY_DEVICE_TO_DEVICE and src in self.memory and dst in self.memory:
            self.memory[dst][:count] = self.memory[src][:count]
        else:
            return 100000
        return 0

    def _rt_synchronize_stream(self, stream):
        return 0 if self.live.get(stream) == "stream" else 100000

    # ---------------------------------------------------------------- acl.mdl

    def _mdl_load_from_file(self, path):
        model = self._new("model")
        self.model_context[model] = self.current
        return model, 0

    def _mdl_unload(self, model):
        return self._drop(model, "model")

    def _mdl_create_desc(self):
        return self._new("desc")

    def _mdl_destroy_desc(self, desc):
        return self._drop(desc, "desc")

    def _mdl_get_desc(self, desc, model):
        return 0 if self.live.get(desc) == "desc" and self.live.get(model) == "model" else 100000

    def _mdl_get_num_inputs(self, desc):
        return len(self.in_sizes)

    def _mdl_get_num_outputs(self, desc):
        return len(self.out_sizes)

    def _mdl_get_input_size_by_index(self, desc, index):
        return self.in_sizes[index]

    def _mdl_get_output_size_by_index(self, desc, index):
        return self.out_sizes[index]

    def _mdl_create_dataset(self):
        handle = self._new("dataset")
        self.datasets[handle] = []
        return handle

    def _mdl_destroy_dataset(self, dataset):
        return self._drop(dataset, "dataset")

    def _mdl_add_dataset_buffer(self, dataset, buffer):
        self.datasets[dataset].append(buffer)
        return dataset, 0

    def _mdl_execute_async(self, model, inputs, outputs, stream):
        if self.live.get(model) != "model" or self.live.get(stream) != "stream":
            return 100000
        if self.current != self.model_context[model]:
            return 100000  # load and execute must share a context
        (src_ptr, size), (dst_ptr, _) = self.buffers[self.datasets[inputs][0]], self.buffers[self.datasets[outputs][0]]
        x = np.frombuffer(bytes(self.memory[src_ptr][:size]), dtype=np.float32)
        self.memory[dst_ptr][:size] = (x * 2).astype(np.float32).tobytes()
        return 0


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "double.om"
    path.write_bytes(b"stand-in om")
    return path


def install(monkeypatch, fake: FakeAcl) -> FakeAcl:
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    return fake


def open_session(path, **kwargs) -> OmSession:
    return OmSession(path, INPUTS, OUTPUTS, device_id=0, torch_device=torch.device("cpu"), **kwargs)


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
    assert fake.count("rt.malloc") == 2 and fake.count("create_data_buffer") == 2
    assert fake.count("mdl.add_dataset_buffer") == 2 and fake.count("rt.create_stream") == 1
    assert fake.count("mdl.execute_async") == 3 and fake.count("rt.synchronize_stream") == 3
    assert fake.count("rt.memcpy") == 6  # one in, one out per run
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
    closing = [(c.name, c.args) for c in fake.calls[opened:] if c.name != "rt.set_context"]
    assert closing == list(reversed(created))
    context = created[2][1][0]
    assert closing[-3:] == [("rt.destroy_context", (context,)), ("rt.reset_device", (0,)), ("finalize", ())]
    assert not fake.live, f"left allocated: {fake.live}"
    assert not fake.memory and not fake.initialised and not any(fake.device_refs.values())
    unload = next(c for c in fake.calls[opened:] if c.name == "mdl.unload")
    assert unload.context == context, "unload must run in the context the model was loaded in"
    session.close()  # idempotent
    assert len(fake.calls) == opened + len(created) + 1  # + the one set_context before releasing
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
    assert not fake.live and not fake.memory, f"a failed load leaked {fake.live}"
    assert not any(fake.device_refs.values())
    assert not fake.initialised


@pytest.mark.parametrize("name", RUN_CALLS)
def test_failing_call_in_run_raises_naming_it(monkeypatch, model_file, name):
    fake = install(monkeypatch, FakeAcl())
    with open_session(model_file) as session:
        fake.fail[name] = ERROR
        with pytest.raises(RuntimeError, match=rf"acl\.{name.replace('.', '[.]')} failed with error code {ERROR}"):
            session.run({"x": torch.ones(SHAPE)})
        del fake.fail[name]
    assert not fake.live


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


def test_model_sizes_must_match_the_manifest(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl(out_sizes=(NBYTES * 2,)))
    with pytest.raises(UserError, match=r"output 0 is 48 bytes in the model but y \[2x3 float32\] is 24"):
        open_session(model_file)
    assert not fake.live
    fake = install(monkeypatch, FakeAcl(in_sizes=(NBYTES, NBYTES)))
    with pytest.raises(UserError, match="the model has 2 inputs but the manifest lists 1"):
        open_session(model_file)
    assert not fake.live


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


def test_two_sessions_share_one_init_and_finalise_once(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    a, b = open_session(model_file), open_session(model_file)
    assert a._context != b._context and a._stream != b._stream
    a.close()
    assert fake.count("finalize") == 0
    torch.testing.assert_close(b.run({"x": torch.ones(SHAPE)})["y"], torch.full(SHAPE, 2.0))
    b.close()
    assert fake.count("finalize") == 1 and not fake.live


def test_run_switches_to_the_session_context_and_restores_the_callers(monkeypatch, model_file):
    fake = install(monkeypatch, FakeAcl())
    with open_session(model_file) as session:
        fake.current = 0xC0FFEE  # torch_npu's context, current on this thread
        session.run({"x": torch.ones(SHAPE)})
        execute = next(c for c in fake.calls if c.name == "mdl.execute_async")
        assert execute.context == session._context
        assert fake.current == 0xC0FFEE


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
