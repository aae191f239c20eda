"""The HTTP door of a front-end worker: OpenAI-compatible completions, models, health and metrics.

Served by the same worker process as the gRPC API, on its own port (`http_port`, shared by all workers
of a `flint serve` through SO_REUSEPORT like the gRPC port). A completion runs through
`FlintServicer.start_request` exactly as a gRPC one does (same validation, routing, admission, Redis
records, journal and tenant), and the `RequestOwner`'s events are rendered by flint.frontend.openai_api.

Routes:
  POST /v1/completions        FIM completion (`prompt` = before the cursor, `suffix` = after it)
  POST /v1/chat/completions   an edit: instruction + ``` fenced code in the last user message
  GET  /v1/models             the models the replicas serve
  GET  /health                200 when Redis answers and a replica is routable, else 503 (flint.observability.health)
  GET  /metrics               Prometheus text, all workers of this `flint serve` together
With API keys configured, /v1/* needs `Authorization: Bearer <flint API key>`; /health and /metrics
stay open for probes and scrapers, as gRPC health does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web

from flint.errors import FlintError, InvalidArgument, Unauthenticated, Unavailable
from flint.frontend import events as ev
from flint.frontend import openai_api as oai
from flint.frontend.outbox import Outbox
from flint.frontend.validate import request_id_of
from flint.grpc_status import as_flint_error, logged
from flint.observability.metrics import metrics
from flint.security.context import reset_tenant, set_tenant

log = logging.getLogger(__name__)

class HttpDoor:
    def __init__(self, *, servicer, pool, readiness, keys=None, host: str, port: int, reuse_port: bool,
                 write_timeout_s: float = 60.0):
        self.servicer, self.pool, self.readiness, self.keys = servicer, pool, readiness, keys
        self.host, self.port, self.reuse_port = host, port, reuse_port
        self.write_timeout_s = write_timeout_s   # security.http_write_timeout_s: a stalled stream is cut
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._active: set[asyncio.Task] = set()     # requests in flight, drained on stop

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> int:
        # handler_cancellation: a client that disconnects cancels its handler, which cancels the request
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_port=self.reuse_port)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]   # port 0: the one the kernel chose
        return self.port

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting connections, give requests in flight `grace_s` to finish, then close."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        if self._site is not None and self._site._server is not None:
            self._site._server.close()                 # no new connections; running streams go on
        if self._active and grace_s > 0:
            await asyncio.wait(set(self._active), timeout=grace_s)
        await runner.cleanup()

    # ------------------------------------------------------------ middlewares
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except FlintError as exc:
            status, body = oai.error_of(exc)
            return web.json_response(body, status=status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return web.json_response(oai.error_body(exc.status, exc.reason), status=exc.status)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug: the client gets an id to report, the log gets the trace
            message = logged("internal error", f"HTTP {request.path}: {type(exc).__name__}: {exc}",
                             level=logging.ERROR, exc=exc)
            return web.json_response(oai.error_body(500, message), status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not request.path.startswith("/v1/") or self.keys is None:   # no keys configured: tenant "" as on gRPC
            return await handler(request)
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = set_tenant(await self._tenant(key))
        try:
            # a key revoked while its stream runs ends the stream (and so the request), as on gRPC
            with self.keys.watch(key, asyncio.current_task().cancel):
                return await handler(request)
        except FlintError as exc:  # the client's view of it (its own request ids), while the tenant is bound
            raise as_flint_error(exc) from exc
        finally:
            reset_tenant(token)

    async def _tenant(self, key: str) -> str:
        if not key:
            raise Unauthenticated("no API key sent: pass `Authorization: Bearer <key>` (a flint API key, "
                                  "`flint keys create`)")
        try:
            tenant = await self.keys.tenant_of(key)
        except Exception as exc:  # Redis down: the key cannot be checked now
            raise Unavailable(logged("API keys cannot be checked right now; retry shortly",
                                     f"API key lookup failed: {type(exc).__name__}: {exc}"), retry_after_ms=1000)
        if tenant is None:
            raise Unauthenticated("the API key is not valid: ask your operator for a key (`flint keys create`)")
        return tenant

    # ------------------------------------------------------------ routes
    async def health(self, request: web.Request) -> web.Response:
        serving = bool(self.readiness.serving) if self.readiness is not None else True
        reason = self.readiness.reason if self.readiness is not None else ""
        return web.json_response({"status": "ok" if serving else "unavailable", "reason": reason},
                                 status=200 if serving else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=metrics().exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        replicas = [r for r in await self.pool.replicas() if r.routable]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "flint",
                 "max_model_len": max(r.max_context_tokens for r in replicas if r.model == name)}
                for name in sorted({r.model for r in replicas})]
        return web.json_response({"object": "list", "data": data})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        msg, stream, include_usage = oai.completion_request(await _json(request))
        return await self._run(request, msg, oai.Renderer(chat=False, model="", include_usage=include_usage), stream)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        msg, stream, include_usage = oai.chat_edit_request(await _json(request))
        return await self._run(request, msg, oai.Renderer(chat=True, model="", include_usage=include_usage), stream)

    async def _run(self, request: web.Request, msg, renderer: oai.Renderer, stream: bool) -> web.StreamResponse:
        """Start the request like the gRPC edge does, render its events; leaving early cancels it."""
        renderer.model = msg.model or await self._default_model()
        task = asyncio.current_task()
        self._active.add(task)
        try:
            return await self._start(request, msg, renderer, stream)
        finally:
            self._active.discard(task)

    async def _start(self, request: web.Request, msg, renderer: oai.Renderer, stream: bool) -> web.StreamResponse:
        out = Outbox(self.servicer.buffers)   # a client that reads slowly gets merged chunks, then an error
        owner, _ = await self.servicer.start_request(msg, request_id=request_id_of(msg), session=None,
                                                     sink=out.put, arrival_unix_s=time.time(), outbox=out)
        try:
            if not stream:
                events = []
                while not ev.is_terminal(event := await out.get()):
                    events.append(event)
                if isinstance(event, ev.Failed):
                    raise event.error
                return web.json_response(renderer.response([*events, event]))
            return await self._stream(request, out, renderer)
        finally:
            await owner.cancel()   # the client went away (or the request ended): free the engine slot now

    async def _stream(self, request: web.Request, out: Outbox, renderer: oai.Renderer) -> web.StreamResponse:
        first = await out.get()          # errors before anything streamed get a proper HTTP status
        if isinstance(first, ev.Failed):
            raise first.error
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            await self._events(response, first, out, renderer)
            await self._write(response, b"data: [DONE]\n\n")
        except _Stalled:
            log.info("HTTP client %s took no write for %g s (security.http_write_timeout_s): connection cut",
                     request.remote, self.write_timeout_s)
            if request.transport is not None:
                request.transport.abort()
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _events(self, response: web.StreamResponse, event, out: Outbox, renderer: oai.Renderer) -> None:
        while True:
            if isinstance(event, ev.Failed):   # mid-stream: OpenAI-style error event, then the end
                _, body = oai.error_of(event.error)
                await self._write(response, _sse(body))
                return
            for chunk in renderer.chunks(event):
                await self._write(response, _sse(chunk))
            if isinstance(event, ev.Final):
                return
            event = await out.get()

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        """One write, cut short when it has not completed within `write_timeout_s` (the client stopped reading)."""
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await response.write(data)
        except TimeoutError:
            raise _Stalled from None

    async def _default_model(self) -> str:
        replica = await self.pool.default_model()
        return replica.model if replica is not None else ""


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class _Stalled(Exception):
    """A write to the client did not complete within the door's write timeout."""
