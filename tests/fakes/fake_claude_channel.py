"""Part of the fake ``claude`` script: stdin in stream-json mode and the control protocol.

A reader thread takes every stdin line while turns run, as the real CLI does: user messages
queue up for the next turn, control requests are answered at once (``interrupt``,
``initialize``, anything else gets an error response), control responses wake the turn that
asked. A non-JSON line ends the process with exit 1; EOF queues ``None``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fake_claude_wire import VERSION, emit, finish, log, new_uuid

# What a request still waiting when stdin closes gets (the real CLI then goes on with the turn).
STREAM_CLOSED = {"subtype": "error", "error": "stream closed", "closed": True}


@dataclass
class _Pending:
    subtype: str
    done: threading.Event = field(default_factory=threading.Event)
    response: dict[str, Any] | None = None
    cancelled: bool = False


class Channel:
    """Control traffic of one process; ``stdio`` is False in one-shot text mode (no stdin)."""

    def __init__(self, *, stdio: bool, permission_mode: str = "default") -> None:
        self.stdio = stdio
        self.permission_mode = permission_mode
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.interrupt = threading.Event()
        self.deaf = False  # hang_deaf: acknowledge interrupts, never act on them
        self.turn_active = False
        self.closed = False
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ turn side
    def begin_turn(self) -> None:
        self.deaf = False
        self.interrupt.clear()
        self.turn_active = True

    def end_turn(self) -> None:
        self.turn_active = False

    def request(
        self, subtype: str, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Send a control_request and wait for its response (``None`` when interrupted).

        The response is the ``response`` object of the control_response: ``{"subtype":
        "success", "response": {...}}`` or ``{"subtype": "error", "error": "..."}``. Without
        ``timeout`` it waits for ever, like the real CLI does for ``can_use_tool``; after
        ``timeout`` seconds it returns an error response of its own.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        request_id = new_uuid()
        pending = _Pending(subtype)
        with self._lock:
            self._pending[request_id] = pending
            if self.closed:
                pending.response = dict(STREAM_CLOSED)
                pending.done.set()
        emit(
            {
                "type": "control_request",
                "request_id": request_id,
                "request": {"subtype": subtype, **fields},
            }
        )
        try:
            while not pending.done.wait(0.01):
                if self.interrupt.is_set() and not self.deaf:
                    return None
                if deadline is not None and time.monotonic() > deadline:
                    log("control_timeout", subtype=subtype, request_id=request_id)
                    return {"subtype": "error", "error": "timed out"}
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        return None if pending.cancelled else pending.response

    # ------------------------------------------------------------------ reader thread
    def start(self) -> None:
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def _read(self) -> None:
        for raw in sys.stdin.buffer:
            line = raw.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                sys.stderr.write(
                    f"Error parsing streaming input line (type=unknown, {len(line)} chars): "
                    "SyntaxError\n"
                )
                finish(1, reason="non-JSON stdin line")
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "user":
                self.inbox.put(msg)
            elif kind == "control_request":
                self._on_request(msg)
            elif kind == "control_response":
                self._on_response(msg)
            elif kind == "control_cancel_request":
                log("control", type=kind, request_id=msg.get("request_id"))
        # Whether a turn was running when stdin closed: a launcher must never close a busy one.
        log("stdin_eof", turn_active=self.turn_active)
        with self._lock:
            self.closed = True
            for pending in self._pending.values():
                pending.response = dict(STREAM_CLOSED)
                pending.done.set()
        self.inbox.put(None)

    def _on_request(self, msg: dict[str, Any]) -> None:
        request_id = msg.get("request_id")
        request = msg.get("request") if isinstance(msg.get("request"), dict) else {}
        subtype = request.get("subtype")
        log("control", type="control_request", subtype=subtype, request_id=request_id)
        if subtype == "interrupt":
            with self._lock:
                for pid, pending in self._pending.items():
                    if self.turn_active and not self.deaf and not pending.cancelled:
                        # Measured order: the cancel first, then the interrupt's response.
                        pending.cancelled = True
                        emit({"type": "control_cancel_request", "request_id": pid})
            self._answer(request_id, {"still_queued": []})
            if self.turn_active:
                self.interrupt.set()
        elif subtype == "initialize":
            self._answer(request_id, _initialize_response(self.permission_mode))
        elif subtype == "set_permission_mode" and isinstance(request.get("mode"), str):
            self.permission_mode = request["mode"]
            self._answer(request_id, {"mode": request["mode"]})
        elif subtype == "set_model":
            self._answer(request_id, {"model": request.get("model")})
        else:
            emit(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "error",
                        "request_id": request_id,
                        "error": f"Unsupported control request subtype: {subtype}",
                        "error_code": "unsupported_request",
                    },
                }
            )

    def _on_response(self, msg: dict[str, Any]) -> None:
        response = msg.get("response") if isinstance(msg.get("response"), dict) else {}
        request_id = response.get("request_id")
        inner = response.get("response") if isinstance(response.get("response"), dict) else {}
        log(
            "control",
            type="control_response",
            request_id=request_id,
            subtype=response.get("subtype"),
            behavior=inner.get("behavior"),
        )
        with self._lock:
            pending = self._pending.get(request_id) if isinstance(request_id, str) else None
            if pending is not None:
                pending.response = response
                pending.done.set()

    @staticmethod
    def _answer(request_id: Any, payload: dict[str, Any]) -> None:
        emit(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": payload},
            }
        )


def _initialize_response(permission_mode: str) -> dict[str, Any]:
    """A short version of the real answer (which lists every command, agent and model)."""
    return {
        "commands": [],
        "agents": [],
        "output_style": "default",
        "available_output_styles": ["default"],
        "models": [{"value": "default", "resolvedModel": "claude-opus-5-5"}],
        "account": {"tokenSource": "none", "apiKeySource": "ANTHROPIC_API_KEY"},
        "pid": os.getpid(),
        "claude_code_version": VERSION,
        "current_permission_mode": permission_mode,
        "session_state": "idle",
    }
