"""Start `ltx-serve` as a real subprocess on 127.0.0.1 and talk to it: what test_serve and test_fleet share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789abcdef"
# A job the tiny set runs in seconds: ti2vid_two_stages at 9x128x192 (stage 1 at 64x96), float32, 2 steps.
RUN_FLAGS = ["--backend", "eager", "--dtype", "float32"]
SHAPE = {"num_frames": 9, "height": 128, "width": 192}
SIZE = "192x128"
STEPS = 2
PROMPT = "a red fox runs through fresh snow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ltx-serve process; its log goes to a file the failure message shows."""

    def __init__(self, args: list[str], workdir: Path, name: str = "serve", port: int | None = None) -> None:
        self.args, self.workdir, self.name = args, workdir, name
        self.port = port if port is not None else free_port()
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "ltx_ascend.serve", *self.args]
        if "--role" not in self.args or self.args[self.args.index("--role") + 1] != "worker":
            argv += ["--port", str(self.port)]
        handle = self.log.open("a")
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        return self

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def health(self) -> tuple[int, dict]:
        response = httpx.get(f"{self.url}/health", timeout=5)
        return response.status_code, response.json()

    def wait_ready(self, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                code, body = self.health()
                if code == 200:
                    return body
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def client(server: Server, key: str | None = KEY, **kwargs):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", **{"max_retries": 0, **kwargs})


def wait_done(client, video_id: str, timeout: float = 300, statuses=("completed", "failed")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in statuses:
            return video
        time.sleep(0.5)
    raise AssertionError(f"{video_id} still {video.status} after {timeout} s (progress {video.progress})")


def wait_for(predicate, timeout: float = 120, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def decode_frames(data: bytes):
    """The mp4's video frames as one uint8 array [F, H, W, 3] (how the project's tests compare videos)."""
    import io

    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def ltx_run_mp4(out: Path, *, seed: int, steps: int = STEPS, image: Path | None = None, prompt: str = PROMPT) -> bytes:
    """`ltx-run ti2vid_two_stages` in-process with the settings the service jobs use, on one thread as the
    servers' replicas (OMP_NUM_THREADS=1: the kernels, so the rounding, depend on it); the mp4's bytes.
    The caller's thread count is restored by conftest's autouse fixture."""
    import torch

    from ltx_ascend.tools import run as cli

    torch.set_num_threads(1)

    path = out / f"ltx-run-seed{seed}-steps{steps}{'-image' if image else ''}.mp4"
    argv = [
        "ti2vid_two_stages", "--prompt", prompt, "--seed", str(seed), "--height", str(SHAPE["height"]),
        "--width", str(SHAPE["width"]), "--num-frames", str(SHAPE["num_frames"]), "--num-inference-steps", str(steps),
        *RUN_FLAGS, "--artifacts", str(out / "ltx-run-artifacts"), "--output-path", str(path),
    ]  # fmt: skip
    if image is not None:
        argv += ["--image", str(image), "0", "1.0"]
    assert cli.main(argv) == 0
    return path.read_bytes()
