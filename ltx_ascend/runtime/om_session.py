"""CANN `.om` engine session over pyACL (the `acl` module that ships with CANN).

Written against the documented pyACL API (CANN "Application Development (Python)": acl.init/finalize,
acl.rt context/stream/memory calls, acl.mdl model and description calls, acl.create_data_buffer /
acl.update_data_buffer, the aclDataType table). No Ascend hardware was available where it was written:
the contract tests drive it through a stand-in `acl` that follows those documents, quirks included.

Load, once per session: if torch_npu drives the device, have it initialise first (it owns ACL then);
`acl.init` (once per process, shared); remember the thread's current context (torch_npu's); set the
device, create this session's context and stream, load the model there, read its description and check
every input and output's name, data type and dims against the manifest; then give the thread its
context back. Inputs are matched by name, so two equal-shaped weights the .om orders differently are
still fed right, and a bf16/fp16 mix-up (both 2 bytes) is refused at load.

Run: NPU tensors on this device are bound as they are (`acl.update_data_buffer` on their `data_ptr`,
no copy: a DiT block's 0.77 GB of weights is never copied per call); host tensors go through one
staging buffer per input, allocated at first need. Outputs are torch tensors allocated once at load
and bound the same way when torch_npu is usable, else device buffers copied to host after each run.
One lock per loaded model serialises runs; the session's context is current only inside a run.

Every pyACL call returns a status code (0 = ACL_SUCCESS); any other value raises a RuntimeError naming
the call and the code. `close()` releases everything in reverse order of creation, in the session's
context, then restores the caller's; `acl.finalize` runs only when this module initialised ACL and
torch_npu is not loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ltx_ascend.backends import OpenOptions
from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as devices
from ltx_ascend.runtime.session import Session, TensorSpec, check_feeds

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002  # aclInit already called in this process (e.g. by torch_npu)
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3

# aclDataType (pyACL reference, "aclDataType"): enum value -> manifest dtype name.
ACL_DTYPES: dict[int, str] = {
    0: "float32",  # ACL_FLOAT
    1: "float16",  # ACL_FLOAT16
    2: "int8",  # ACL_INT8
    3: "int32",  # ACL_INT32
    4: "uint8",  # ACL_UINT8
    9: "int64",  # ACL_INT64
    11: "float64",  # ACL_DOUBLE
    12: "bool",  # ACL_BOOL
    27: "bfloat16",  # ACL_BF16
}

PYACL_HINT = (
    "pyACL comes with CANN: source /usr/local/Ascend/ascend-toolkit/set_env.sh (or your CANN install's "
    "set_env.sh), or use --backend ort / eager"
)


def import_acl() -> ModuleType:
    """The pyACL module, or a one-line UserError saying where it comes from."""
    try:
        return importlib.import_module("acl")
    except ImportError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot import pyACL's `acl` module ({detail}); {PYACL_HINT}") from None


def memcpy_kind(src: str, dst: str) -> int:
    """pyACL memcpy kind from device type `src` to device type `dst`: "npu" is device memory, "cpu" host."""
    for kind in (src, dst):
        if kind not in ("cpu", "npu"):
            raise UserError(f"the om backend takes cpu or npu tensors, not {kind} ones")
    if src == "npu" and dst == "npu":
        return ACL_MEMCPY_DEVICE_TO_DEVICE
    if src == "cpu" and dst == "cpu":
        raise ValueError("host-to-host copies do not go through pyACL")
    return ACL_MEMCPY_HOST_TO_DEVICE if dst == "npu" else ACL_MEMCPY_DEVICE_TO_HOST


def on_device(tensor: torch.Tensor, device_id: int) -> bool:
    """Whether `tensor` is device memory of NPU `device_id`, so a data buffer may point at it."""
    return tensor.device.type == "npu" and (tensor.device.index or 0) == device_id


def binds_outputs(device: torch.device) -> bool:
    """Whether output tensors live on the NPU (bound directly) rather than on the host (copied back)."""
    return device.type == "npu"


class _AclProcess:
    """`acl.init` / `acl.finalize` are per process: initialise for the first session, finalise after the
    last one only if we initialised, and never while torch_npu is loaded (it owns ACL then, and calls
    aclFinalize itself at exit). `created` are the contexts our sessions made, `live` those not destroyed."""

    def __init__(self) -> None:
        self.users = 0
        self.owner = False
        self.created: set[int] = set()
        self.live: set[int] = set()


_PROCESS = _AclProcess()


@dataclass
class _Tensor:
    """One model input or output: its spec, model index and byte size, and its data buffer."""

    spec: TensorSpec
    index: int
    size: int
    buffer: int | None = None  # aclDataBuffer handle
    staging: int | None = None  # device memory we own (host feeds, host outputs), allocated once
    bound: int | None = None  # the address the data buffer points at now


class OmSession(Session):
    """One `.om` model on one Ascend device."""

    backend = "om"

    def __init__(
        self,
        path: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device_id: int = 0,
        *,
        torch_device: torch.device | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        self.name = path.stem
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.device_id = device_id
        if not path.is_file():
            raise UserError(f"{path}: no such .om file; run ltx-compile --target om on the artifact")
        for spec in (*self.inputs, *self.outputs):
            if spec.shape is None or spec.dtype is None:
                raise UserError(f"{self.name}: {spec.name} has no static shape/dtype in the manifest")
        if torch_device is None:
            npu = "npu" in devices.available_backends()
            torch_device = torch.device("npu", device_id) if npu else torch.device("cpu")
        self.torch_device = torch_device
        self._acl = import_acl()
        self._lock = threading.Lock()  # one run at a time per loaded model
        self._stack: list[tuple[str, tuple[Any, ...]]] = []  # cleanup calls, run in reverse by close()
        self._context: int | None = None
        self._caller: int | None = None  # the thread's context when the session was made
        self._closed = False
        self._broken: str | None = None
        self._in: list[_Tensor] = []
        self._out: list[_Tensor] = []
        self._results: dict[str, torch.Tensor] = {}
        try:
            self._load(path)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ pyACL calls

    def _fn(self, name: str) -> Any:
        obj: Any = self._acl
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def _ret(self, name: str, *args: Any) -> Any:
        """Call `acl.<name>`, whose result is `ret` or `(value..., ret)`; return the value(s)."""
        result = self._fn(name)(*args)
        values: tuple[Any, ...] = ()
        if isinstance(result, tuple):
            *head, ret = result
            values = tuple(head)
        else:
            ret = result
        if ret != ACL_SUCCESS:
            raise RuntimeError(f"{self.name}: pyACL acl.{name} failed with error code {ret} (see the CANN log)")
        return values[0] if len(values) == 1 else (values or None)

    def _handle(self, name: str, *args: Any) -> Any:
        """Call `acl.<name>`, which returns a pointer (or count) and no status: 0/None means failure."""
        value = self._fn(name)(*args)
        if not value:
            raise RuntimeError(f"{self.name}: pyACL acl.{name} failed (returned {value!r})")
        return value

    def _current_context(self) -> int | None:
        """The thread's current context (`context, ret = acl.rt.get_context()`), None when it has none."""
        context, ret = self._acl.rt.get_context()
        return context if ret == ACL_SUCCESS and context else None

    def _restore(self, previous: int | None) -> None:
        """Give the thread back `previous`, unless it is one of our contexts that no longer exists."""
        if previous is None or (previous in _PROCESS.created and previous not in _PROCESS.live):
            return
        if previous != self._current_context():
            self._ret("rt.set_context", previous)

    # ------------------------------------------------------------------ load / release

    def _load(self, path: Path) -> None:
        if self.torch_device.type == "npu":
            # torch_npu initialises ACL first and keeps owning it: the other order makes torch_npu's own
            # init fail with 100002 "Repeated initialization" (as reported in BytePioneer-AI/PaddleOCR-NPU#9).
            devices.set_device(self.torch_device)
        ret = self._acl.init()
        if ret not in (ACL_SUCCESS, ACL_ERROR_REPEAT_INITIALIZE):
            raise RuntimeError(f"{self.name}: pyACL acl.init failed with error code {ret} (see the CANN log)")
        if _PROCESS.users == 0:
            _PROCESS.owner = ret == ACL_SUCCESS
        _PROCESS.users += 1
        self._stack.append(("<process>", ()))

        self._ret("rt.set_device", self.device_id)
        self._stack.append(("rt.reset_device", (self.device_id,)))
        # torch_npu's context if it runs on this thread, else the device's default one set_device bound.
        self._caller = caller = self._current_context()
        try:
            self._context = self._ret("rt.create_context", self.device_id)  # also made current
            _PROCESS.created.add(self._context)
            _PROCESS.live.add(self._context)
            self._stack.append(("<context>", (self._context,)))
            self._stream = self._ret("rt.create_stream")
            self._stack.append(("rt.destroy_stream", (self._stream,)))
            self._model_id = self._ret("mdl.load_from_file", str(path))
            self._stack.append(("mdl.unload", (self._model_id,)))
            desc = self._handle("mdl.create_desc")
            self._stack.append(("mdl.destroy_desc", (desc,)))
            self._ret("mdl.get_desc", desc, self._model_id)
            self._in = self._describe(desc, "input", self.inputs)
            self._out = self._describe(desc, "output", self.outputs)
            self._in_dataset = self._handle("mdl.create_dataset")
            self._stack.append(("mdl.destroy_dataset", (self._in_dataset,)))
            self._out_dataset = self._handle("mdl.create_dataset")
            self._stack.append(("mdl.destroy_dataset", (self._out_dataset,)))
        finally:
            self._restore(caller)
        # Outputs: torch tensors allocated once (outside our context: torch_npu allocates in its own),
        # bound directly on the NPU; on the host, device buffers copied back after each run.
        bind = binds_outputs(self.torch_device)
        for t in self._out:
            self._results[t.spec.name] = torch.empty(t.spec.shape, dtype=t.spec.torch_dtype, device=self.torch_device)
        with self._in_context():
            for t in self._out:
                address = self._results[t.spec.name].data_ptr() if bind else self._staging(t)
                self._create_buffer(t, address, self._out_dataset)
        # Input data buffers are created at the first run, pointing at the first feeds.

    def _describe(self, desc: int, kind: str, specs: list[TensorSpec]) -> list[_Tensor]:
        """Check the model's inputs or outputs against the manifest: count, and for each its name (pyACL
        `get_<kind>_name_by_index`), data type (`get_<kind>_data_type`, an aclDataType), dims
        (`get_<kind>_dims` -> ({"name", "dimCount", "dims"}, ret)) and byte size; returned in model order."""
        count = self._fn(f"mdl.get_num_{kind}s")(desc)
        if count != len(specs):
            raise UserError(
                f"{self.path}: the model has {count} {kind}s but the manifest lists {len(specs)}: "
                "recompile it from this artifact"
            )
        by_name = {s.name: s for s in specs}
        found: list[_Tensor] = []
        for index in range(count):
            name = str(self._fn(f"mdl.get_{kind}_name_by_index")(desc, index))
            spec = by_name.get(name)
            if spec is None and kind == "output":
                # ATC may name an ONNX output "<node>:<port>:<tensor>"; outputs keep their order.
                spec = specs[index] if name.split(":")[-1] == specs[index].name else None
            if spec is None:
                raise UserError(
                    f"{self.path}: the model's {kind} {index} is named {name!r}, which the manifest does not list "
                    f"({', '.join(by_name)}): recompile the .om from this artifact"
                )
            code = self._fn(f"mdl.get_{kind}_data_type")(desc, index)
            dtype = ACL_DTYPES.get(code, f"aclDataType {code}")
            if dtype != spec.dtype:
                raise UserError(
                    f"{self.path}: {kind} {name} is {dtype} in the model but {spec.describe()} in the manifest: "
                    "recompile the .om from this artifact with its dtype"
                )
            dims = self._ret(f"mdl.get_{kind}_dims", desc, index)
            shape = tuple(int(d) for d in dims["dims"][: dims.get("dimCount", len(dims["dims"]))])
            if shape != spec.shape:
                got = "x".join(map(str, shape)) or "scalar"
                raise UserError(
                    f"{self.path}: {kind} {name} is {got} in the model but {spec.describe()} in the manifest: "
                    "recompile the .om from this artifact"
                )
            size = self._fn(f"mdl.get_{kind}_size_by_index")(desc, index)
            if size != spec.nbytes:
                raise UserError(
                    f"{self.path}: {kind} {index} is {size} bytes in the model but {spec.describe()} is "
                    f"{spec.nbytes}: recompile the .om from this artifact"
                )
            found.append(_Tensor(spec, index, size))
        return found

    def _staging(self, t: _Tensor) -> int:
        """This tensor's own device buffer, allocated at first need and kept until close."""
        if t.staging is None:
            t.staging = self._ret("rt.malloc", t.size, ACL_MEM_MALLOC_HUGE_FIRST)
            self._stack.append(("rt.free", (t.staging,)))
        return t.staging

    def _create_buffer(self, t: _Tensor, address: int, dataset: int) -> None:
        t.buffer = self._handle("create_data_buffer", address, t.size)
        self._stack.append(("destroy_data_buffer", (t.buffer,)))
        t.bound = address
        self._ret("mdl.add_dataset_buffer", dataset, t.buffer)

    def _release(self) -> None:
        """Undo `_load` in reverse order in the session's context, then give the thread back the context
        it had (never leave it on the destroyed one); every step runs, the first failure is raised after."""
        first: BaseException | None = None
        caller = self._caller
        if self._context is not None:
            try:
                current = self._current_context()
                if current is not None and current != self._context:
                    caller = current
                self._ret("rt.set_context", self._context)
            except RuntimeError as exc:
                first = exc
        while self._stack:
            name, args = self._stack.pop()
            try:
                if name == "<process>":
                    _PROCESS.users -= 1
                    if _PROCESS.users == 0 and _PROCESS.owner and not devices.torch_npu_loaded():
                        _PROCESS.owner = False
                        self._ret("finalize")
                elif name == "<context>":
                    _PROCESS.live.discard(args[0])
                    try:
                        self._ret("rt.destroy_context", *args)
                    finally:
                        self._restore(caller)  # never leave the thread on the destroyed context
                else:
                    self._ret(name, *args)
            except RuntimeError as exc:
                first = first or exc
        self._context = None
        if first is not None:
            raise first

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._results = {}
            self._release()

    # ------------------------------------------------------------------ run

    @contextlib.contextmanager
    def _in_context(self) -> Iterator[None]:
        """Make this session's context current for the thread (model load and execute must share it),
        and give the thread back whatever context it had (torch_npu's) afterwards (pyACL set_context /
        get_context: a thread keeps the context set last)."""
        previous = self._current_context()
        if previous != self._context:
            self._ret("rt.set_context", self._context)
        try:
            yield
        finally:
            if previous != self._context:
                self._restore(previous)

    def _aliases_output(self, address: int, size: int) -> bool:
        """Whether [address, address+size) overlaps an output the model writes while reading inputs."""
        return any(t.bound is not None and address < t.bound + t.size and t.bound < address + size for t in self._out)

    def _bind_inputs(self, tensors: dict[str, torch.Tensor]) -> None:
        first = self._in[0].buffer is None if self._in else False
        for t in self._in:
            tensor = tensors[t.spec.name]
            address = tensor.data_ptr()
            if on_device(tensor, self.device_id) and not self._aliases_output(address, t.size):
                target = address  # bound as it is: no copy
            else:
                target = self._staging(t)
                kind = memcpy_kind("npu" if on_device(tensor, self.device_id) else "cpu", "npu")
                self._ret("rt.memcpy", target, t.size, address, t.size, kind)
            if first:
                self._create_buffer(t, target, self._in_dataset)
            elif t.bound != target:
                self._ret("update_data_buffer", t.buffer, target, t.size)
                t.bound = target

    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        """Run the model. With `copy_outputs=False` the returned tensors are this session's output
        tensors, overwritten by the next run: clone any you keep across calls."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: session is closed")
            if self._broken:
                raise RuntimeError(f"{self.name}: unusable after an earlier failure ({self._broken}); reopen it")
            check_feeds(self.inputs, feeds, self.name)
            tensors = {s.name: feeds[s.name].contiguous() for s in self.inputs}
            # The model runs on our stream, not torch_npu's: wait for the work that wrote the feeds, and
            # for any still reading the bound outputs of the previous run (clones are asynchronous).
            pending = {t.device for t in tensors.values() if t.device.type == "npu"}
            if binds_outputs(self.torch_device):
                pending.add(self.torch_device)
            for d in pending:
                devices.synchronize(d)
            with self._in_context():
                try:
                    self._bind_inputs(tensors)
                except RuntimeError as exc:
                    if self._in and any(t.buffer is None for t in self._in):
                        self._broken = str(exc)
                    raise
                self._ret("mdl.execute_async", self._model_id, self._in_dataset, self._out_dataset, self._stream)
                self._ret("rt.synchronize_stream", self._stream)
                if not binds_outputs(self.torch_device):
                    for t in self._out:
                        result = self._results[t.spec.name]
                        kind = memcpy_kind("npu", result.device.type)
                        self._ret("rt.memcpy", result.data_ptr(), t.size, t.staging, t.size, kind)
            if copy_outputs:
                return {n: t.clone() for n, t in self._results.items()}
            return dict(self._results)


def open_om(path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], options: OpenOptions) -> OmSession:
    """The om record's session factory (ltx_ascend.backends): one .om on the options' NPU index."""
    return OmSession(path, inputs, outputs, device_id=options.device_id)
