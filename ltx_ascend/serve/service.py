"""What the HTTP front does with a request, without HTTP: validate it into a job, render jobs as OpenAI
Video objects, hand out finished videos, cancel and delete. One instance per API process; the store
is shared by every API process and worker (SQLite under --store, or PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ltx_ascend.errors import UserError
from ltx_ascend.serve import protocol as proto
from ltx_ascend.serve.outputs import OutputStore
from ltx_ascend.shapes import DEFAULT_FPS

log = logging.getLogger(__name__)

RETAKE = "retake"
# Job fields a client sees in `error.code` when its job did not run to the end.
CANCELLED = {"code": "cancelled", "message": "cancelled by DELETE /v1/videos/{id}"}


class ThreadLocalStore:
    """One job-store connection per thread (HTTP handlers run in a thread pool; SQLite connections
    belong to the thread that opened them). Every call goes to the calling thread's connection."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener, self._local, self._all, self._lock = opener, threading.local(), [], threading.Lock()

    def _store(self):
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._opener()
            with self._lock:
                self._all.append(store)
        return store

    def __getattr__(self, name: str):
        return getattr(self._store(), name)

    def close(self) -> None:
        with self._lock:
            for store in self._all:
                try:
                    store.close()
                except Exception:  # closing at exit: nothing to do about a failing close
                    log.debug("closing a store connection failed", exc_info=True)
            self._all.clear()


def request_to_params(request: Any, image_keys: Sequence[str], extra: dict | None = None) -> dict:
    """A validated GenerationRequest as the JSON-able dict a worker runs: uploaded images by the output
    key they were stored under (never their bytes, never a client path)."""
    params = {
        f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in ("images", "extra")
    }
    params["images"] = [
        {"input": key, "frame_idx": image.frame_idx, "strength": image.strength, "crf": image.crf}
        for image, key in zip(request.images, image_keys, strict=True)
    ]
    params["extra"] = dict(extra or {})
    return json.loads(json.dumps(params))  # fails here, not in a worker, if anything is not JSON-able


def request_from_params(params: dict, outputs: OutputStore, *, extra: dict | None = None):
    """The GenerationRequest a worker runs for a job (images read back from the output store)."""
    from ltx_ascend.api import GenerationRequest, ImageInput

    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    kwargs = {k: v for k, v in params.items() if k in names and k not in ("images", "extra")}
    images = tuple(
        ImageInput(outputs.read_bytes(item["input"]), item["frame_idx"], item["strength"], item["crf"])
        for item in params.get("images", ())
    )
    return GenerationRequest(**kwargs, images=images, extra=dict(extra or {}))


