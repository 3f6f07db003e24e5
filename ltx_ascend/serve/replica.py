"""One replica: a process holding one resident Engine on its device group, taking jobs one at a time.

The supervisor starts it as `python -m ltx_ascend.serve.replica` with its spec as one JSON line on
stdin, and reads its state from stdout (one JSON line per change: starting, ready, busy, idle, and
each job's stage timings). Library and job logs go to stderr.

A group of several devices is several processes (ranks) under torch.distributed, as torchrun would
start them: rank 0 claims the jobs and broadcasts each to the other ranks, every rank calls
`generate`, rank 0 alone publishes. A rank that dies leaves the others in a collective; the
supervisor then stops the whole group and starts it again, and the job is queued again.

Lifecycle of a job here: claim (lease) -> generate, with every step's progress stored (which renews
the lease) and the cancel flag read between steps; a heartbeat thread renews the lease during long
steps -> the mp4 written to a private temp file -> put under a fresh output key -> `complete`, which
the store fences: if our lease was lost and the job taken over, complete() is refused and our file
is deleted, so a job is published once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ltx_ascend.errors import EXIT_USAGE, UserError

log = logging.getLogger("ltx_ascend.serve.replica")

EXIT_REFUSED = EXIT_USAGE  # the replica cannot serve (bad settings, a store that does not match): not restarted


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its supervisor dies (even by SIGKILL): a replica never
    outlives the server and keeps a lease nobody would release."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Reporter:
    """State lines to the supervisor (stdout is the pipe it reads)."""

    def __init__(self, stream) -> None:
        self.stream, self.lock = stream, threading.Lock()

    def send(self, **message: Any) -> None:
        with self.lock:
            try:
                self.stream.write(json.dumps(message) + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):  # the supervisor is gone: PDEATHSIG ends us next
                pass


class Heartbeat:
    """Renews the job's lease every lease/3 s while generate runs (a step can outlast a lease);
    `lost` turns True if the store says another worker holds it now."""

    def __init__(self, open_store, job_id: str, worker: str, lease_s: float, attempt: int) -> None:
        self.job_id, self.worker, self.lease_s, self.attempt = job_id, worker, lease_s, attempt
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._open = open_store
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        store = self._open()
        try:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    if not store.renew(self.job_id, self.worker, self.lease_s, attempt=self.attempt):
                        log.warning("job %s: lease lost by %s; stopping it", self.job_id, self.worker)
                        self.lost.set()
                        return
                except Exception:  # a database outage: the store retries; the lease may still hold
                    log.warning("job %s: lease renewal failed; retrying", self.job_id, exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                store.close()


class Replica:
    def __init__(self, spec: dict, reporter: Reporter) -> None:
        from ltx_ascend.serve.jobs import open_store
        from ltx_ascend.serve.outputs import open_outputs

        self.spec, self.reporter = spec, reporter
        self.name: str = spec["name"]
        self.lease_s: float = float(spec["lease_s"])
        self.poll_s: float = float(spec.get("poll_s", 0.5))
        self.pipelines: tuple[str, ...] = tuple(spec["pipelines"])
        self._open_store = lambda: open_store(spec["store_url"])
        self.store = self._open_store()
        self.outputs = open_outputs(spec["outputs"])
        self.scratch = Path(tempfile.mkdtemp(prefix=f"ltx-serve-{spec['replica']}-"))
        self.engine = None
        self.group_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.control = None  # the gloo group rank 0 sends jobs and cancel decisions over

    def load(self, settings, shapes) -> None:
        from ltx_ascend.api import Engine

        self.reporter.send(state="starting")
        self.engine = Engine(settings)
        load_and_check(self.engine, shapes)
        self.reporter.send(state="ready")
        log.info("replica %s ready (%s)", self.name, ", ".join(self.pipelines))

    # -- the leader's loop ------------------------------------------------------------------------------------
    def serve(self, should_stop: threading.Event) -> None:
        while not should_stop.is_set():
            try:
                job = self.store.claim(self.name, self.lease_s, self.pipelines)
            except Exception:
                log.warning("replica %s: claim failed (job store unreachable?); retrying", self.name, exc_info=True)
                should_stop.wait(max(self.poll_s, 1.0))
                continue
            if job is None:
                self._broadcast(None)
                should_stop.wait(self.poll_s)
                continue
            self.run_job(job)
        self._broadcast("stop")

    def join_group(self) -> None:
        """Several ranks: a gloo process group for the control messages (the Engine may have opened the
        default group on the device's own backend already)."""
        if self.group_size == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        self.control = dist.new_group(backend="gloo")

    def _broadcast(self, message):
        """Rank 0 -> the other ranks of the group (no-op for a one-device group)."""
        if self.control is None:
            return message
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def follow(self) -> None:
        """Ranks > 0: run whatever rank 0 broadcasts until it says stop."""
        while True:
            message = self._broadcast(None)
            if message == "stop":
                return
            if message is not None:
                from ltx_ascend.api import Cancelled

                with contextlib.suppress(Cancelled, UserError):  # rank 0 reports the job's outcome
                    self.engine.generate(self._request(message), cancelled=lambda: bool(self._broadcast(None)))

    # -- one job ----------------------------------------------------------------------------------------------
    def _request(self, job_params: dict):
        from ltx_ascend.serve.service import request_from_params

        extra = dict(job_params.get("extra") or {})
        source = extra.pop("source_output", None)
        if source is not None:  # a remix: the source video, read back from the output store to a file of ours
            video = self.scratch / "remix-source.mp4"
            video.write_bytes(self.outputs.read_bytes(source))
            extra["video_path"] = str(video)
        return request_from_params(job_params, self.outputs, extra=extra)

    def run_job(self, job) -> None:
        from ltx_ascend.api import Cancelled

        started = time.monotonic()
        self.reporter.send(state="busy", job=job.id)
        outcome = "failed"
        with Heartbeat(self._open_store, job.id, self.name, self.lease_s, job.attempts) as beat:
            last = {"progress": -1}

            def progress(p) -> None:
                value = min(99, int(p.fraction * 100))
                if value != last["progress"]:
                    last["progress"] = value
                    if not self.store.set_progress(job.id, self.name, value, attempt=job.attempts):
                        beat.lost.set()

            def cancelled() -> bool:
                # every rank asks at the same points between steps; rank 0's answer is the group's
                return bool(self._broadcast(beat.lost.is_set() or self.store.cancel_requested(job.id)))

            try:
                request = self._request(job.params)
                self._broadcast(job.params)
                result = self.engine.generate(request, progress=progress, cancelled=cancelled)
                if beat.lost.is_set():
                    raise Cancelled()
                outcome = self._publish(job, result)
            except Cancelled:
                if beat.lost.is_set():
                    outcome = "lost"
                    log.warning("job %s: %s lost its lease; another worker runs it", job.id, self.name)
                else:
                    outcome = "cancelled"
                    self._finish(job, "cancel", {"code": "cancelled", "message": "cancelled by DELETE /v1/videos/{id}"})
            except UserError as exc:  # settings this replica cannot run: the job fails, the replica stays
                self._finish(job, "fail", {"code": "invalid_request", "message": str(exc)})
            except Exception as exc:  # a bug of ours or a device error: the job fails with its message
                traceback.print_exc()
                message = f"internal error: {type(exc).__name__}: {str(exc)[:300]} (a bug in ltx-serve or the device)"
                self._finish(job, "fail", {"code": "internal_error", "message": message})
        self.reporter.send(state="ready", job=None, outcome=outcome, seconds=time.monotonic() - started)

    def _finish(self, job, how: str, error: dict) -> None:
        if how == "cancel":
            done = self.store.mark_cancelled(job.id, self.name, attempt=job.attempts)
        else:
            done = self.store.fail(job.id, self.name, error, attempt=job.attempts)
        if done and how != "cancel":
            log.warning("job %s failed: %s", job.id, error["message"])  # the store's line says that it did

    def _publish(self, job, result) -> str:
        key = f"video_{secrets.token_hex(16)}.mp4"  # fresh per attempt: a late finisher never overwrites
        tmp = self.scratch / key
        try:
            result.write_mp4(tmp)
            self.outputs.put(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        if not self.store.complete(job.id, self.name, key, attempt=job.attempts):
            self.outputs.delete(key)
            log.warning("job %s: finished on %s after its lease was taken over; result dropped", job.id, self.name)
            return "lost"
        self.reporter.send(timings=_stage_seconds(result.timings))
        return "completed"


def _stage_seconds(timings) -> dict[str, float]:
    """Seconds per stage from the engine's timing table (`Timings.to_json`), and the total."""
    data = timings.to_json()
    stages = {s["name"]: float(s["seconds"]) for s in data.get("stages", ())}
    if "total_seconds" in data:
        stages["total"] = float(data["total_seconds"])
    return stages


def load_and_check(engine, shapes) -> None:
    """Before the replica joins the pool: what every served pipeline needs is loaded (`Engine.load_for`), and
    for every served shape the compiled artifacts it would run are there and were built from this replica's
    checkpoint set (each artifact's manifest names the checkpoint, Gemma and LoRA fingerprints it was
    exported from). Under --fallback none a missing or stale one is a UserError here, so the replica refuses
    in one line instead of failing every job it would take; under --fallback eager the jobs run eager with a
    warning, as ltx-run does.

    Not `Engine.load()`: it validates a default request per pipeline, which a pipeline that needs an input
    (retake: a source video) refuses. A request such a pipeline refuses here is skipped; its first job loads
    what it needs."""
    from ltx_ascend.api import GenerationRequest

    for pipeline in engine.settings.pipelines:
        for shape in shapes or (None,):
            size = {} if shape is None else {"height": shape.height, "width": shape.width, "num_frames": shape.frames}
            try:
                prepared = engine.prepare(GenerationRequest(pipeline=pipeline, prompt="", **size))
            except UserError as exc:
                log.info("replica: %s at %s loads with its first job (%s)", pipeline, shape or "its default", exc)
                continue
            engine.check(prepared)


def settings_from_spec(spec: dict):
    """The replica's RunSettings and served shapes: the serve command line parsed as the front parsed it,
    on this group's device."""
    from ltx_ascend.serve.cli import parse, run_settings
    from ltx_ascend.serve.protocol import parse_shapes

    ours, run = parse(spec["argv"])
    changes: dict[str, Any] = {}
    if spec.get("device"):
        changes["device"] = spec["device"]
    if spec.get("parallel"):
        changes["parallel"] = spec["parallel"]
    shapes = parse_shapes(ours.shapes) if ours.shapes else ()
    return run_settings(ours, run, **changes), shapes


def main() -> int:
    _die_with_parent()
    from ltx_ascend.serve.cli import log_to_stderr

    log_to_stderr()
    spec = json.loads(sys.stdin.readline())
    # stdout carries state lines; everything the library prints goes to stderr
    pipe = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reporter = Reporter(pipe)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rank = int(os.environ.get("RANK", "0"))
    try:
        replica = Replica(spec, reporter)
        replica.load(*settings_from_spec(spec))
        replica.join_group()
    except UserError as exc:  # the supervisor logs the one line and keeps this replica out of the pool
        reporter.send(state="refused", reason=str(exc))
        return EXIT_REFUSED
    if rank == 0:
        replica.serve(stop)
    else:
        replica.follow()
    with contextlib.suppress(Exception):
        replica.engine.close()
        replica.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
