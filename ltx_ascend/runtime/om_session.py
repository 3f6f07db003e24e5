"""CANN `.om` engine session over pyACL (the `acl` module that ships with CANN).

At load, once per session: `acl.init` (once per process, shared), set the device, create one context
and one stream, load the model in that context, read its description, and allocate one device buffer
per input and output (sizes from the model description, checked against the manifest). `run` copies
feeds into the input buffers (device-to-device from NPU torch tensors, host-to-device from CPU ones),
executes on the session's stream in the session's context, and copies the outputs into torch tensors
allocated once at load: on the NPU when torch_npu is usable (device-to-device), else on the CPU.

Every pyACL call returns a status code (0 = ACL_SUCCESS); any other value raises a RuntimeError naming
the call and the code. `close()` releases everything in the reverse order of creation. Written against
the documented pyACL API (CANN application development guide, Python); no Ascend hardware was available
where it was written, and the contract tests drive it through a stand-in `acl` module.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ltx_ascend.errors import UserError
from ltx_ascend.runtime import device as devices
from ltx_ascend.runtime.session import Session, TensorSpec, check_feeds

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002  # aclInit already called in this process (e.g. by torch_npu)
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3

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


class _AclProcess:
    """`acl.init` / `acl.finalize` are per process: initialise for the first session, finalise after the
    last one, and never finalise an ACL someone else (torch_npu) initialised."""

    def __init__(self) -> None:
        self.users = 0
        self.owner = False


_PROCESS = _AclProcess()


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
        self._stack: list[tuple[str, tuple[Any, ...]]] = []  # cleanup calls, run in reverse by close()
        self._context: int | None = None
        self._closed = False
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

    # ------------------------------------------------------------------ load / release

    def _load(self, path: Path) -> None:
        ret = self._acl.init()
        if ret not in (ACL_SUCCESS, ACL_ERROR_REPEAT_INITIALIZE):
            raise RuntimeError(f"{self.name}: pyACL acl.init failed with error code {ret} (see the CANN log)")
        if _PROCESS.users == 0:
            _PROCESS.owner = ret == ACL_SUCCESS
        _PROCESS.users += 1
        self._stack.append(("<process>", ()))

        self._ret("rt.set_device", self.device_id)
        self._stack.append(("rt.reset_device", (self.device_id,)))
        self._context = self._ret("rt.create_context", self.device_id)  # also made current
        self._stack.append(("rt.destroy_context", (self._context,)))
        self._stream = self._ret("rt.create_stream")
        self._stack.append(("rt.destroy_stream", (self._stream,)))
        self._model_id = self._ret("mdl.load_from_file", str(path))
        self._stack.append(("mdl.unload", (self._model_id,)))
        desc = self._handle("mdl.create_desc")
        self._stack.append(("mdl.destroy_desc", (desc,)))
        self._ret("mdl.get_desc", desc, self._model_id)

        self._in_dataset, self._in_buffers = self._allocate(desc, "input", self.inputs)
        self._out_dataset, self._out_buffers = self._allocate(desc, "output", self.outputs)
        self._results = {
            s.name: torch.empty(s.shape, dtype=s.torch_dtype, device=self.torch_device) for s in self.outputs
        }

    def _allocate(self, desc: int, kind: str, specs: list[TensorSpec]) -> tuple[int, list[tuple[int, int]]]:
        """One device buffer per tensor, sized by the model description, in one dataset."""
        count = self._fn(f"mdl.get_num_{kind}s")(desc)
        if count != len(specs):
            raise UserError(
                f"{self.path}: the model has {count} {kind}s but the manifest lists {len(specs)}: "
                "recompile it from this artifact"
            )
        dataset = self._handle("mdl.create_dataset")
        self._stack.append(("mdl.destroy_dataset", (dataset,)))
        buffers = []
        for index, spec in enumerate(specs):
            size = self._fn(f"mdl.get_{kind}_size_by_index")(desc, index)
            if size != spec.nbytes:
                raise UserError(
                    f"{self.path}: {kind} {index} is {size} bytes in the model but {spec.describe()} is "
                    f"{spec.nbytes}: recompile the .om from this artifact"
                )
            ptr = self._ret("rt.malloc", size, ACL_MEM_MALLOC_HUGE_FIRST)
            self._stack.append(("rt.free", (ptr,)))
            data = self._handle("create_data_buffer", ptr, size)
            self._stack.append(("destroy_data_buffer", (data,)))
            self._ret("mdl.add_dataset_buffer", dataset, data)
            buffers.append((ptr, size))
        return dataset, buffers

    def _release(self) -> None:
        """Undo `_load` in reverse order; every step runs, the first failure is raised after."""
        first: BaseException | None = None
        if self._context is not None:
            try:
                self._ret("rt.set_context", self._context)
            except RuntimeError as exc:
                first = exc
        while self._stack:
            name, args = self._stack.pop()
            try:
                if name == "<process>":
                    _PROCESS.users -= 1
                    if _PROCESS.users == 0 and _PROCESS.owner:
                        _PROCESS.owner = False
                        self._ret("finalize")
                else:
                    self._ret(name, *args)
            except RuntimeError as exc:
                first = first or exc
        self._context = None
        if first is not None:
            raise first

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._results = {}
        self._release()

    # ------------------------------------------------------------------ run

    @contextlib.contextmanager
    def _in_context(self) -> Iterator[None]:
        """Make this session's context current for the thread (model load and execute must share it),
        and give the thread back whatever context it had (torch_npu's) afterwards."""
        previous, ret = self._acl.rt.get_context()  # fails when the thread has none: nothing to restore
        switch = ret != ACL_SUCCESS or previous != self._context
        if switch:
            self._ret("rt.set_context", self._context)
        try:
            yield
        finally:
            if switch and ret == ACL_SUCCESS and previous:
                self._ret("rt.set_context", previous)

    def run(self, feeds: Mapping[str, torch.Tensor], *, copy_outputs: bool = True) -> dict[str, torch.Tensor]:
        """Run the model. With `copy_outputs=False` the returned tensors are this session's output
        tensors, overwritten by the next run: clone any you keep across calls."""
        if self._closed:
            raise RuntimeError(f"{self.name}: session is closed")
        check_feeds(self.inputs, feeds, self.name)
        tensors = [feeds[s.name].contiguous() for s in self.inputs]
        for d in {t.device for t in tensors if t.device.type == "npu"}:
            devices.synchronize(d)  # acl.rt.memcpy does not wait for torch_npu's stream
        with self._in_context():
            for tensor, (ptr, size) in zip(tensors, self._in_buffers, strict=True):
                kind = memcpy_kind(tensor.device.type, "npu")
                self._ret("rt.memcpy", ptr, size, tensor.data_ptr(), size, kind)
            self._ret("mdl.execute_async", self._model_id, self._in_dataset, self._out_dataset, self._stream)
            self._ret("rt.synchronize_stream", self._stream)
            for result, (ptr, size) in zip(self._results.values(), self._out_buffers, strict=True):
                kind = memcpy_kind("npu", result.device.type)
                self._ret("rt.memcpy", result.data_ptr(), size, ptr, size, kind)
        if copy_outputs:
            return {n: t.clone() for n, t in self._results.items()}
        return dict(self._results)
