"""What decides the exit code around start-up: Feishu calls retried until they work, a clear
refusal of the credentials, a database the bot cannot use, a gateway that failed for good.

Exit codes (see `feishu_bot.__main__`): 2 means "an operator must fix something" and makes
pm2 (`stop_exit_codes: [2]`) and systemd (`RestartPreventExitStatus=2`) stop restarting, so it
is reserved for what a restart cannot fix: invalid configuration, credentials Feishu refuses,
a database file that is corrupt or newer than the code. Anything that may pass by itself
(timeouts, connection errors, 5xx, rate limits) is waited out here, or exits 1 so the
supervisor restarts the bot.

Nothing here builds services; `app.Bot` calls these functions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from feishu_bot.errors import FeishuApiError, FeishuTransientError, GatewayError

__all__ = [
    "CREDENTIALS_REFUSED_CODES",
    "DatabaseUnusable",
    "credentials_refused",
    "gateway_refused",
    "open_store",
    "wait_for_bot_info",
    "wait_stop_or_gateway_failure",
]

# Codes of POST /open-apis/auth/v3/tenant_access_token/internal that refuse the app itself:
# 10003 invalid param (unknown app_id), 10014 app secret invalid.
CREDENTIALS_REFUSED_CODES = frozenset({10003, 10014})
# The long connection's "too many connections" (handshake 514 + 1000040350) is fatal for the
# SDK but passes once old connections expire: not an operator's problem.
_GATEWAY_TRANSIENT_CODES = frozenset({514})

Sleep = Callable[[float], Awaitable[None]]


class _BotInfoSource(Protocol):
    async def bot_info(self) -> dict[str, Any]: ...


def credentials_refused(exc: BaseException) -> bool:
    """True when Feishu clearly refused FEISHU_APP_ID / FEISHU_APP_SECRET."""
    return isinstance(exc, FeishuApiError) and exc.code in CREDENTIALS_REFUSED_CODES


def gateway_refused(exc: GatewayError) -> bool:
    """True when the long connection was refused for a reason a restart cannot fix."""
    return bool(exc.code) and exc.code not in _GATEWAY_TRANSIENT_CODES


async def wait_for_bot_info(
    replier: _BotInfoSource,
    *,
    first_delay: float = 1.0,
    max_delay: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, Any]:
    """`replier.bot_info()`, repeated with exponential backoff until it works.

    Raises the error at once only when Feishu refused the credentials (exit 2 upstream). Every
    other failure (timeouts, connection refused, 5xx, an unexpected code) is logged and tried
    again after `first_delay`, doubling up to `max_delay`; cancel the caller to give up.
    """
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return await replier.bot_info()
        except FeishuApiError as exc:
            if credentials_refused(exc):
                raise
            # An unexpected permanent code deserves an ERROR line, a network hiccup a WARNING.
            level = "WARNING" if isinstance(exc, FeishuTransientError) else "ERROR"
            logger.log(
                level,
                "start-up: Feishu bot info not available yet (attempt {}): {}; retrying in {:g}s",
                attempt,
                exc,
                delay,
            )
        await sleep(delay)
        delay = min(delay * 2, max_delay)


class DatabaseUnusable(Exception):
    """The database file cannot be used as it is; `line` says which file and why."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"database {path}: {problem}")
        self.path = str(path)
        self.problem = problem

    @property
    def line(self) -> str:
        return str(self)


async def open_store(path: Path | str) -> Any:
    """`SessionStore.open(path)` plus a quick integrity check; `DatabaseUnusable` instead of
    the raw error when the file is corrupt, not a database, or newer than the code.

    A database that is only busy (another process holds the lock) is not "unusable": that
    error propagates unchanged and exits 1, so a restart tries again.
    """
    from database.connection import is_busy
    from database.migrations import SchemaTooNewError
    from database.store import SessionStore

    try:
        store = await SessionStore.open(path)
    except SchemaTooNewError as exc:
        raise DatabaseUnusable(
            path,
            f"schema version {exc.found} is newer than this bot supports ({exc.supported}); "
            "run a newer feishu-bot or restore a backup",
        ) from None
    except sqlite3.DatabaseError as exc:
        if is_busy(exc):
            raise
        raise DatabaseUnusable(path, _explain(exc)) from None
    try:
        problems = await store.quick_check()
    except sqlite3.DatabaseError as exc:
        await store.close()
        if is_busy(exc):
            raise
        raise DatabaseUnusable(path, _explain(exc)) from None
    if problems:
        await store.close()
        raise DatabaseUnusable(
            path, f"corrupt ({problems[0]}); restore a backup or move the file away"
        )
    return store


def _explain(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"corrupt or not a SQLite database ({text}); restore a backup or move it away"
    return f"cannot be opened ({text})"


async def wait_stop_or_gateway_failure(stop: asyncio.Event, gateway: Any) -> GatewayError | None:
    """Wait for a stop request or for the gateway to fail for good; the failure, or None."""
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
    failed: asyncio.Future[Any] | None = None
    if gateway is not None and hasattr(gateway, "wait_failed"):
        failed = asyncio.ensure_future(gateway.wait_failed())
        waiters.add(failed)
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if failed is not None and failed.done() and not failed.cancelled():
        error = failed.exception() or failed.result()
        return error if isinstance(error, GatewayError) else GatewayError(str(error))
    return None
