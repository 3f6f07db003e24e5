"""Starts the replicas of this host, restarts one that dies, and gives its job back to the queue.

A replica is one process per device of its group (see replica.py). The supervisor reads each group
leader's state lines, watches every process, and when one stops unasked (SIGKILL, a device error, a
crash) it stops the rest of that group, queues its job again through the store (`requeue_worker`,
with a note saying why), and starts the group again under a new worker name after a short backoff.
A replica that refuses to serve (exit 2: settings or artifacts that do not match) is not restarted:
it stays out of the pool, and says why in one line. Independently, every few seconds it requeues
jobs whose lease expired (a worker on another host that stopped renewing)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ltx_ascend.errors import UserError
from ltx_ascend.serve.replica import EXIT_REFUSED
from ltx_ascend.serve.telemetry import Telemetry

log = logging.getLogger(__name__)

VISIBLE_DEVICES = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}


@dataclass(frozen=True)
class Group:
    """One replica's devices: a device kind and the indices it owns, and the layout over them."""

    kind: str  # cpu | npu | cuda
    indices: tuple[int, ...] = ()
    parallel: str | None = None

    @property
    def size(self) -> int:
        return max(1, len(self.indices))

    def describe(self) -> str:
        if self.kind == "cpu" or not self.indices:
            return self.kind if self.size == 1 else f"{self.kind} x{self.size} ({self.parallel})"
        where = ",".join(str(i) for i in self.indices)
        return f"{self.kind}:{where}" + (f" ({self.parallel})" if self.parallel else "")


def plan_groups(device: str | None, replicas: int | None, device_groups: str | None) -> list[Group]:
    """--replicas N (one device each) or --device-groups GxLAYOUT (G groups of cfg x ulysses devices)."""
    from ltx_ascend.runtime.distributed import Layout

    text = (device or "cpu").strip().lower()
    kind, _, index = text.partition(":")
    if kind == "auto":
        from ltx_ascend.runtime.device import available_backends

        kind = available_backends()[0]
    if kind not in ("cpu", "npu", "cuda"):
        raise UserError(f"--device {device}: ltx-serve places replicas on cpu, npu or cuda devices")
    if device_groups is not None:
        if replicas is not None:
            raise UserError("--replicas and --device-groups: pass one (--device-groups 4xcfg=2 is 4 replicas)")
        count, sep, spec = device_groups.partition("x")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise UserError(
                f"--device-groups {device_groups}: expected GROUPSxLAYOUT, e.g. 4xcfg=2 or 2xcfg=2,ulysses=2"
            )
        layout = Layout.parse(spec)
        # CPU groups are gloo ranks on one host's cores: what the tests run the multi-rank replica on
        if index:
            raise UserError(f"--device-groups with --device {device}: pass the kind alone (--device {kind})")
        n = layout.size
        return [
            Group(kind, tuple(range(g * n, (g + 1) * n)), str(layout) if n > 1 else None) for g in range(int(count))
        ]
    count = 1 if replicas is None else replicas
    if count < 1:
        raise UserError(f"--replicas {count}: must be >= 1")
    if kind == "cpu":
        return [Group("cpu") for _ in range(count)]
    if index:
        if count > 1:
            raise UserError(
                f"--replicas {count} with --device {device}: pass --device {kind} (replica i takes {kind}:i)"
            )
        return [Group(kind, (int(index),))]
    return [Group(kind, (i,)) for i in range(count)]


