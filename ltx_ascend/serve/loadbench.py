"""`python -m ltx_ascend.serve.loadbench`: N clients x M jobs against a running ltx-serve; jobs per hour,
queue wait and latency (p50 / p95), as a table.

Each client is a thread that submits a job, polls it until it finishes, then submits the next (closed
loop: N clients keep at most N jobs in the system). Times are measured by the client: queue wait from
the submit's answer to the first poll that sees the job running, latency to the first poll that sees
it completed (poll interval --poll, 0.1 s by default). Speaks plain HTTP (urllib): no extra dependency.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ltx_ascend.errors import OneLineParser, UserError, cli_entry


@dataclass
class Sample:
    video_id: str
    status: str
    queue_s: float
    latency_s: float
    error: str | None = None


class Client:
    def __init__(self, url: str, key: str | None, timeout: float = 30) -> None:
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}


def run_one(client: Client, body: dict, poll: float, timeout: float) -> Sample:
    code, video = client.call("POST", "/v1/videos", body)
    if code != 200:
        message = video.get("error", {}).get("message", f"HTTP {code}")
        raise UserError(f"the server refused the benchmark's job (HTTP {code}): {message}")
    submitted = time.monotonic()
    started = None
    while time.monotonic() - submitted < timeout:
        time.sleep(poll)
        code, video = client.call("GET", f"/v1/videos/{video['id']}")
        now = time.monotonic()
        status = video.get("status")
        if started is None and status in ("in_progress", "completed", "failed"):
            started = now
        if status in ("completed", "failed"):
            error = (video.get("error") or {}).get("message")
            return Sample(video["id"], status, started - submitted, now - submitted, error)
    raise UserError(f"job {video['id']} did not finish within --timeout {timeout:g} s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run(client: Client, clients: int, jobs: int, body: dict, poll: float, timeout: float) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            for j in range(jobs):
                seed = body.get("seed", 0) + index * jobs + j
                sample = run_one(client, {**body, "seed": seed}, poll, timeout)
                with lock:
                    samples.append(sample)
        except BaseException as exc:  # reported after the others finish
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    if errors:
        raise errors[0]
    return samples, wall


def table(samples: list[Sample], wall: float, clients: int, jobs: int, replicas: str) -> str:
    done = [s for s in samples if s.status == "completed"]
    queue = [s.queue_s for s in done]
    latency = [s.latency_s for s in done]
    run_s = [s.latency_s - s.queue_s for s in done]
    head = ("clients x jobs", "replicas", "completed", "failed", "wall s", "jobs/hour", "queue p50", "queue p95",
            "latency p50", "latency p95", "run p50")  # fmt: skip
    row = (
        f"{clients} x {jobs}", replicas, str(len(done)), str(len(samples) - len(done)), f"{wall:.1f}",
        f"{len(done) / wall * 3600:.0f}", f"{percentile(queue, 50):.2f}", f"{percentile(queue, 95):.2f}",
        f"{percentile(latency, 50):.2f}", f"{percentile(latency, 95):.2f}",
        f"{statistics.median(run_s):.2f}" if run_s else "nan",
    )  # fmt: skip
    widths = [max(len(h), len(v)) for h, v in zip(head, row, strict=True)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m ltx_ascend.serve.loadbench", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--clients", type=int, default=3, help="concurrent clients (default 3)")
    parser.add_argument("--jobs", type=int, default=4, help="jobs per client (default 4)")
    parser.add_argument("--prompt", default="a red fox runs through fresh snow")
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: the server's first served shape)")
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--num-inference-steps", type=int)
    parser.add_argument("--seed", type=int, default=1000, help="first seed; each job takes the next")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls (default 0.1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a job may take (default 3600)")
    parser.add_argument("--json", type=Path, help="also write the samples and the summary as JSON")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.jobs < 1:
        raise UserError("--clients and --jobs must be >= 1")
    key = args.api_key_file.read_text().strip() if args.api_key_file else None
    client = Client(args.url, key)
    try:
        _, health = client.call("GET", "/health")
    except urllib.error.URLError as exc:
        raise UserError(f"--url {args.url}: no server answers ({exc.reason}); start ltx-serve first") from None
    replicas = str(len(health.get("replicas", {}))) if "replicas" in health else "?"
    body = {"prompt": args.prompt, "seed": args.seed}
    for name in ("size", "num_frames", "num_inference_steps"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    samples, wall = run(client, args.clients, args.jobs, body, args.poll, args.timeout)
    text = table(samples, wall, args.clients, args.jobs, replicas)
    print(text)
    failed = [s for s in samples if s.status != "completed"]
    for s in failed[:3]:
        print(f"failed: {s.video_id}: {s.error}", file=sys.stderr)
    if args.json:
        from ltx_ascend.atomic import atomic_write_text

        summary = {"clients": args.clients, "jobs": args.jobs, "replicas": replicas, "wall_s": wall,
                   "samples": [s.__dict__ for s in samples]}  # fmt: skip
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
