"""`ltx-serve`: the OpenAI Videos API (/v1/videos) over resident LTX-2.3 pipelines.

    ltx-serve --pipelines ti2vid_two_stages --shapes 25x256x384 --replicas 2 --store ./serve-store

Beside its own flags it takes ltx-run's checkpoint and run-level flags (--checkpoint-path, --gemma-root,
--distilled-lora, --artifacts, --backend, --device, --dtype, --variant, --quantization, ...), parsed by
ltx-run's own parser; request-level flags (--prompt, --seed, --height, ...) belong in each request's
body and are refused here. Roles: `all` (HTTP and this host's replicas, the default), `api` (HTTP
only) and `worker` (replicas only): any number of each share one job store (PostgreSQL for a fleet).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from ltx_ascend.errors import EXIT_USAGE, OneLineParser, UserError, cli_entry

log = logging.getLogger("ltx_ascend.serve")

ROLES = ("all", "api", "worker")
DEFAULT_PIPELINE = "ti2vid_two_stages"


def build_parser() -> argparse.ArgumentParser:
    """ltx-serve's own flags; the rest of the command line goes to ltx-run's parser (`parse`)."""
    parser = OneLineParser(
        prog="ltx-serve",
        allow_abbrev=False,  # the rest goes to ltx-run's parser: --device must not read as --device-groups
        description=__doc__.splitlines()[0],
        epilog="Also takes ltx-run's checkpoint and run-level flags (see `ltx-run ti2vid_two_stages --help`).",
    )
    serve = parser.add_argument_group("service")
    serve.add_argument("--pipelines", default=DEFAULT_PIPELINE, help=f"P[,P...] served (default {DEFAULT_PIPELINE})")
    serve.add_argument(
        "--shapes",
        help="FRAMESxHEIGHTxWIDTH[,...] the sizes and durations served (default: the first pipeline's default shape); "
        "any other is a 400 naming these",
    )
    serve.add_argument("--role", choices=ROLES, default="all", help="all (default) | api (HTTP only) | worker")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this host only)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default 8000; role worker: none)")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--replicas", type=int, help="replicas on this host, one device each (default 1)")
    where.add_argument("--device-groups", help="GROUPSxLAYOUT, e.g. 4xcfg=2: 4 replicas of 2 devices each")
    serve.add_argument("--store", type=Path, default=Path("serve-store"), help="jobs db, uploads and outputs")
    serve.add_argument(
        "--store-url", help="a shared job store: postgresql://user@host:port/db (default: SQLite in --store)"
    )
    serve.add_argument(
        "--outputs", help="finished videos: a (shared) folder or s3://bucket/prefix (default STORE/outputs)"
    )
    serve.add_argument(
        "--worker-id", help="this host's worker name prefix (default: host name, plus the pid for role worker)"
    )
    serve.add_argument("--lease", type=float, default=30.0, help="seconds a job's lease lasts unrenewed (default 30)")
    serve.add_argument("--poll", type=float, default=0.5, help="seconds an idle replica waits between claims")
    safety = parser.add_argument_group("limits")
    safety.add_argument("--api-key-file", type=Path, help="file holding the bearer key every /v1 request must send")
    safety.add_argument("--max-queue", type=int, default=64, help="jobs queued or running before a 429 (default 64)")
    safety.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (default 16 MB)")
    safety.add_argument("--max-prompt-chars", type=int, default=4000, help="prompt length limit (default 4000)")
    safety.add_argument("--max-image-mb", type=float, default=10.0, help="input_reference size limit (default 10 MB)")
    safety.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="input_reference pixel limit")
    return parser


def _run_level_names() -> set[str]:
    from ltx_ascend.api import RunSettings

    return {f.name for f in dataclasses.fields(RunSettings) if f.init} | {"lora", "pipeline"}


def parse(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(ltx-serve's flags, ltx-run's run-level flags for the first served pipeline)."""
    from ltx_ascend.engine.argv import build_parser as run_parser

    ours, rest = build_parser().parse_known_args(argv)
    pipelines = tuple(p.strip() for p in ours.pipelines.split(",") if p.strip())
    if not pipelines:
        raise UserError("--pipelines: name at least one, e.g. ti2vid_two_stages")
    ours.pipelines = pipelines
    from ltx_ascend.engine.stages import PIPELINES

    for name in pipelines:
        if name not in PIPELINES:
            raise UserError(f"--pipelines {name}: not a pipeline; choose from {', '.join(PIPELINES)}")
    parser = run_parser()
    try:
        run = parser.parse_args([pipelines[0], *rest])
    except UserError as exc:
        raise UserError(f"ltx-serve: {str(exc).split(': ', 1)[-1]}") from None
    defaults = parser.parse_args([pipelines[0]])
    allowed = _run_level_names()
    for name, value in vars(run).items():
        if name not in allowed and value != getattr(defaults, name, None):
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"{flag} is a request setting: send it in each POST /v1/videos body, not on ltx-serve's command line"
            )
    if run.parallel is not None:
        raise UserError("--parallel: give ltx-serve --device-groups GROUPSxLAYOUT (e.g. 4xcfg=2) instead")
    return ours, run