@dataclass
class Slot:
    """One replica and its current incarnation."""

    index: int
    group: Group
    generation: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    state: str = "starting"
    job: str | None = None
    loaded_once: bool = False
    stopping: bool = False
    restart_at: float | None = None
    backoff: float = 1.0
    started_at: float = 0.0
    reason: str | None = None
    settled: bool = False  # its exit was handled and it is not coming back (stopped, or refused)

    @property
    def label(self) -> str:
        return f"r{self.index}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(
        self,
        *,
        argv: list[str],
        pipelines: tuple[str, ...],
        groups: list[Group],
        store,
        store_url: str,
        outputs: str,
        worker_id: str,
        lease_s: float,
        telemetry: Telemetry,
        poll_s: float = 0.5,
    ) -> None:
        self.argv, self.pipelines, self.store, self.store_url = argv, pipelines, store, store_url
        self.outputs, self.worker_id, self.lease_s, self.poll_s = outputs, worker_id, lease_s, poll_s
        self.telemetry = telemetry
        self.slots = [Slot(i, g) for i, g in enumerate(groups)]
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def name(self, slot: Slot) -> str:
        return f"{self.worker_id}-{slot.label}.{slot.generation}"

    # -- processes --------------------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        group = slot.group
        spec = {
            "argv": self.argv, "name": self.name(slot), "replica": slot.label, "pipelines": list(self.pipelines),
            "store_url": self.store_url, "outputs": self.outputs, "lease_s": self.lease_s, "poll_s": self.poll_s,
            "device": None if group.kind == "cpu" else (f"{group.kind}:0" if group.size == 1 else group.kind),
            "parallel": group.parallel,
        }  # fmt: skip
        env = {**os.environ, "TQDM_DISABLE": "1"}  # a server's log gets no progress bars (the job has progress)
        if group.kind in VISIBLE_DEVICES and group.indices:
            env[VISIBLE_DEVICES[group.kind]] = ",".join(str(i) for i in group.indices)
        port = _free_port() if group.size > 1 else None
        procs = []
        for rank in range(group.size):
            if group.size > 1:
                env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(group.size),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-m", "ltx_ascend.serve.replica"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                text=True,
                start_new_session=False,
            )
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
            procs.append(proc)
        slot.procs, slot.state, slot.job, slot.started_at, slot.stopping = (
            procs,
            "starting",
            None,
            time.monotonic(),
            False,
        )
        self.telemetry.set_replica(slot.label, "starting")
        log.info("replica %s starting as %s on %s (pid %s)", slot.label, spec["name"], group.describe(),
                 ",".join(str(p.pid) for p in procs))  # fmt: skip
        thread = threading.Thread(target=self._read, args=(slot, procs[0]), name=f"{slot.label}-reader", daemon=True)
        thread.start()

    def _read(self, slot: Slot, proc: subprocess.Popen) -> None:
        """The leader's state lines."""
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if slot.procs and slot.procs[0] is not proc:
                    return  # an old incarnation's last words
                if "state" in message:
                    slot.state = message["state"]
                    slot.job = message.get("job")
                    if slot.state == "ready":
                        slot.loaded_once = True
                    if slot.state == "refused":
                        slot.reason = message.get("reason")
                    self.telemetry.set_replica(slot.label, slot.state)
                if "timings" in message:
                    self.telemetry.observe_stages(message["timings"])
                if "outcome" in message and message.get("seconds") is not None:
                    self.telemetry.job_seconds.labels(message["outcome"]).observe(message["seconds"])

    def _exited(self, slot: Slot) -> tuple[int, int] | None:
        """(rank, exit code) of the first process of the group that stopped, or None."""
        for rank, proc in enumerate(slot.procs):
            code = proc.poll()
            if code is not None:
                return rank, code
        return None

    def _kill_group(self, slot: Slot, sig: int = signal.SIGKILL) -> None:
        for proc in slot.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        for proc in slot.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _check(self, slot: Slot) -> None:
        now = time.monotonic()
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                slot.restart_at = None
                slot.generation += 1
                self.telemetry.replica_restarts.labels(slot.label).inc()
                self._spawn(slot)
            return
        if not slot.procs or slot.settled:
            return
        exited = self._exited(slot)
        if exited is None:
            if now - slot.started_at > 60:
                slot.backoff = 1.0  # stable for a minute: the next restart is quick again
            return
        rank, code = exited
        name = self.name(slot)
        self._kill_group(slot)
        if slot.stopping:
            slot.state, slot.settled = "stopped", True
            self.telemetry.set_replica(slot.label, "stopped")
            return
        if code == EXIT_REFUSED:
            slot.state, slot.settled = "refused", True
            self.telemetry.set_replica(slot.label, "refused")
            log.error("replica %s refused to serve and stays out of the pool: %s", slot.label,
                      slot.reason or f"exit code {code}, see its lines above")  # fmt: skip
            self._requeue(name, "refused to serve")
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        where = "" if slot.group.size == 1 else f" (rank {rank})"
        log.warning(
            "replica %s (%s)%s stopped with %s; restarting in %.0f s", slot.label, name, where, how, slot.backoff
        )
        self._requeue(name, f"stopped with {how} (replica {slot.label} restarted)")
        slot.state = "restarting"
        self.telemetry.set_replica(slot.label, "restarting")
        slot.restart_at = now + slot.backoff
        slot.backoff = min(30.0, slot.backoff * 2)

    def _requeue(self, worker: str, reason: str) -> None:
        try:
            self.store.requeue_worker(worker, reason)  # the store logs each job it gives back
        except Exception:  # the store is down: the lease runs out and requeue_expired gives it back
            log.warning("could not requeue the jobs of %s now; their lease will expire", worker, exc_info=True)

    def _watch(self) -> None:
        last_reap = 0.0
        while not self._stop.wait(0.2):
            with self.lock:
                for slot in self.slots:
                    self._check(slot)
            if time.monotonic() - last_reap > min(5.0, self.lease_s / 3):
                last_reap = time.monotonic()
                reap(self.store)

    # -- lifetime ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            for slot in self.slots:
                self._spawn(slot)
        thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: each replica finishes claiming nothing more and exits; a job it was running is queued
        again (under its name) so the next start runs it."""
        self._stop.set()
        with self.lock:
            for slot in self.slots:
                slot.stopping = True
                for proc in slot.procs:
                    if proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.terminate()
            deadline = time.monotonic() + timeout
            for slot in self.slots:
                for proc in slot.procs:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                if slot.job is not None or any(p.poll() is None for p in slot.procs):
                    self._kill_group(slot)
                    self._requeue(self.name(slot), "stopped with the server")

    def all_refused(self) -> bool:
        with self.lock:
            return all(slot.settled and slot.state == "refused" for slot in self.slots)

    def health(self) -> tuple[bool, dict]:
        with self.lock:
            states = {
                slot.label: {
                    "state": slot.state, "job": slot.job, "worker": self.name(slot), "device": slot.group.describe(),
                    "pids": [p.pid for p in slot.procs], "restarts": slot.generation,
                }
                for slot in self.slots
            }  # fmt: skip
            loaded = all(slot.loaded_once or slot.state == "refused" for slot in self.slots)
            serving = any(slot.state in ("ready", "busy", "restarting") for slot in self.slots)
        return loaded and serving, {"replicas": states}


def reap(store) -> None:
    """Jobs whose lease ran out (their worker stopped renewing): queued again."""
    try:
        store.requeue_expired()  # the store logs each job it gives back
    except Exception:
        log.warning("requeue_expired failed (job store unreachable?)", exc_info=True)
