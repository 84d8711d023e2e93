"""Part of the fake ``claude`` script: tool calls that need the control protocol.

``bash`` (the ``perm`` mode), ``ask_user`` (``ask``), ``mcp_call`` (``mcp``) and ``edit``
(``edit_then_529``). Each prints the assistant ``tool_use`` line, asks for permission the way
CLI 2.1.329 does when its rules do not already allow the tool (``can_use_tool`` over stdio with
``--permission-prompt-tool stdio``, otherwise a plain denial), runs the tool and prints the
``tool_result`` line. They return the text the "model" answers with afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fake_claude_wire import (
    VERSION,
    Aborted,
    assistant_line,
    emit,
    log,
    msg_id,
    tool_id,
    tool_result_line,
)

if TYPE_CHECKING:
    from fake_claude_turn import Process, Turn

NOT_GRANTED = "Claude requested permissions to use {tool}, but you haven't granted it yet."
QUESTIONS = {
    "questions": [
        {
            "question": "Pick a colour",
            "header": "Colour",
            "options": [
                {"label": "Red", "description": ""},
                {"label": "Blue", "description": ""},
            ],
            "multiSelect": False,
        }
    ]
}


class Denied(Exception):
    """Permission refused; ``message`` is what the tool_result says."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _rule_allows(turn: Turn, tool: str, tool_input: dict[str, Any]) -> bool:
    mode = turn.proc.channel.permission_mode
    if mode == "bypassPermissions" or (mode == "acceptEdits" and tool in ("Edit", "Write")):
        return True
    command = str(tool_input.get("command", ""))
    for rule in turn.proc.allowed_tools:
        if rule == tool or (tool.startswith("mcp__") and tool.startswith(rule + "__")):
            return True
        if rule.startswith(f"{tool}(") and rule.endswith(")"):
            inner = rule[len(tool) + 1 : -1]
            if inner == command or (inner.endswith(":*") and command.startswith(inner[:-2])):
                return True
    return False


def _use_tool(turn: Turn, name: str, tool_input: dict[str, Any]) -> str:
    """Print the tool_use line and remember it; returns its id."""
    tid = tool_id()
    line = assistant_line(
        turn.sid, msg_id(), [{"type": "tool_use", "id": tid, "name": name, "input": tool_input}]
    )
    emit(line)
    turn.record_assistant(line, "")
    turn.tool = {"id": tid, "name": name, "input": tool_input, "running": False}
    turn.phase = "tools"
    return tid


def permit(turn: Turn, request: dict[str, Any], *, always_ask: bool = False) -> dict[str, Any]:
    """Return the (possibly updated) input, or raise ``Denied`` / ``Aborted``."""
    tool, tool_input = request["tool_name"], request["input"]
    if not always_ask and _rule_allows(turn, tool, tool_input):
        return tool_input
    denial = {"tool_name": tool, "tool_use_id": request["tool_use_id"], "tool_input": tool_input}
    if not turn.proc.stdio:
        turn.denials.append(denial)
        raise Denied(NOT_GRANTED.format(tool=tool))
    answer = turn.proc.channel.request("can_use_tool", **request)
    if answer is None:
        turn.denials.append(denial)
        raise Aborted()
    if answer.get("closed"):
        turn.denials.append(denial)
        raise Denied(
            "Tool permission request failed: AbortError: "
            "Tool permission stream closed before response received"
        )
    if answer.get("subtype") != "success":
        turn.denials.append(denial)
        raise Denied(f"Tool permission request failed: Error: {answer.get('error')}")
    decision = answer.get("response") if isinstance(answer.get("response"), dict) else {}
    if decision.get("behavior") == "allow":
        updated = decision.get("updatedInput")
        return updated if isinstance(updated, dict) else tool_input
    turn.denials.append(denial)
    if decision.get("behavior") == "deny" and decision.get("interrupt"):
        raise Aborted()
    if decision.get("behavior") != "deny":
        raise Denied(f"Tool permission request failed: Error: bad answer {json.dumps(decision)}")
    raise Denied(str(decision.get("message", "")))


def _denied_result(turn: Turn, tid: str, exc: Denied) -> None:
    emit(
        tool_result_line(
            turn.sid, tid, exc.message, is_error=True, tool_use_result=f"Error: {exc.message}"
        )
    )
    turn.phase = "streaming"