class Service:
    """The front's logic: `validator` is an Engine that is never loaded (validate loads nothing)."""

    def __init__(
        self,
        *,
        store: Any,
        outputs: OutputStore,
        validator: Any,
        pipelines: Sequence[str],
        shapes: Sequence[proto.Shape],
        limits: proto.Limits,
        max_queue: int | None,
    ) -> None:
        self.store, self.outputs, self.validator = store, outputs, validator
        self.pipelines, self.shapes, self.limits, self.max_queue = tuple(pipelines), tuple(shapes), limits, max_queue
        self._validate_lock = threading.Lock()
        self.default_fps = {p: self._default_fps(p) for p in self.pipelines}

    # -- requests ---------------------------------------------------------------------------------------------
    def _default_fps(self, pipeline: str) -> float:
        """The pipeline's default frame rate (what `seconds` converts at); a pipeline whose request needs an
        input to validate (retake: its source video) takes LTX-2.3's 24: its own check then says what it needs."""
        try:
            return self._validate(self._base_request(pipeline)).frame_rate
        except UserError:
            return DEFAULT_FPS

    def _base_request(self, pipeline: str, **kwargs):
        from ltx_ascend.api import GenerationRequest

        shape = self.shapes[0]
        defaults = {"height": shape.height, "width": shape.width, "num_frames": shape.frames}
        return GenerationRequest(pipeline=pipeline, **{"prompt": "", **defaults, **kwargs})

    def _validate(self, request):
        with self._validate_lock:
            return self.validator.validate(request)

    def pipeline_for(self, fields: dict) -> str:
        model, pipeline = fields.get("model"), fields.get("pipeline")
        if model is not None and pipeline is not None and model != pipeline:
            raise UserError(f"model {model!r} and pipeline {pipeline!r} disagree: send one of them")
        name = pipeline or model or self.pipelines[0]
        if name not in self.pipelines:
            raise UserError(f"model {name[:60]!r} is not served here; served: {', '.join(self.pipelines)}")
        return name

    def _shape(self, fields: dict, fps: float) -> proto.Shape:
        """The request's frames and size; what it leaves out comes from the first served shape that fits."""
        hw = proto.parse_size(fields["size"]) if "size" in fields else None
        frames = fields.get("num_frames")  # num_frames wins over seconds
        if frames is None and "seconds" in fields:
            if fields["seconds"] <= 0:
                raise UserError(f"seconds {fields['seconds']:g}: must be > 0")
            frames = proto.frames_for_seconds(fields["seconds"], fps)
        fits = [
            s
            for s in self.shapes
            if (hw is None or (s.height, s.width) == hw) and (frames is None or s.frames == frames)
        ]
        base = fits[0] if fits else self.shapes[0]
        height, width = hw or (base.height, base.width)
        return proto.Shape(base.frames if frames is None else frames, height, width)

    def check_served(self, frames: int, height: int, width: int, fps: float) -> None:
        if proto.Shape(frames, height, width) not in self.shapes:
            served = "; ".join(s.describe(fps) for s in self.shapes)
            raise UserError(
                f"size {width}x{height} with {frames} frames ({frames / fps:.3g} s at {fps:g} fps) is not served "
                f"here; served: {served}"
            )

    def build(self, fields: dict, image: bytes | None):
        """Body fields (typed) and the uploaded image -> the validated GenerationRequest (UserError: a 400)."""
        from ltx_ascend.api import ImageInput

        prompt = fields["prompt"]
        if len(prompt) > self.limits.max_prompt_chars:
            raise UserError(f"prompt: {len(prompt)} characters, more than the limit of {self.limits.max_prompt_chars}")
        negative = fields.get("negative_prompt")
        if negative is not None and len(negative) > self.limits.max_prompt_chars:
            raise UserError(f"negative_prompt: more than the limit of {self.limits.max_prompt_chars} characters")
        pipeline = self.pipeline_for(fields)
        fps = fields.get("frame_rate", self.default_fps[pipeline])
        if not fps > 0:
            raise UserError(f"frame_rate {fps:g}: must be a positive number of frames per second, e.g. 24")
        shape = self._shape(fields, fps)
        images = ()
        if image is not None:
            proto.check_image(image, self.limits)
            images = (ImageInput(image, 0, 1.0),)
        request = self._base_request(
            pipeline,
            prompt=prompt,
            negative_prompt=negative,
            seed=fields.get("seed"),
            height=shape.height,
            width=shape.width,
            num_frames=shape.frames,
            frame_rate=fields.get("frame_rate"),
            num_inference_steps=fields.get("num_inference_steps"),
            video_guidance=fields.get("guidance"),
            audio_guidance=fields.get("audio_guidance"),
            images=images,
        )
        validated = self._validate(request)
        self.check_served(validated.num_frames, validated.height, validated.width, validated.frame_rate)
        return validated

    def submit(self, fields: dict, image: bytes | None):
        """Validate, store the upload, queue the job (QueueFull propagates: a 429)."""
        request = self.build(fields, image)
        keys = []
        for item in request.images:
            key = f"input_{secrets.token_hex(16)}.img"
            self.outputs.put_bytes(key, item.source)
            keys.append(key)
        params = request_to_params(request, keys)
        try:
            job = self.store.create(request.pipeline, params, max_queue=self.max_queue)
        except Exception:
            for key in keys:
                self.outputs.delete(key)
            raise
        return job  # the store logs the transition

    def remix(self, source_id: str, fields: dict):
        """Retake over a finished video: the source's size, frames and rate, the new prompt."""
        if RETAKE not in self.pipelines:
            raise UserError(
                f"remix runs the {RETAKE} pipeline, which this server does not serve (it serves "
                f"{', '.join(self.pipelines)}); start ltx-serve with --pipelines {','.join(self.pipelines)},{RETAKE}"
            )
        source = self.store.get(source_id)
        if source is None:
            return None
        if source.status != "completed" or not source.output:
            raise UserError(f"video {source_id} is {source.status}: remix needs a completed video")
        prompt = fields["prompt"]
        if len(prompt) > self.limits.max_prompt_chars:
            raise UserError(f"prompt: {len(prompt)} characters, more than the limit of {self.limits.max_prompt_chars}")
        p = source.params
        duration = p["num_frames"] / p["frame_rate"]
        window = {"start_time": 0.0, "end_time": duration}
        unknown = sorted(set(fields) - {"prompt", "seed", "num_inference_steps", "negative_prompt"})
        if unknown:
            raise UserError(f"{unknown[0]}: remix takes prompt, seed, num_inference_steps, negative_prompt")
        request = self._base_request(  # size, frames and rate: retake takes the source video's
            RETAKE,
            prompt=prompt,
            negative_prompt=fields.get("negative_prompt"),
            seed=fields.get("seed"),
            height=None,
            width=None,
            num_frames=None,
            num_inference_steps=fields.get("num_inference_steps"),
        )
        with tempfile.TemporaryDirectory(prefix="ltx-serve-remix-") as folder:
            video = Path(folder) / "source.mp4"  # our own name: the source is read from the output store
            video.write_bytes(self.outputs.read_bytes(source.output))
            validated = self._validate(dataclasses.replace(request, extra={"video_path": str(video), **window}))
        params = request_to_params(
            dataclasses.replace(validated, extra={}), [], {"source_output": source.output, **window}
        )
        job = self.store.create(RETAKE, params, max_queue=self.max_queue, remixed_from=source.id)
        return job

    # -- jobs -> OpenAI objects -------------------------------------------------------------------------------
    def video(self, job) -> dict:
        p = job.params
        status, error = job.status, job.error
        if status == "cancelled":  # OpenAI's statuses have no "cancelled": a failed job saying why
            status, error = "failed", error or CANCELLED
        extra = {"note": job.note} if job.note else {}
        if job.status == "in_progress" and job.worker:
            extra["worker"] = job.worker
        return proto.Video(
            id=job.id,
            model=job.model,
            status=status,
            progress=100 if job.status == "completed" else int(job.progress),
            created_at=int(job.created_at),
            completed_at=None if job.completed_at is None else int(job.completed_at),
            expires_at=None,
            size=f"{p['width']}x{p['height']}",
            seconds=proto.format_seconds(p["num_frames"], p["frame_rate"]),
            prompt=p.get("prompt"),
            error=error,
            remixed_from_video_id=job.remixed_from,
            extra=extra,
        ).to_json()

    def list(self, after: str | None, limit: int, order: str) -> dict:
        jobs = self.store.list(after=after, limit=limit + 1, order=order)
        page = jobs[:limit]
        data = [self.video(job) for job in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(jobs) > limit,
        }

    def delete(self, job) -> dict:
        """Queued: cancelled and removed. Running: cancel requested (the worker stops between steps; the job
        then reads as failed, code "cancelled"; a second DELETE removes it). Finished: files and row removed."""
        if job.status in ("queued", "in_progress"):
            after = self.store.cancel(job.id)
            if after is not None and after.status == "in_progress":
                return {"id": job.id, "object": "video.deleted", "deleted": False}
            job = after or job
        self._remove(job)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    def _remove(self, job) -> None:
        for item in job.params.get("images", ()):
            self.outputs.delete(item["input"])
        if job.output:
            self.outputs.delete(job.output)
        self.store.delete(job.id)
        log.info("job %s deleted", job.id)  # the one transition the store does not log
