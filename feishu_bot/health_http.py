"""The HTTP health endpoint: `GET /healthz` (JSON, 200 or 503) and `GET /metrics`.

Bound to HEALTH_HOST (127.0.0.1 by default); started only when HEALTH_PORT is set. It reads
state through callables and never changes anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from feishu_bot.metrics import CONTENT_TYPE, BotMetrics

__all__ = ["HealthServer"]


class HealthServer:
    """Serves health and metrics; `start()` binds, `stop()` closes."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        status: Callable[[], Awaitable[dict[str, Any]]],
        metrics: BotMetrics,
    ) -> None:
        self._host = host
        self._port = port
        self._status = status
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._render_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # port 0: learn the real one
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        body = await self._status()
        return web.json_response(body, status=200 if body.get("healthy") else 503)

    async def _render_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})
