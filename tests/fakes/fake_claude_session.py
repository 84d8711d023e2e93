"""Part of the fake ``claude`` script: session transcripts, where the real CLI keeps them.

``$HOME/.claude/projects/<cwd, non-alphanumerics as ->/<session id>.jsonl``, one JSON object
per record: ``{"role": "user", "kind": "prompt", "text", "uuid", "images"}`` (written before the
"API call", like the real CLI), ``{"role": "assistant", "text", "uuid"}`` (the same uuid as the
printed assistant line), ``{"role": "user", "kind": "interrupt"}`` after an interruption, and
``{"role": "assistant", "synthetic": true, "drops": <prompt uuid> | null}`` after an API error.

Measured on 2.1.329 and kept here: a turn that failed with an API error before any tool ran is
left out of what the model sees next (``drops`` names its prompt); once a tool ran, the turn
stays. A turn that crashed leaves its prompt in, so a plain ``--resume`` retry shows it twice;
``--resume-session-at <assistant uuid>`` cuts the history after that assistant record.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STALE_MESSAGE = "No conversation found with session ID: {sid}"
NO_MESSAGE = "No message found with message.uuid of: {uuid}"


class StartupError(Exception):
    """The CLI refuses to start: ``stdout_error`` goes in a result line, ``stderr`` always."""

    def __init__(self, stderr: str, *, stdout_error: str | None = None, sid: str = "") -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.stdout_error = stdout_error
        self.sid = sid


def session_dir(cwd: str) -> Path:
    home = Path(os.environ.get("HOME", "/tmp"))
    munged = "".join(c if c.isalnum() else "-" for c in cwd)
    return home / ".claude" / "projects" / munged


def session_path(cwd: str, sid: str) -> Path:
    return session_dir(cwd) / f"{sid}.jsonl"


def load(cwd: str, sid: str) -> list[dict[str, Any]] | None:
    path = session_path(cwd, sid)
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(cwd: str, sid: str, records: list[dict[str, Any]], *, append: bool) -> None:
    path = session_path(cwd, sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@dataclass
class Session:
    """The conversation this process works on (its records mirror the transcript file)."""

    cwd: str
    sid: str
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, *records: dict[str, Any]) -> None:
        self.records.extend(records)
        write(self.cwd, self.sid, list(records), append=True)

    def prompts(self) -> list[str]:
        """The user prompts the model would see now (failed-before-any-tool turns left out)."""
        dropped = {r.get("drops") for r in self.records if r.get("synthetic")}
        return [
            r["text"]
            for r in self.records
            if r.get("role") == "user"
            and r.get("kind", "prompt") == "prompt"
            and (r.get("uuid") is None or r.get("uuid") not in dropped)
        ]

    @classmethod
    def open(
        cls,
        cwd: str,
        *,
        resume: str | None,
        fork: bool,
        at_uuid: str | None,
        session_id: str | None,
        stale: bool = False,
    ) -> Session:
        """Resolve the session like the CLI does at start-up; raise ``StartupError`` if refused."""
        if session_id is not None:
            if resume and not fork:
                raise StartupError(
                    "Error: --session-id with --continue or --resume also needs --fork-session."
                )
            if not _is_uuid(session_id):
                raise StartupError("Error: Invalid session ID. Must be a valid UUID.")
            if session_path(cwd, session_id).exists():
                raise StartupError(f"Error: Session ID {session_id} is already in use.")
        if not resume:
            sid = session_id or os.environ.get("FAKE_CLAUDE_SESSION_ID") or str(uuid.uuid4())
            return cls(cwd, sid)
        loaded = None if stale else load(cwd, resume)
        if loaded is None:
            message = STALE_MESSAGE.format(sid=resume)
            raise StartupError(message, stdout_error=message, sid=resume)
        truncated = False
        if at_uuid:
            cut = next((i for i, r in enumerate(loaded) if r.get("uuid") == at_uuid), None)
            if cut is None or loaded[cut].get("role") != "assistant":
                message = NO_MESSAGE.format(uuid=at_uuid)
                raise StartupError(message, stdout_error=message, sid=resume)
            truncated = cut + 1 < len(loaded)
            loaded = loaded[: cut + 1]
        if fork:
            # Forks once, at start: every later turn of this process appends to the new id.
            sid = session_id or str(uuid.uuid4())
            write(cwd, sid, loaded, append=False)
        else:
            sid = resume
            if truncated:
                # The real transcript is a tree and a later --resume follows the newest branch;
                # rewriting the file gives the same view.
                write(cwd, sid, loaded, append=False)
        return cls(cwd, sid, list(loaded))
