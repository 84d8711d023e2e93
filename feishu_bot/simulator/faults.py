"""Scripted failures for HTTP requests to the simulator (`FeishuSimulator.fail_next`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

__all__ = ["FaultRule", "Faults"]

_DEFAULT_CODES = {429: 99991400}
_DEFAULT_MSGS = {
    429: "request trigger frequency limit",
    500: "internal error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


@dataclass(slots=True)
class FaultRule:
    """Answer the next `remaining` requests matching `method` and `path_regex` with a failure.

    `method` "*" matches every method; `path_regex` is searched in the request path (no query).
    Without `body`, the answer is JSON ``{"code": code, "msg": ...}`` (code defaults to
    99991400 for 429 and to the HTTP status otherwise); a str/bytes `body` is sent as is, which
    is how to produce a non-JSON 500.
    """

    method: str
    path_regex: str
    status: int = 500
    code: int | None = None
    remaining: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    body: str | bytes | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method == "*" or self.method.upper() == method.upper())
            and re.search(self.path_regex, path) is not None
        )

    def render(self) -> tuple[int, bytes, str, dict[str, str]]:
        """(status, body bytes, content type, headers) of the failure answer."""
        if self.body is not None:
            raw = self.body.encode() if isinstance(self.body, str) else self.body
            return self.status, raw, "text/plain", dict(self.headers)
        code = self.code if self.code is not None else _DEFAULT_CODES.get(self.status, self.status)
        msg = _DEFAULT_MSGS.get(self.status, "simulated failure")
        raw = json.dumps({"code": code, "msg": msg}).encode()
        return self.status, raw, "application/json", dict(self.headers)


class Faults:
    """The ordered list of pending fault rules; the first matching rule is consumed."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                rule.hits += 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                return rule
        return None

    def clear(self) -> None:
        self.rules.clear()
