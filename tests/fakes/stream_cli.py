"""Drive a Claude CLI (the real one or ``fake_claude.py``) over stream-json from a test.

::

    cli = await StreamCli.start(FAKE_CLAUDE_BIN, cwd=path, env=env, partial=True)
    result = await cli.turn("hello")                     # write a user message, read to result
    req = await cli.until(lambda o: o["type"] == "control_request")
    await cli.respond(req, {"behavior": "allow", "updatedInput": req["request"]["input"]})
    rc = await cli.close()                               # close stdin, wait for the exit

Every line read is kept in ``lines``; ``until`` returns the first new line matching.
``FakeWorld`` sets up HOME, cwd, temp dir and log for ``fake_claude.py`` and starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.claude_env import FAKE_CLAUDE_BIN
from tests.fakes.fake_claude_log import FakeClaudeLog

__all__ = ["FakeWorld", "StreamCli", "user_message"]

Line = dict[str, Any]


def user_message(content: str | list[dict[str, Any]]) -> Line:
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": "default",
    }


class StreamCli:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Line] = []
        self._ids = 0

    @classmethod
    async def start(
        cls,
        bin_path: str | os.PathLike[str],
        *args: str,
        cwd: Path,
        env: dict[str, str],
        partial: bool = False,
        stdio: bool = True,
    ) -> StreamCli:
        argv = ["--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
        if partial:
            argv.append("--include-partial-messages")
        if stdio:
            argv += ["--permission-prompt-tool", "stdio"]
        proc = await asyncio.create_subprocess_exec(
            str(bin_path),
            *argv,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            limit=64 * 1024 * 1024,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, obj: Line | str) -> None:
        assert self.proc.stdin is not None
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self.proc.stdin.write(data.encode() + b"\n")
        await self.proc.stdin.drain()

    async def user(self, content: str | list[dict[str, Any]]) -> None:
        await self.send(user_message(content))

    async def control(self, subtype: str, **fields: Any) -> str:
        """Send a control_request; returns its request_id."""
        self._ids += 1
        request_id = f"req_{self._ids}_test"
        await self.send(
            {
                "type": "control_request",
                "request_id": request_id,
                "request": {"subtype": subtype, **fields},
            }
        )
        return request_id

    async def respond(self, request: Line, payload: Line, *, error: str | None = None) -> None:
        """Answer a control_request of the CLI (success with ``payload``, or an error)."""
        response: Line = {"subtype": "success", "request_id": request["request_id"]}
        if error is None:
            response["response"] = payload
        else:
            response = {"subtype": "error", "request_id": request["request_id"], "error": error}
        await self.send({"type": "control_response", "response": response})

    async def until(self, predicate: Callable[[Line], Any], timeout: float = 30) -> Line:
        """Read lines until one matches; ``EOFError`` if stdout ends first."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise EOFError("the CLI closed stdout")
                line = json.loads(raw)
                self.lines.append(line)
                if predicate(line):
                    return line

    async def result(self, timeout: float = 30) -> Line:
        return await self.until(lambda o: o["type"] == "result", timeout)

    async def turn(self, content: str | list[dict[str, Any]], timeout: float = 30) -> Line:
        await self.user(content)
        return await self.result(timeout)

    async def rest(self, timeout: float = 30) -> list[Line]:
        """Every line until stdout closes."""
        out: list[Line] = []
        try:
            while True:
                out.append(await self.until(lambda o: True, timeout))
        except EOFError:
            return out

    async def close(self, timeout: float = 30) -> int:
        """Close stdin and wait for the exit code."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@dataclass
class FakeWorld:
    """A throwaway HOME, cwd, temp dir and FAKE_CLAUDE_LOG for ``fake_claude.py`` runs."""

    root: Path
    started: list[StreamCli] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path in (self.home, self.cwd, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def log(self) -> FakeClaudeLog:
        return FakeClaudeLog(self.root / "fake_claude.log")

    def env(self, **fake: str) -> dict[str, str]:
        """``os.environ`` plus the world; ``MODE="slow"`` sets ``FAKE_CLAUDE_MODE`` etc."""
        return {
            **os.environ,
            "HOME": str(self.home),
            "CLAUDE_CODE_TMPDIR": str(self.tmp),
            "FAKE_CLAUDE_LOG": str(self.root / "fake_claude.log"),
            "FAKE_CLAUDE_STATE": str(self.root / "fake_claude.state"),
            **{f"FAKE_CLAUDE_{key}": value for key, value in fake.items()},
        }

    async def start(
        self, *args: str, partial: bool = False, stdio: bool = True, **fake: str
    ) -> StreamCli:
        cli = await StreamCli.start(
            FAKE_CLAUDE_BIN, *args, cwd=self.cwd, env=self.env(**fake), partial=partial, stdio=stdio
        )
        self.started.append(cli)
        return cli

    async def aclose(self) -> None:
        for cli in self.started:
            cli.kill()
            await cli.proc.wait()
