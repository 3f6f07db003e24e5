"""Stand-ins for CANN used by the contract tests: a pyACL `acl` module and an `atc` script.

No Ascend hardware or CANN here, so these follow the documents instead, quirks included:

- pyACL (CANN "Application Development (Python)"): calls return `ret` or `(value, ret)`;
  `create_desc`/`create_dataset`/`create_data_buffer` return bare handles (0 = failure);
  `get_<kind>_dims` returns `({"name", "dimCount", "dims"}, ret)`; data types are aclDataType values
  (FLOAT=0, FLOAT16=1, INT8=2, INT32=3, INT64=9, BOOL=12, BF16=27). Contexts are per thread: `set_device`
  binds the device's default context, `create_context` binds the new one, `destroy_context` leaves a
  thread that was on it pointing at a dead handle (the test checks that never happens), and the model
  must execute in the context it was loaded in. Device memory is real host memory (ctypes buffers) at
  addresses the stand-in tracks, so `memcpy` kinds are checked and bound tensors really are read;
  `register_device_tensor` marks a CPU tensor as NPU memory (what torch_npu's allocator would give).
  `execute_async` runs the loaded model: a `FakeModel` given to the stand-in, or, when the .om file is
  an ONNX graph (what the fake `atc` writes), that graph on ONNX Runtime, Ascend's fused ops of an
  npu-ops graph as their reference decomposition (ltx_ascend/export/npu_reference.py).
  Several devices (`devices=N`), each with its own memory: a context belongs to the device it was
  made on, `malloc` allocates on the current context's device, and device memory of device d used
  under device e (a `memcpy` operand, an `execute_async` buffer, a model loaded on another device) is
  an error (`ACL_ERROR_INVALID_PARAM`) and a recorded violation, as on a real multi-card host.
- ATC (CANN ATC reference): `FAKE_ATC` writes `{--output}.om`, or `{--output}_<os>_<cpu>.om` when
  `--host_env_os/--host_env_cpu` are given; `FAKE_ATC_ALWAYS_SUFFIX` always appends `_linux_aarch64`.
  Both copy the ONNX model into the .om so the stand-in `acl` can run it.
"""

from __future__ import annotations

import ctypes
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_RT_CONTEXT_NULL = 107002
CONTEXT_DESTROYED = 107003  # the stand-in's code for "this thread's context was destroyed"

ACL_FLOAT, ACL_FLOAT16, ACL_INT8, ACL_INT32, ACL_INT64, ACL_BOOL, ACL_BF16 = 0, 1, 2, 3, 9, 12, 27
NUMPY_OF_ACL = {ACL_FLOAT: np.float32, ACL_FLOAT16: np.float16, ACL_INT8: np.int8, ACL_INT32: np.int32,
                ACL_INT64: np.int64, ACL_BOOL: np.bool_}  # fmt: skip
ACL_OF_ONNX = {1: ACL_FLOAT, 10: ACL_FLOAT16, 3: ACL_INT8, 6: ACL_INT32, 7: ACL_INT64, 9: ACL_BOOL, 16: ACL_BF16}

HANDLE_CALLS = {"mdl.create_desc", "mdl.create_dataset", "create_data_buffer"}
TUPLE_CALLS = {
    "rt.create_context", "rt.create_stream", "mdl.load_from_file", "rt.malloc", "mdl.add_dataset_buffer",
    "rt.get_context", "mdl.get_input_dims", "mdl.get_output_dims",
}  # fmt: skip
CALLS = [
    "init", "finalize", "get_soc_name", "create_data_buffer", "destroy_data_buffer", "update_data_buffer",
    "rt.set_device", "rt.reset_device", "rt.create_context", "rt.destroy_context", "rt.set_context",
    "rt.get_context", "rt.create_stream", "rt.destroy_stream", "rt.malloc", "rt.free", "rt.memcpy",
    "rt.synchronize_stream", "mdl.load_from_file", "mdl.unload", "mdl.create_desc", "mdl.destroy_desc",
    "mdl.get_desc", "mdl.get_num_inputs", "mdl.get_num_outputs", "mdl.get_input_size_by_index",
    "mdl.get_output_size_by_index", "mdl.get_input_name_by_index", "mdl.get_output_name_by_index",
    "mdl.get_input_data_type", "mdl.get_output_data_type", "mdl.get_input_dims", "mdl.get_output_dims",
    "mdl.create_dataset", "mdl.destroy_dataset", "mdl.add_dataset_buffer", "mdl.execute_async",
]  # fmt: skip
MEMCPY_H2D, MEMCPY_D2H, MEMCPY_D2D = 1, 2, 3
# Calls that are fine on a thread whose context is gone (they pick or drop contexts and devices).
CONTEXT_FREE = {"init", "finalize", "get_soc_name", "rt.set_device", "rt.reset_device", "rt.set_context",
                "rt.get_context"}  # fmt: skip