def run_settings(ours: argparse.Namespace, run: argparse.Namespace, **changes):
    from ltx_ascend.api import RunSettings

    settings = RunSettings.from_args(run)
    return dataclasses.replace(settings, pipelines=ours.pipelines, **changes)


def _limits(ours: argparse.Namespace):
    from ltx_ascend.serve.protocol import Limits

    for flag in ("max_body_mb", "max_prompt_chars", "max_image_mb", "max_image_pixels", "max_queue"):
        if not getattr(ours, flag) > 0:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(ours, flag)}: must be > 0")
    return Limits(
        max_body_bytes=int(ours.max_body_mb * (1 << 20)),
        max_prompt_chars=ours.max_prompt_chars,
        max_image_bytes=int(ours.max_image_mb * (1 << 20)),
        max_image_pixels=ours.max_image_pixels,
    )


def _api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"--api-key-file {path}: cannot read it ({exc.strerror}); pass a readable file") from None
    if not key or any(c.isspace() for c in key):
        raise UserError(f"--api-key-file {path}: must hold one key, no spaces (it is empty or has several words)")
    return key


def log_to_stderr() -> None:
    """A server's log: timestamped lines on stderr (library code never configures logging; this CLI does)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ltx_ascend")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _lock_store(folder: Path):
    """Role all on SQLite owns its --store: a second server on it is refused (its start would requeue the
    first one's running jobs)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / "serve.lock").open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        raise UserError(
            f"--store {folder}: another ltx-serve (pid {handle.read().strip() or '?'}) serves it; stop it, or run "
            "more processes as --role api / --role worker on a shared --store-url"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def requeue_previous(store, prefix: str) -> int:
    """Jobs a previous run of this server left in_progress (its replicas died with it): queued again now."""
    workers, after = set(), None
    while True:
        page = store.list(after=after, limit=100, order="asc")
        workers |= {j.worker for j in page if j.status == "in_progress" and j.worker and j.worker.startswith(prefix)}
        if len(page) < 100:
            break
        after = page[-1].id
    count = 0
    for worker in sorted(workers):
        count += len(store.requeue_worker(worker, "stopped with the server (restarted)"))
    return count


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, run = parse(argv)
    log_to_stderr()
    from ltx_ascend.serve import protocol as proto
    from ltx_ascend.serve.jobs import open_store
    from ltx_ascend.serve.outputs import open_outputs
    from ltx_ascend.serve.service import Service, ThreadLocalStore
    from ltx_ascend.serve.supervisor import Supervisor, plan_groups
    from ltx_ascend.serve.telemetry import Telemetry

    limits = _limits(ours)
    api_key = _api_key(ours.api_key_file)
    if ours.lease <= 1 or ours.poll <= 0:
        raise UserError(f"--lease {ours.lease} / --poll {ours.poll}: the lease must be > 1 s, the poll > 0")
    groups = plan_groups(run.device, ours.replicas, ours.device_groups) if ours.role != "api" else []
    # The front validates with an Engine it never loads, on the CPU (the devices belong to the replicas).
    validator_settings = run_settings(ours, run, device="cpu")
    store_url = ours.store_url or str(ours.store.resolve())
    if ours.store_url is None and ours.role != "all":
        log.info("role %s on the SQLite store %s: every process must be on this host", ours.role, store_url)
    outputs_spec = ours.outputs or str((ours.store / "outputs").resolve())
    lock = _lock_store(ours.store) if ours.role == "all" and ours.store_url is None else None
    store = ThreadLocalStore(lambda: open_store(store_url))
    store.counts()  # opens (and creates) the store now: a bad URL or a foreign file is refused before serving
    outputs = open_outputs(outputs_spec)
    telemetry = Telemetry(store.counts)
    host = socket.gethostname()
    worker_id = ours.worker_id or (host if ours.role == "all" else f"{host}-{os.getpid()}")
    supervisor = None
    if groups:
        if ours.role == "all":
            n = requeue_previous(store, f"{worker_id}-r")
            if n:
                log.info("%d job(s) left running by the previous start queued again", n)
        # Replicas re-parse this command line as the front did; each builds its own Engine on its group.
        supervisor = Supervisor(
            argv=argv, pipelines=ours.pipelines, groups=groups, store=store, store_url=store_url,
            outputs=outputs_spec, worker_id=worker_id, lease_s=ours.lease, telemetry=telemetry, poll_s=ours.poll,
        )  # fmt: skip
    service = None
    if ours.role != "worker":
        from ltx_ascend.api import Engine

        validator = Engine(validator_settings)
        shapes = proto.parse_shapes(ours.shapes) if ours.shapes else _default_shapes(validator, ours.pipelines[0])
        service = Service(
            store=store, outputs=outputs, validator=validator, pipelines=ours.pipelines, shapes=shapes,
            limits=limits, max_queue=ours.max_queue,
        )  # fmt: skip
    port = ours.port if ours.port is not None else (8000 if ours.role != "worker" else None)
    if supervisor is not None:
        supervisor.start()
    try:
        if port is None:
            _wait_for_signal(supervisor)
        else:
            _serve_http(ours, port, service, telemetry, supervisor, store, api_key, limits)
    finally:
        if supervisor is not None:
            supervisor.stop()
        store.close()
        if lock is not None:
            lock.close()
    return 0


def _default_shapes(validator, pipeline: str):
    from ltx_ascend.api import GenerationRequest
    from ltx_ascend.serve.protocol import Shape

    r = validator.validate(GenerationRequest(pipeline=pipeline, prompt=""))
    return (Shape(r.num_frames, r.height, r.width),)


def _wait_for_signal(supervisor) -> None:
    """A worker host without HTTP: runs until SIGTERM; exits 2 once every replica refused to serve (the
    supervisor logged why), so the operator's process manager sees it stayed out of the pool."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("worker running; SIGTERM stops it")
    while not stop.wait(0.5):
        if supervisor is not None and supervisor.all_refused():
            raise SystemExit(EXIT_USAGE)


def _serve_http(ours, port, service, telemetry, supervisor, store, api_key, limits) -> None:
    import uvicorn

    from ltx_ascend.serve.app import create_app

    def health():
        if supervisor is not None:
            return supervisor.health()
        try:
            store.counts()
        except Exception as exc:  # the database is down: not ready
            return False, {"store": f"unreachable ({type(exc).__name__})"}
        return True, {"store": "ok"}

    app = create_app(service, telemetry, health=health, api_key=api_key, limits=limits)
    config = uvicorn.Config(
        app, host=ours.host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    if ours.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("listening on %s without --api-key-file: anyone who reaches this port can submit jobs", ours.host)
    log.info(
        "ltx-serve %s on http://%s:%d: %s%s", ours.role, ours.host, port, ", ".join(ours.pipelines),
        f", {len(supervisor.slots)} replica(s)" if supervisor else "",
    )  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise UserError(f"--host {ours.host} --port {port}: could not listen there (in use?); pass another --port")


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["EXIT_USAGE", "build_parser", "main", "parse"]