def bash(turn: Turn, command: str, description: str = "Run a command") -> str:
    tool_input = {"command": command, "description": description}
    tid = _use_tool(turn, "Bash", tool_input)
    request: dict[str, Any] = {
        "tool_name": "Bash",
        "display_name": "Bash",
        "input": tool_input,
        "description": description,
        "permission_suggestions": [
            {
                "type": "addRules",
                "rules": [{"toolName": "Bash", "ruleContent": command}],
                "behavior": "allow",
                "destination": "localSettings",
            },
            {"type": "addDirectories", "directories": [turn.cwd], "destination": "session"},
            {"type": "setMode", "mode": "acceptEdits", "destination": "session"},
        ],
        "tool_use_id": tid,
    }
    words = shlex.split(command) if command.strip() else []
    if len(words) >= 2:
        request["blocked_path"] = str(Path(turn.cwd, words[-1]))
    try:
        granted = permit(turn, request)
    except Denied as exc:
        _denied_result(turn, tid, exc)
        return f"tool denied: {exc.message}"
    command = str(granted.get("command", command))
    rc, out = _run_shell(turn, command)
    emit(
        tool_result_line(
            turn.sid,
            tid,
            out or "(Bash completed with no output)",
            is_error=rc != 0,
            tool_use_result={"stdout": out, "stderr": "", "interrupted": False},
        )
    )
    turn.tools_ran = True
    turn.phase = "streaming"
    return "done after tool"


def _run_shell(turn: Turn, command: str) -> tuple[int, str]:
    """Run it like the Bash tool: /bin/sh in the cwd, own process group, killed on interrupt."""
    turn.tool["running"] = True
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=turn.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log("tool", command=command, tool_pid=proc.pid)
        try:
            while proc.poll() is None:
                turn.pause(0.01)
        except Aborted:
            # Like the real CLI: the tool's whole tree goes when the turn is interrupted.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        out.seek(0)
        text = out.read().decode("utf-8", "replace").rstrip("\n")
    turn.tool["running"] = False
    log("tool_done", command=command, rc=proc.returncode)
    return proc.returncode, text


def ask_user(turn: Turn) -> str:
    tid = _use_tool(turn, "AskUserQuestion", QUESTIONS)
    request = {
        "tool_name": "AskUserQuestion",
        "display_name": "AskUserQuestion",
        "input": QUESTIONS,
        "tool_use_id": tid,
        "requires_user_interaction": True,
    }
    try:
        granted = permit(turn, request, always_ask=True)
    except Denied as exc:
        _denied_result(turn, tid, exc)
        return f"not answered: {exc.message}"
    answers = granted.get("answers") if isinstance(granted.get("answers"), dict) else {}
    said = ", ".join(f'"{q}"="{a}"' for q, a in answers.items())
    emit(
        tool_result_line(
            turn.sid,
            tid,
            f"Your questions have been answered: {said}. "
            "You can now continue with these answers in mind.",
            is_error=False,
            tool_use_result={**QUESTIONS, "answers": answers},
        )
    )
    turn.tools_ran = True
    turn.phase = "streaming"
    return "answered: " + ", ".join(str(a) for a in answers.values())


def mcp_call(turn: Turn) -> str:
    servers = turn.proc.mcp_servers
    server = os.environ.get("FAKE_CLAUDE_MCP_SERVER") or (servers[0] if servers else "feishu")
    tool = os.environ.get("FAKE_CLAUDE_MCP_TOOL", "send_file")
    args = json.loads(os.environ.get("FAKE_CLAUDE_MCP_ARGS") or '{"path": "out.txt"}')
    full = f"mcp__{server}__{tool}"
    tid = _use_tool(turn, full, args)
    request = {
        "tool_name": full,
        "mcp_server": {"name": server, "source": "sdk"},
        "display_name": tool.replace("_", " ").title(),
        "input": args,
        "permission_suggestions": [
            {
                "type": "addRules",
                "rules": [{"toolName": full}],
                "behavior": "allow",
                "destination": "localSettings",
            }
        ],
        "server_policy_ask_only": True,
        "tool_use_id": tid,
    }
    try:
        args = permit(turn, request)
    except Denied as exc:
        _denied_result(turn, tid, exc)
        return f"tool denied: {exc.message}"
    rpc_id = turn.proc.next_rpc_id()
    message = {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": args,
            "_meta": {"claudecode/toolUseId": tid, "progressToken": rpc_id},
        },
    }
    turn.tool["running"] = True
    answer = turn.proc.channel.request("mcp_message", server_name=server, message=message)
    turn.tool["running"] = False
    if answer is None:
        raise Aborted()
    text, is_error = _mcp_text(answer)
    log("mcp", server=server, tool=tool, arguments=args, is_error=is_error, text=text[:200])
    emit(tool_result_line(turn.sid, tid, [{"type": "text", "text": text}], is_error=is_error))
    turn.tools_ran = True
    turn.phase = "streaming"
    return f"mcp error: {text}" if is_error else f"mcp: {text}"


