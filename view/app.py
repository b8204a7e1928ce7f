"""`sclvi view`: the operator's live page (Starlette, server-sent events, one static HTML file).

Shows the last parts (image with the heatmap tinted red, verdict, score against threshold, defect
boxes), OK / NG / NOT_INSPECTED counters and yield over time, per-stage latency, alarms and the drift
watch; pause / resume and a threshold change go to the runtime's control socket and need the operator's
token (the runtime's `control_token`: the view does not store it, the operator types it). Loopback by
default.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from sclvi.edge.config import RuntimeConfig
from sclvi.edge.control_client import ask_control, control_keys
from sclvi.view.feed import TelemetryFeed

STATIC = Path(__file__).parent / "static"
#: Commands the page may send (the runtime checks the token).
COMMANDS = ("pause", "resume", "set_threshold", "status")


def build_app(cfg: RuntimeConfig, feed: TelemetryFeed) -> Starlette:
    async def index(_: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def state(_: Request) -> JSONResponse:
        return JSONResponse(feed.snapshot())

    async def events(request: Request) -> StreamingResponse:
        async def stream():
            version, quiet = -1, 0.0
            while not await request.is_disconnected():  # polls: no thread per client, nothing left at shutdown
                if feed.version != version:
                    version = feed.version
                    yield f"data: {json.dumps(feed.snapshot())}\n\n"
                    quiet = 0.0
                elif quiet > 15:
                    yield ": keep-alive\n\n"  # proxies close silent streams
                    quiet = 0.0
                else:
                    await asyncio.sleep(0.05)
                    quiet += 0.05

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def command(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"ok": False, "error": "expected a JSON body"}, status_code=400)
        if not isinstance(body, dict) or body.get("cmd") not in COMMANDS:
            return JSONResponse({"ok": False, "error": f"cmd must be one of {', '.join(COMMANDS)}"}, status_code=400)
        reply = await asyncio.to_thread(ask_control, cfg, body)
        return JSONResponse(reply, status_code=200 if reply.get("ok", True) else 403)

    routes = [Route("/", index), Route("/api/state", state), Route("/events", events),
              Route("/api/command", command, methods=["POST"])]
    return Starlette(routes=routes)


def _feed(cfg: RuntimeConfig) -> TelemetryFeed:
    """The started telemetry feed of the station `cfg` describes."""
    if not cfg.telemetry_endpoint:
        from sclvi.errors import ConfigError

        raise ConfigError("the view needs the runtime's telemetry_endpoint (heartbeats and previews)")
    feed = TelemetryFeed(cfg.telemetry_endpoint, curve_keys=control_keys(cfg))
    feed.start()
    return feed


def serve(cfg: RuntimeConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the view until interrupted (`sclvi view`)."""
    import uvicorn

    feed = _feed(cfg)
    try:
        uvicorn.run(build_app(cfg, feed), host=host, port=port, log_level="warning")
    finally:
        feed.stop()


class BackgroundView:
    """The view in a thread of this process (`sclvi demo`, tests): serving when the constructor returns."""

    def __init__(self, cfg: RuntimeConfig, host: str = "127.0.0.1", port: int = 8080, start_timeout_s: float = 20) -> None:
        import threading
        import time

        import uvicorn

        self.feed = _feed(cfg)
        self.server = uvicorn.Server(uvicorn.Config(build_app(cfg, self.feed), host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="view", daemon=True)
        self.thread.start()
        end = time.time() + start_timeout_s
        while not self.server.started and time.time() < end:
            time.sleep(0.05)
        self.url = f"http://{host}:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.feed.stop()
