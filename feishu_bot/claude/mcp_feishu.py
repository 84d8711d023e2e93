"""The `feishu` MCP server, served in-process over the CLI's control protocol (pure JSON-RPC).

The bot starts the CLI with
``--mcp-config '{"mcpServers":{"feishu":{"type":"sdk","name":"feishu"}}}'``; the CLI then sends
each JSON-RPC message for that server as a ``control_request`` of subtype ``mcp_message``
(``server_name``, ``message``) and waits for a success ``control_response`` whose response is
``{"mcp_response": <JSON-RPC response>}``. `FeishuMcp.__call__` is that JSON-RPC handler
(`events.McpHandler`): it answers ``initialize``, ``tools/list``, ``tools/call`` and ``ping``,
and returns None for notifications; the session client must still acknowledge those with
``{"mcp_response": {"jsonrpc": "2.0", "result": {}}}`` (measured on CLI 2.1.329: without the ack
the CLI waits 30 s, retries once, then drops the server).

Why in-process rather than a stdio server the CLI starts: no extra process per CLI, no socket
and no credential to hand to a child, and the call arrives on the same channel (and in the
same turn) as everything else, so the upload is bound to the turn that asked for it.

One tool, ``send_file`` (the CLI names it ``mcp__feishu__send_file``): input
``{"path": "<relative to the working directory>", "caption": "<optional>"}``. The actual work
is the `SendFile` callback bound to the current turn; an `OutboundFileError` (or any other
failure) becomes a tool result with ``isError: true`` that Claude reads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

__all__ = [
    "MCP_CONFIG",
    "SEND_FILE_TOOL",
    "SERVER_NAME",
    "FeishuMcp",
    "SendFile",
    "mcp_config_arg",
]

SERVER_NAME = "feishu"
SEND_FILE_TOOL = f"mcp__{SERVER_NAME}__send_file"
MCP_CONFIG: dict[str, Any] = {"mcpServers": {SERVER_NAME: {"type": "sdk", "name": SERVER_NAME}}}
PROTOCOL_VERSION = "2025-06-18"  # answered when the client names none

# (path, caption, tool_use_id) -> a short success text for Claude. Raises on failure; the
# exception's message is what Claude reads.
SendFile = Callable[[str, str | None, str | None], Awaitable[str]]

_TOOL = {
    "name": "send_file",
    "description": (
        "Send a file from the working directory to the user in the Feishu chat (as a reply "
        "to their message). PNG, JPEG, GIF and WebP images up to 10 MB are shown as images; "
        "any other file up to 30 MB is sent as a file attachment. Only files inside the "
        "working directory can be sent. Use it when the user should receive a file you made "
        "(a patch, a plot, a report), not to show text."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "description": "Path of the file, relative to the working directory.",
            },
            "caption": {
                "type": "string",
                "description": "Optional text sent after the file.",
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    },
}


def mcp_config_arg() -> str:
    """The value of `--mcp-config` that declares this server to the CLI."""
    return json.dumps(MCP_CONFIG, separators=(",", ":"))


class FeishuMcp:
    """JSON-RPC handler of the `feishu` server for one turn. Stateless apart from `send`;
    safe to answer a handshake on behalf of a process that outlives the turn."""

    def __init__(self, send_file: SendFile, *, version: str = "1.0.0") -> None:
        self._send_file = send_file
        self._version = version
        self.calls = 0  # tools/call requests seen, for tests and logs

    async def __call__(self, server_name: str, message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method") if isinstance(message, dict) else None
        msg_id = message.get("id") if isinstance(message, dict) else None
        if msg_id is None:
            return None  # a notification (or a response to us): nothing to answer
        if server_name != SERVER_NAME:
            return _error(msg_id, -32601, f"Server '{server_name}' not found")
        if method == "initialize":
            params = message.get("params")
            version = params.get("protocolVersion") if isinstance(params, dict) else None
            return _result(
                msg_id,
                {
                    "protocolVersion": version if isinstance(version, str) else PROTOCOL_VERSION,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": SERVER_NAME, "version": self._version},
                },
            )
        if method == "ping":
            return _result(msg_id, {})
        if method == "tools/list":
            return _result(msg_id, {"tools": [_TOOL]})
        if method == "tools/call":
            return _result(msg_id, await self._call(message.get("params")))
        return _error(msg_id, -32601, f"Method not found: {method}")

    async def _call(self, params: Any) -> dict[str, Any]:
        self.calls += 1
        if not isinstance(params, dict) or params.get("name") != "send_file":
            name = params.get("name") if isinstance(params, dict) else None
            return _tool_error(f"Unknown tool: {name}")
        args = params.get("arguments")
        if not isinstance(args, dict):
            args = {}
        path = args.get("path")
        caption = args.get("caption")
        if not isinstance(path, str) or not path.strip():
            return _tool_error("`path` is required: a file path relative to the working directory.")
        if caption is not None and not isinstance(caption, str):
            return _tool_error("`caption` must be a string.")
        meta = params.get("_meta")
        tool_use_id = meta.get("claudecode/toolUseId") if isinstance(meta, dict) else None
        try:
            text = await self._send_file(
                path, caption, tool_use_id if isinstance(tool_use_id, str) else None
            )
        except ValueError as exc:  # OutboundFileError: something Claude can fix
            logger.info("send_file {!r} refused: {}", path, exc)
            return _tool_error(str(exc))
        except Exception as exc:
            logger.exception("send_file {!r} failed", path)
            return _tool_error(f"{path}: sending failed ({type(exc).__name__}: {exc}).")
        return {"content": [{"type": "text", "text": text}]}


def _result(msg_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}