def _mcp_text(answer: dict[str, Any]) -> tuple[str, bool]:
    if answer.get("subtype") != "success":
        return f"MCP request failed: {answer.get('error')}", True
    inner = answer.get("response") if isinstance(answer.get("response"), dict) else {}
    rpc = inner.get("mcp_response")
    if not isinstance(rpc, dict):
        return "MCP answer without mcp_response", True
    if isinstance(rpc.get("error"), dict):
        err = rpc["error"]
        return f"MCP error {err.get('code')}: {err.get('message')}", True
    result = rpc.get("result") if isinstance(rpc.get("result"), dict) else {}
    content = result.get("content") if isinstance(result.get("content"), list) else []
    texts = [str(b.get("text", "")) for b in content if isinstance(b, dict)]
    return "\n".join(texts), bool(result.get("isError"))


def edit(turn: Turn) -> None:
    """Append a line to a file as an Edit tool would (a side effect a retry would repeat)."""
    path = Path(os.environ.get("FAKE_CLAUDE_EDIT_FILE") or Path(turn.cwd, "edited.txt"))
    line = f"edited by fake claude at {time.time():.6f}\n"
    tid = _use_tool(turn, "Edit", {"file_path": str(path), "old_string": "", "new_string": line})
    with path.open("a") as fh:
        fh.write(line)
    log("edit", path=str(path))
    emit(
        tool_result_line(
            turn.sid,
            tid,
            f"The file {path} has been updated successfully.",
            is_error=False,
            tool_use_result={"filePath": str(path)},
        )
    )
    turn.tools_ran = True
    turn.phase = "streaming"


# --------------------------------------------------------------------------- MCP start-up
def mcp_connect(proc: Process, configs: list[str]) -> None:
    """What the real CLI does with SDK MCP servers at start-up, before reading any input.

    ``initialize`` then ``notifications/initialized`` (which must be acknowledged too), each
    waited for ``FAKE_CLAUDE_MCP_TIMEOUT`` s (default 30, as measured); after an error or a
    timeout the whole handshake is tried once more, then the server is "failed". Then
    ``tools/list``.
    """
    timeout = float(os.environ.get("FAKE_CLAUDE_MCP_TIMEOUT", "30"))
    for name in sdk_servers(configs):
        connected = False
        for _ in range(2):
            init = {
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "claude-code", "version": VERSION},
                },
                "jsonrpc": "2.0",
                "id": proc.next_rpc_id(),
            }
            answer = proc.channel.request(
                "mcp_message", timeout=timeout, server_name=name, message=init
            )
            if _rpc_result(answer) is None:
                continue
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            answer = proc.channel.request(
                "mcp_message", timeout=timeout, server_name=name, message=note
            )
            if answer is not None and answer.get("subtype") == "success":
                connected = True
                break
        proc.mcp_status.append(
            {"name": name, "status": "connected" if connected else "failed", "source": "sdk"}
        )
        log("mcp_connect", server=name, connected=connected)
        if not connected:
            continue
        proc.mcp_servers.append(name)
        listed = _rpc_result(
            proc.channel.request(
                "mcp_message",
                timeout=timeout,
                server_name=name,
                message={"method": "tools/list", "jsonrpc": "2.0", "id": proc.next_rpc_id()},
            )
        )
        for tool in (listed or {}).get("tools") or []:
            if isinstance(tool, dict) and tool.get("name"):
                proc.mcp_tools.append(f"mcp__{name}__{tool['name']}")


def _rpc_result(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    if not answer or answer.get("subtype") != "success":
        return None
    inner = answer.get("response") if isinstance(answer.get("response"), dict) else {}
    rpc = inner.get("mcp_response")
    if not isinstance(rpc, dict) or not isinstance(rpc.get("result"), dict):
        return None
    return rpc["result"]


def sdk_servers(configs: list[str]) -> list[str]:
    names: list[str] = []
    for raw in configs:
        text = raw if raw.lstrip().startswith("{") else Path(raw).read_text()
        servers = json.loads(text).get("mcpServers") or {}
        names += [n for n, c in servers.items() if isinstance(c, dict) and c.get("type") == "sdk"]
    return names
