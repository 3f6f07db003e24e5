"""The HTTP front: OpenAI's /v1/videos routes over a Service, plus /health and /metrics (FastAPI).

Every bad request is a 4xx with one line in OpenAI's error shape (the `openai` client raises it as its
BadRequestError etc. with that message); a bug of ours is a 500 with the traceback logged."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ltx_ascend.errors import UserError
from ltx_ascend.serve import protocol as proto
from ltx_ascend.serve.jobs import QueueFull, StoreUnavailable
from ltx_ascend.serve.outputs import iter_chunks
from ltx_ascend.serve.service import Service
from ltx_ascend.serve.telemetry import Telemetry

log = logging.getLogger(__name__)

_VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def create_app(
    service: Service | None,
    telemetry: Telemetry,
    *,
    health: Callable[[], tuple[bool, dict]],
    api_key: str | None = None,
    limits: proto.Limits | None = None,
) -> FastAPI:
    """`service` None: a worker host's app (/health and /metrics only)."""
    limits = limits or proto.Limits()
    app = FastAPI(title="ltx-serve", docs_url=None, redoc_url=None, openapi_url=None)

    def reply(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        return JSONResponse(proto.error_body(message, kind, code), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return reply(exc.status, exc.message, exc.kind, exc.code)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return reply(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_query(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return reply(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return reply(
            exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        )

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        limit = service.max_queue if service is not None else "?"
        return reply(429, f"the queue is full ({limit} jobs waiting or running); retry later",
                     "rate_limit_exceeded", "queue_full")  # fmt: skip

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable):
        return reply(503, f"the job store is unreachable ({exc}); retry shortly", "server_error", "store_unavailable")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "")
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                    return reply(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                 "invalid_request_error", "invalid_api_key")  # fmt: skip
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
                return reply(413, f"the request body is larger than the limit of {limits.max_body_bytes} bytes")
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug of ours: the traceback logged once, the client told in one line
            log.error("internal error on %s %s", request.method, path, exc_info=exc)
            response = reply(500, f"internal error: {type(exc).__name__} (a bug in ltx-serve, not in your request)",
                             "server_error")  # fmt: skip
        route = request.scope.get("route")
        telemetry.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    @app.get("/health")
    def _health():
        ready, detail = health()
        return JSONResponse({"status": "ready" if ready else "loading", **detail}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def _metrics():
        return Response(telemetry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if service is None:
        return app

    def job_or_404(video_id: str):
        if not _VIDEO_ID.match(video_id):
            raise ApiError(404, f"no video {video_id[:80]!r}", "not_found_error")
        job = service.store.get(video_id)
        if job is None:
            raise ApiError(404, f"no video {video_id}", "not_found_error")
        return job

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"the request body is larger than the limit of {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # starlette's form parser reads the cached body: the stream is consumed
        return body

    async def read_fields(request: Request) -> tuple[dict, bytes | None]:
        body = await read_body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image = None
        if kind == "application/json" or (not kind and body[:1] == b"{"):
            import json

            try:
                data = json.loads(body or b"null")
            except ValueError as exc:
                raise UserError(f"the body is not valid JSON ({exc.msg} at character {exc.pos})") from None
            fields = proto.fields_from_json(data)
            ref = fields.pop("input_reference", None)
            if ref is not None:
                if not isinstance(ref, dict) or "image_url" not in ref:
                    raise UserError('input_reference: in JSON send {"image_url": "data:image/png;base64,..."}')
                image = proto.decode_data_url(str(ref["image_url"]))
            return fields, image
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=1, max_fields=200, max_part_size=limits.max_body_bytes)
            except Exception as exc:  # starlette's MultiPartException and the parser's own errors
                raise UserError(f"the form body does not parse ({exc})") from None
            items = []
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    if key != "input_reference":
                        raise UserError(f"{key[:40]}: a file part; only input_reference takes a file")
                    image = await value.read()
                    continue
                items.append((key, value))
            fields = proto.fields_from_form(items)
            ref = fields.pop("input_reference", None)
            if ref is not None:
                if image is not None:
                    raise UserError("input_reference: given twice (a file and a field); send one")
                if not isinstance(ref, dict) or set(ref) - {"image_url", "file_id"}:
                    raise UserError("input_reference: upload the image as a file part")
                if "file_id" in ref:
                    raise UserError("input_reference[file_id]: this server has no file store; upload the image")
                image = proto.decode_data_url(str(ref.get("image_url", "")))
            return fields, image
        raise ApiError(415, f"content type {kind or '(none)'}: send multipart/form-data or application/json")

    @app.post("/v1/videos")
    async def create(request: Request):
        fields, image = await read_fields(request)
        job = await run_in_threadpool(service.submit, fields, image)
        return JSONResponse(service.video(job))

    @app.get("/v1/videos")
    def list_videos(after: str | None = None, limit: int = 20, order: str = "desc"):
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit {limit}: must be between 1 and 100")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order {order[:20]!r}: must be asc or desc")
        if after is not None and not _VIDEO_ID.match(after):
            raise ApiError(400, f"after {after[:80]!r}: not a video id")
        return service.list(after, limit, order)

    @app.get("/v1/videos/{video_id}")
    def retrieve(video_id: str):
        return service.video(job_or_404(video_id))

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, variant: str = "video"):
        job = job_or_404(video_id)
        if variant != "video":
            raise ApiError(400, f"variant {variant[:20]!r}: this server has the video only (variant=video)")
        if job.status != "completed" or not job.output:
            raise ApiError(409, f"video {video_id} is {job.status}: its content is there once it is completed",
                           code="video_not_ready")  # fmt: skip
        size = service.outputs.size(job.output)
        if size is None:
            raise ApiError(404, f"video {video_id}: its file is gone from the output store", "not_found_error")
        return StreamingResponse(
            iter_chunks(service.outputs.open(job.output)),
            media_type="video/mp4",
            headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{video_id}.mp4"'},
        )

    @app.delete("/v1/videos/{video_id}")
    def delete(video_id: str):
        return service.delete(job_or_404(video_id))

    @app.post("/v1/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request):
        fields, image = await read_fields(request)
        if image is not None:
            raise UserError("remix takes a prompt, not an input_reference")
        if not _VIDEO_ID.match(video_id):
            raise ApiError(404, f"no video {video_id[:80]!r}", "not_found_error")
        job = await run_in_threadpool(service.remix, video_id, fields)
        if job is None:
            raise ApiError(404, f"no video {video_id}", "not_found_error")
        return JSONResponse(service.video(job))

    return app
