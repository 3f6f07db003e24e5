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


def _reply(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    """Every error leaves in OpenAI's one-line shape, whichever handler raised it."""
    return JSONResponse(proto.error_body(message, kind, code), status_code=status)


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
    _add_error_handlers(app, service)
    _add_guard(app, telemetry, api_key, limits)
    _add_probe_routes(app, telemetry, health)
    if service is None:
        return app
    _add_video_routes(app, service, limits)
    return app


def _add_error_handlers(app: FastAPI, service: Service | None) -> None:
    """Map our exceptions and FastAPI's own to 4xx/5xx replies, so no route has to catch them."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _reply(exc.status, exc.message, exc.kind, exc.code)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return _reply(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_query(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return _reply(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _reply(
            exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        )

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        limit = service.max_queue if service is not None else "?"
        return _reply(429, f"the queue is full ({limit} jobs waiting or running); retry later",
                      "rate_limit_exceeded", "queue_full")  # fmt: skip

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable):
        return _reply(503, f"the job store is unreachable ({exc}); retry shortly", "server_error", "store_unavailable")


def _add_guard(app: FastAPI, telemetry: Telemetry, api_key: str | None, limits: proto.Limits) -> None:
    """One middleware for what every request passes: the API key, the body-size limit, the 500 for a bug
    of ours, and the per-route request counter."""

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "")
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                    return _reply(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                  "invalid_request_error", "invalid_api_key")  # fmt: skip
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
                return _reply(413, f"the request body is larger than the limit of {limits.max_body_bytes} bytes")
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug of ours: the traceback logged once, the client told in one line
            log.error("internal error on %s %s", request.method, path, exc_info=exc)
            response = _reply(500, f"internal error: {type(exc).__name__} (a bug in ltx-serve, not in your request)",
                              "server_error")  # fmt: skip
        route = request.scope.get("route")
        telemetry.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response


def _add_probe_routes(app: FastAPI, telemetry: Telemetry, health: Callable[[], tuple[bool, dict]]) -> None:
    """/health and /metrics: what every host serves, a worker host included."""

    @app.get("/health")
    def _health():
        ready, detail = health()
        return JSONResponse({"status": "ready" if ready else "loading", **detail}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def _metrics():
        return Response(telemetry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _job_or_404(service: Service, video_id: str):
    """A malformed id is a 404 like a missing one, and never reaches the store."""
    if not _VIDEO_ID.match(video_id):
        raise ApiError(404, f"no video {video_id[:80]!r}", "not_found_error")
    job = service.store.get(video_id)
    if job is None:
        raise ApiError(404, f"no video {video_id}", "not_found_error")
    return job


async def _read_body(request: Request, limits: proto.Limits) -> bytes:
    """Read the body under the size limit even when no Content-Length announced it (chunked uploads)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise ApiError(413, f"the request body is larger than the limit of {limits.max_body_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette's form parser reads the cached body: the stream is consumed
    return body


async def _read_fields(request: Request, limits: proto.Limits) -> tuple[dict, bytes | None]:
    """The request's fields and its reference image, from JSON or a form alike."""
    body = await _read_body(request, limits)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or (not kind and body[:1] == b"{"):
        return _json_fields(body)
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _form_fields(request, limits)
    raise ApiError(415, f"content type {kind or '(none)'}: send multipart/form-data or application/json")


def _json_fields(body: bytes) -> tuple[dict, bytes | None]:
    """A JSON body: the image can only come as a data URL in input_reference.image_url."""
    import json

    image = None
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


async def _form_fields(request: Request, limits: proto.Limits) -> tuple[dict, bytes | None]:
    """A form body: the image comes as the one file part, or as a data URL field (not both)."""
    image = None
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


def _add_video_routes(app: FastAPI, service: Service, limits: proto.Limits) -> None:
    """OpenAI's /v1/videos routes: create, list, retrieve, content, delete, remix."""

    @app.post("/v1/videos")
    async def create(request: Request):
        fields, image = await _read_fields(request, limits)
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
        return service.video(_job_or_404(service, video_id))

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, variant: str = "video"):
        job = _job_or_404(service, video_id)
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
        return service.delete(_job_or_404(service, video_id))

    @app.post("/v1/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request):
        fields, image = await _read_fields(request, limits)
        if image is not None:
            raise UserError("remix takes a prompt, not an input_reference")
        if not _VIDEO_ID.match(video_id):
            raise ApiError(404, f"no video {video_id[:80]!r}", "not_found_error")
        job = await run_in_threadpool(service.remix, video_id, fields)
        if job is None:
            raise ApiError(404, f"no video {video_id}", "not_found_error")
        return JSONResponse(service.video(job))
