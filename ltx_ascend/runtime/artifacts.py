"""Open a component's compiled graphs as sessions: the one way every caller does it, with one fallback rule.

The store (`ltx_ascend.store`) says where a request's graphs are for a backend, or why they are not
usable. `open_component` turns that into sessions, or, when it cannot (no artifact, a stale one, or
an opening failure the user can fix, such as no pyACL), into exactly one warning line and `None`,
meaning "run it eager" (`fallback="eager"`), or a one-line error (`fallback="none"`). `ModelStack`,
`ltx-verify` and `ltx-bench` all open through it.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ltx_ascend import backends
from ltx_ascend.errors import UserError
from ltx_ascend.runtime.session import Session, specs_from_manifest
from ltx_ascend.store import Resolution

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
FALLBACKS = ("eager", "none")


def add_fallback_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        default="eager",
        help="when no matching compiled artifact exists: eager (warn and run ltx-core) or none (fail)",
    )


def open_sessions(
    resolution: Resolution,
    *,
    device: torch.device = CPU,
    ep: str = "cpu",
    threads: int | None = None,
    device_id: int = 0,
) -> dict[str, Session]:
    """One session per graph of a successful resolution; all closed again if any fails to open."""
    if not resolution.ok:
        raise UserError(f"{resolution.component}: {resolution.reason}")
    factory = backends.backend(resolution.backend).session_factory()  # its session module, imported now
    options = backends.OpenOptions(device=device, ep=ep, threads=threads, device_id=device_id)
    sessions: dict[str, Session] = {}
    try:
        for name, path in resolution.graphs.items():
            inputs, outputs = specs_from_manifest(resolution.io[name])
            sessions[name] = factory(path, inputs, outputs, options)
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions


def open_component(
    resolution: Resolution,
    *,
    fallback: str = "eager",
    device: torch.device = CPU,
    ep: str = "cpu",
    threads: int | None = None,
    device_id: int = 0,
) -> dict[str, Session] | None:
    """The resolution's sessions; or, when it failed or its sessions cannot open for a reason the user
    can fix, None (run eager) after exactly one warning line, or a UserError under `fallback="none"`."""
    if fallback not in FALLBACKS:
        raise UserError(f"--fallback {fallback}: choose one of {', '.join(FALLBACKS)}")
    reason = resolution.reason
    if reason is None:
        try:
            return open_sessions(resolution, device=device, ep=ep, threads=threads, device_id=device_id)
        except UserError as exc:
            reason = str(exc).splitlines()[0]
    if fallback == "none":
        raise UserError(f"{resolution.component}: {reason}")
    log.warning("warning: %s: %s; falling back to eager", resolution.component, reason)
    return None
