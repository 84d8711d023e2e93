"""Logging: loguru sinks, the stdlib intercept and the redaction filter.

`configure_logging()` is called once by the entry point; importing this module does nothing.
With a log directory, the rotating file gets every line at the configured level and stderr
only warnings and errors: a supervisor that captures stderr (pm2 writes it to files it never
rotates) would otherwise keep a second, unbounded copy of the whole log.
Every record passes through `redact()` before any sink sees it, so the app secret, tenant/app
access tokens and websocket `access_key`/`ticket` values never reach stderr or the log files,
whichever library produced the record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["Redactor", "configure_logging"]

_PATTERNS = (
    # websocket URL query values and any key=value form of these names
    re.compile(r"(?i)((?:access_key|ticket|app_secret|appsecret|secret)=)([^&\s\"']+)"),
    # JSON / dict renderings: "tenant_access_token": "t-xxx"
    re.compile(
        r"(?i)([\"']?(?:tenant_access_token|app_access_token|user_access_token|access_token"
        r"|app_secret|AppSecret|ticket|access_key)[\"']?\s*[:=]\s*[\"']?)([^\"',}\s&]+)"
    ),
    re.compile(r"(?i)(Bearer\s+)([A-Za-z0-9._\-]+)"),
    # Feishu token shapes, wherever they appear
    re.compile(r"()\b([tu]-[A-Za-z0-9_\-]{16,})"),
)


class Redactor:
    """Masks known secrets and secret-shaped values in log text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        return text


class _InterceptHandler(logging.Handler):
    """Routes stdlib `logging` records (the Lark SDK, aiohttp, asyncio) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).bind(lib=record.name).log(
            level, record.getMessage()
        )


def _route_stdlib(level: str) -> None:
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    # The Lark SDK adds its own stdout handler when it is imported (possibly later, in the
    # gateway thread) and that handler prints the ws URL with its ticket: make the logger
    # refuse foreign handlers so every SDK record goes through our redaction.
    for name in ("Lark", "lark_oapi"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers = [_InterceptHandler()]
        lib_logger.propagate = False
        lib_logger.addHandler = _refuse_handler  # type: ignore[method-assign]
    for noisy in ("aiohttp.access", "aiosqlite", "websockets", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _refuse_handler(handler: logging.Handler) -> None:
    """Stands in for `Logger.addHandler` on the SDK's logger."""


def _json_formatter(record: dict[str, Any]) -> str:
    payload = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "module": record["name"],
        **{k: v for k, v in record["extra"].items() if isinstance(v, str | int | float | bool)},
    }
    if record["exception"] is not None:
        payload["exception"] = record["extra"].get("_exc_text", "")
    record["extra"]["_json"] = json.dumps(payload, ensure_ascii=False)
    return "{extra[_json]}\n"


def configure_logging(
    *,
    level: str = "INFO",
    log_dir: str | Path | None = None,
    json_lines: bool = False,
    secrets: Iterable[str] = (),
    stderr: Any = None,
) -> Redactor:
    """Install the sinks once (stderr, optional rotating files) and return the redactor.

    With `log_dir`, stderr gets WARNING and above only (or `level`, if that is higher).
    """
    redactor = Redactor(secrets)

    def patch(record: dict[str, Any]) -> None:
        record["message"] = redactor(record["message"])
        extra = record["extra"]
        ctx = " ".join(f"{k}={extra[k]}" for k in ("conversation", "message_id") if k in extra)
        extra["ctx"] = f"[{ctx}] " if ctx else ""
        if record["exception"] is not None:
            import traceback

            exc = record["exception"]
            text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
            extra["_exc_text"] = redactor(text)

    logger.remove()
    logger.configure(patcher=patch)  # type: ignore[arg-type]
    fmt: Any = _json_formatter if json_lines else _text_format_redacted
    sink = stderr if stderr is not None else sys.stderr
    stderr_level: str | int = level
    if log_dir and logger.level(level.upper()).no < logger.level("WARNING").no:
        stderr_level = "WARNING"
    logger.add(
        sink, level=stderr_level, format=fmt, colorize=False, backtrace=False, diagnose=False
    )
    if log_dir:
        path = Path(log_dir)
        path.mkdir(parents=True, exist_ok=True)
        logger.add(
            path / "feishu_bot.log",
            level=level,
            format=fmt,
            rotation="10 MB",
            retention=5,
            encoding="utf-8",
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
    _route_stdlib(level)
    return redactor


def _text_format_redacted(record: dict[str, Any]) -> str:
    # loguru renders exceptions itself; ours is pre-rendered and redacted in the patcher.
    base = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[ctx]}{message}\n"
    if record["exception"] is not None:
        return base + "{extra[_exc_text]}"
    return base