@dataclass
class Io:
    name: str
    dtype: int  # aclDataType
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        itemsize = 2 if self.dtype == ACL_BF16 else np.dtype(NUMPY_OF_ACL[self.dtype]).itemsize
        return int(np.prod(self.dims, dtype=np.int64)) * itemsize


@dataclass
class FakeModel:
    inputs: list[Io]
    outputs: list[Io]
    fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def doubling_model(shape=(2, 3)) -> FakeModel:
    return FakeModel([Io("x", ACL_FLOAT, shape)], [Io("y", ACL_FLOAT, shape)], lambda f: [f["x"] * 2])


def onnx_model(path: str) -> FakeModel | None:
    """The ONNX graph inside a fake-ATC .om, run on ONNX Runtime; None if the file is not ONNX."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(path)
    except Exception:
        return None
    if not model.graph.input:  # arbitrary bytes can parse as an empty ModelProto
        return None

    def io(v) -> Io:
        t = v.type.tensor_type
        return Io(v.name, ACL_OF_ONNX[t.elem_type], tuple(d.dim_value for d in t.shape.dim))

    from ltx_ascend.export.npu_reference import has_ascend_ops, lower_ascend_ops

    if has_ascend_ops(model):  # what ATC maps to Ascend's kernels: their reference decomposition here
        session = ort.InferenceSession(lower_ascend_ops(model).SerializeToString(), providers=["CPUExecutionProvider"])
    else:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [io(v) for v in model.graph.input]
    return FakeModel(inputs, [io(v) for v in model.graph.output], lambda f: session.run(None, f))


@dataclass
class Call:
    name: str
    args: tuple
    context: int | None  # the calling thread's current context when it was made
    thread: str = ""
    result: object = None


@dataclass
class _Model:
    spec: FakeModel
    context: int
    running: bool = False
    device: int = 0


@dataclass
class FakeAcl:
    """The stand-in's state plus `module`, a module object exposing `acl`, `acl.rt`, `acl.mdl`."""

    model: FakeModel = field(default_factory=doubling_model)
    fail: dict = field(default_factory=dict)
    initialised: bool = False
    soc_name: str | None = "Ascend910B4"
    execute_seconds: float = 0.0
    devices: int = 1  # cards on this host, ids 0 .. devices - 1

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.live: dict[int, str] = {}  # handle -> what it is, until destroyed
        self.memory: dict[int, ctypes.Array] = {}  # device memory we allocated
        self.device_ranges: dict[int, int] = {}  # address -> size of all device memory (ours + "npu tensors")
        self.device_refs: dict[int, int] = {}
        self.context_device: dict[int, int] = {}  # context -> the device it belongs to
        self.memory_device: dict[int, int] = {}  # device address -> the device it is on
        self.default_context: dict[int, int] = {}
        self.models: dict[int, _Model] = {}
        self.datasets: dict[int, list[int]] = {}
        self.buffers: dict[int, tuple[int, int]] = {}
        self.violations: list[str] = []
        self._tls = threading.local()
        self._next = 0x7F00_0000_0000
        self._lock = threading.RLock()
        module = types.ModuleType("acl")
        module.__doc__ = "stand-in for pyACL (API-contract test, no Ascend hardware)"
        module.rt = types.SimpleNamespace()
        module.mdl = types.SimpleNamespace()
        for name in CALLS:
            owner = getattr(module, name.split(".")[0]) if "." in name else module
            setattr(owner, name.split(".")[-1], self._recorded(name))
        self.module = module

    # ---------------------------------------------------------------- plumbing

    @property
    def current(self) -> int | None:
        return getattr(self._tls, "current", None)

    @current.setter
    def current(self, value: int | None) -> None:
        self._tls.current = value

    def _recorded(self, name):
        impl = getattr(self, "_" + name.replace(".", "_"))

        def call(*args):
            with self._lock:
                record = Call(name, args, self.current, threading.current_thread().name)
                self.calls.append(record)
                on_dead = self.current is not None and self.live.get(self.current) != "context"
                if on_dead and name not in CONTEXT_FREE:
                    self.violations.append(f"{name} called on a destroyed context")
                if name in self.fail:
                    if name in HANDLE_CALLS:
                        record.result = 0
                    else:
                        record.result = (0, self.fail[name]) if name in TUPLE_CALLS else self.fail[name]
                    return record.result
            record.result = impl(*args)
            return record.result

        return call

    def _new(self, what: str) -> int:
        self._next += 0x1000
        self.live[self._next] = what
        return self._next

    def _drop(self, handle: int, what: str) -> int:
        if self.live.get(handle) != what:
            return ACL_ERROR_INVALID_PARAM
        del self.live[handle]
        return 0

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def foreign_context(self, device: int = 0) -> int:
        """A live context someone else (torch_npu) created on `device`, current on this thread."""
        self.current = self._new("context")
        self.context_device[self.current] = device
        return self.current

    def register_device_tensor(self, tensor, device: int = 0) -> None:
        """Treat this CPU tensor's memory as memory of NPU `device` (what a torch_npu tensor is)."""
        self.device_ranges[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        self.memory_device[tensor.data_ptr()] = device

    def _is_device(self, address: int, size: int) -> bool:
        return self.device_of(address, size) is not None

    def device_of(self, address: int, size: int) -> int | None:
        """The device whose memory holds [address, address + size), or None for host memory."""
        for start, n in self.device_ranges.items():
            if start <= address and address + size <= start + n:
                return self.memory_device.get(start, 0)
        return None

    @property
    def current_device(self) -> int | None:
        return self.context_device.get(self.current or 0)

    def model_devices(self) -> list[int]:
        """The device of every model loaded so far (unloaded ones included), in load order."""
        return [m.device for m in self.models.values()]

    def _cross_device(self, what: str, device: int | None) -> bool:
        """Device memory of `device` used under another current device: recorded, and an error."""
        if device is None or device == self.current_device:
            return False
        self.violations.append(f"{what}: memory of device {device} used under device {self.current_device}")
        return True

    def torch_npu_op(self) -> int:
        """What a torch_npu op needs: a live current context on this thread (0 = ok)."""
        return 0 if self.live.get(self.current or 0) == "context" else CONTEXT_DESTROYED

    # ---------------------------------------------------------------- acl

    def _init(self):
        if self.initialised:
            return ACL_ERROR_REPEAT_INITIALIZE
        self.initialised = True
        return 0

    def _finalize(self):
        self.initialised = False
        return 0

    def _get_soc_name(self):
        return self.soc_name

    def _create_data_buffer(self, ptr, size):
        handle = self._new("data_buffer")
        self.buffers[handle] = (ptr, size)
        return handle

    def _destroy_data_buffer(self, handle):
        return self._drop(handle, "data_buffer")

    def _update_data_buffer(self, handle, ptr, size):
        if self.live.get(handle) != "data_buffer":
            return ACL_ERROR_INVALID_PARAM
        self.buffers[handle] = (ptr, size)
        return 0

    # ---------------------------------------------------------------- acl.rt

    def _rt_set_device(self, device_id):
        if not 0 <= device_id < self.devices:
            return ACL_ERROR_INVALID_PARAM  # no such card
        self.device_refs[device_id] = self.device_refs.get(device_id, 0) + 1  # ACL counts set/reset pairs
        if self.live.get(self.default_context.get(device_id, 0)) != "context":
            self.default_context[device_id] = self._new("context")
            self.context_device[self.default_context[device_id]] = device_id
        if self.live.get(self.current or 0) != "context" or self.current_device != device_id:
            self.current = self.default_context[device_id]  # set_device binds the device's default context
        return 0

    def _rt_reset_device(self, device_id):
        if not self.device_refs.get(device_id):
            return ACL_ERROR_INVALID_PARAM
        self.device_refs[device_id] -= 1
        if self.device_refs[device_id] == 0:
            self._drop(self.default_context[device_id], "context")
        return 0

    def _rt_create_context(self, device_id):
        if not self.device_refs.get(device_id):
            return 0, ACL_ERROR_INVALID_PARAM
        self.current = self._new("context")
        self.context_device[self.current] = device_id
        return self.current, 0

    def _rt_destroy_context(self, context):
        return self._drop(context, "context")  # a thread on it keeps the dead handle (checked by tests)

    def _rt_set_context(self, context):
        if self.live.get(context) != "context":
            return ACL_ERROR_INVALID_PARAM
        self.current = context
        return 0

    def _rt_get_context(self):
        return (self.current, 0) if self.current else (0, ACL_ERROR_RT_CONTEXT_NULL)

    def _rt_create_stream(self):
        return self._new("stream"), 0

    def _rt_destroy_stream(self, stream):
        return self._drop(stream, "stream")

    def _rt_malloc(self, size, policy):
        buf = ctypes.create_string_buffer(size)
        ptr = ctypes.addressof(buf)
        self.memory[ptr] = buf
        self.device_ranges[ptr] = size
        self.memory_device[ptr] = self.current_device or 0
        self.live[ptr] = "device_memory"
        return ptr, 0

    def _rt_free(self, ptr):
        self.memory.pop(ptr, None)
        self.device_ranges.pop(ptr, None)
        self.memory_device.pop(ptr, None)
        return self._drop(ptr, "device_memory")

    def _rt_memcpy(self, dst, dest_max, src, count, kind):
        if count > dest_max:
            return ACL_ERROR_INVALID_PARAM
        dst_dev, src_dev = self._is_device(dst, count), self._is_device(src, count)
        wanted = {MEMCPY_H2D: (True, False), MEMCPY_D2H: (False, True), MEMCPY_D2D: (True, True)}.get(kind)
        if wanted != (dst_dev, src_dev):
            return ACL_ERROR_INVALID_PARAM
        if self._cross_device("memcpy", self.device_of(dst, count)) or self._cross_device(
            "memcpy", self.device_of(src, count)
        ):
            return ACL_ERROR_INVALID_PARAM
        ctypes.memmove(dst, src, count)
        return 0

    def _rt_synchronize_stream(self, stream):
        return 0 if self.live.get(stream) == "stream" else ACL_ERROR_INVALID_PARAM

    # ---------------------------------------------------------------- acl.mdl

    def _mdl_load_from_file(self, path):
        if self.live.get(self.current or 0) != "context":
            return 0, ACL_ERROR_RT_CONTEXT_NULL
        spec = onnx_model(path) or self.model
        handle = self._new("model")
        self.models[handle] = _Model(spec, self.current, device=self.current_device or 0)  # type: ignore[arg-type]
        return handle, 0

    def _mdl_unload(self, model):
        if model in self.models and self.models[model].context != self.current:
            self.violations.append("unload outside the model's context")
        return self._drop(model, "model")

    def _mdl_create_desc(self):
        return self._new("desc")

    def _mdl_destroy_desc(self, desc):
        return self._drop(desc, "desc")

    def _mdl_get_desc(self, desc, model):
        if self.live.get(desc) != "desc" or self.live.get(model) != "model":
            return ACL_ERROR_INVALID_PARAM
        self.desc_model = self.models[model].spec
        return 0

    def _io(self, kind: str) -> list[Io]:
        return self.desc_model.inputs if kind == "input" else self.desc_model.outputs

    def _mdl_get_num_inputs(self, desc):
        return len(self._io("input"))

    def _mdl_get_num_outputs(self, desc):
        return len(self._io("output"))

    def _mdl_get_input_size_by_index(self, desc, index):
        return self._io("input")[index].size

    def _mdl_get_output_size_by_index(self, desc, index):
        return self._io("output")[index].size

    def _mdl_get_input_name_by_index(self, desc, index):
        return self._io("input")[index].name

    def _mdl_get_output_name_by_index(self, desc, index):
        return self._io("output")[index].name

    def _mdl_get_input_data_type(self, desc, index):
        return self._io("input")[index].dtype

    def _mdl_get_output_data_type(self, desc, index):
        return self._io("output")[index].dtype

    def _dims(self, io: Io):
        return {"name": io.name, "dimCount": len(io.dims), "dims": list(io.dims)}, 0

    def _mdl_get_input_dims(self, desc, index):
        return self._dims(self._io("input")[index])

    def _mdl_get_output_dims(self, desc, index):
        return self._dims(self._io("output")[index])

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
            return ACL_ERROR_INVALID_PARAM
        state = self.models[model]
        if self.current != state.context:
            return ACL_ERROR_INVALID_PARAM  # load and execute must share a context
        spec = state.spec
        ins, outs = self.datasets[inputs], self.datasets[outputs]
        if len(ins) != len(spec.inputs) or len(outs) != len(spec.outputs):
            return ACL_ERROR_INVALID_PARAM
        with self._lock:
            if state.running:
                self.violations.append("two executions of one model at once")
            state.running = True
        try:
            time.sleep(self.execute_seconds)
            feeds = {}
            for io, handle in zip(spec.inputs, ins, strict=True):
                ptr, size = self.buffers[handle]
                if size != io.size or not self._is_device(ptr, size):
                    return ACL_ERROR_INVALID_PARAM
                if self.device_of(ptr, size) != state.device:
                    self.violations.append(f"execute: input {io.name} on device {self.device_of(ptr, size)}, "
                                           f"model on device {state.device}")  # fmt: skip
                    return ACL_ERROR_INVALID_PARAM
                feeds[io.name] = np.frombuffer(ctypes.string_at(ptr, size), NUMPY_OF_ACL[io.dtype]).reshape(io.dims)
            results = spec.fn(feeds)
            for io, handle, value in zip(spec.outputs, outs, results, strict=True):
                ptr, size = self.buffers[handle]
                data = np.ascontiguousarray(value, dtype=NUMPY_OF_ACL[io.dtype]).tobytes()
                if size != io.size or len(data) != size or not self._is_device(ptr, size):
                    return ACL_ERROR_INVALID_PARAM
                if self.device_of(ptr, size) != state.device:
                    self.violations.append(f"execute: output {io.name} on device {self.device_of(ptr, size)}, "
                                           f"model on device {state.device}")  # fmt: skip
                    return ACL_ERROR_INVALID_PARAM
                ctypes.memmove(ptr, data, size)
        finally:
            state.running = False
        return 0


FAKE_ATC = """\
out=""; model=""; host_os=""; host_cpu=""
for arg in "$@"; do
  case "$arg" in
    --output=*) out="${arg#--output=}" ;;
    --model=*) model="${arg#--model=}" ;;
    --host_env_os=*) host_os="${arg#--host_env_os=}" ;;
    --host_env_cpu=*) host_cpu="${arg#--host_env_cpu=}" ;;
  esac
done
echo "ATC start working now, please wait for a moment."
echo "args: $*"
echo "warning line on stderr" >&2
name="$out.om"
if [ -n "$host_os" ]; then name="${out}_${host_os}_${host_cpu}.om"; fi
if [ -f "$model" ]; then cat "$model" > "$name"; else printf 'om' > "$name"; fi
echo "ATC run success, welcome to the next use."
"""

FAKE_ATC_ALWAYS_SUFFIX = FAKE_ATC.replace('name="$out.om"', 'name="${out}_linux_aarch64.om"')


def install(monkeypatch, bin_dir, soc_name: str = "Ascend910B4") -> FakeAcl:
    """The fake `atc` on PATH and the stand-in pyACL as `acl` (no torch_npu) for one test; the
    om session's process state reset. Returns the stand-in, to count calls and read violations."""
    import os
    import stat
    import sys
    from pathlib import Path

    from ltx_ascend.runtime import om_session

    atc = Path(bin_dir) / "atc"
    atc.parent.mkdir(parents=True, exist_ok=True)
    atc.write_text("#!/bin/sh\n" + FAKE_ATC)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{atc.parent}{os.pathsep}{os.defpath}")
    fake = FakeAcl(soc_name=soc_name)
    monkeypatch.setitem(sys.modules, "acl", fake.module)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(om_session, "_PROCESS", om_session._AclProcess())
    return fake
