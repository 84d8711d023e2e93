"""Pure pieces of a turn: the CLI's argument vector, and what a finished attempt becomes
(a TurnResult, or the error the user is told about)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from feishu_bot.claude.control import TurnAttempt
from feishu_bot.claude.launcher_config import LauncherConfig
from feishu_bot.claude.policy import ResumePoint
from feishu_bot.claude.protocol import Outcome, ResultInfo, classify, parse_result
from feishu_bot.errors import PermanentCliError, TransientCliError
from feishu_bot.events import TurnResult

__all__ = [
    "api_failure",
    "auth_refusal",
    "cli_argv",
    "not_logged_in",
    "turn_error",
    "turn_result",
]


def cli_argv(
    cfg: LauncherConfig,
    resume: ResumePoint,
    model: str | None,
    rules: tuple[str, ...] = (),
    mode: str | None = None,
    *,
    memory: str = "",
    scratch: Path | None = None,
    hosts: tuple[str, ...] = (),
) -> list[str]:
    """``claude`` in stream-json mode, resuming ``resume`` (forked) when it names a session;
    ``rules`` are the conversation's granted permission rules, matched by the CLI itself;
    ``mode`` the conversation's permission mode (default: the configured one);
    sandboxed when ``cfg.sandbox`` is on (``memory``: the directory's CLAUDE.md text, which
    the sandbox's settings sources no longer load; ``scratch``: the process's TMPDIR;
    ``hosts``: the conversation's network grants). The bot's own system prompt and the memory
    go in ONE ``--append-system-prompt`` (measured: the CLI keeps only the last one)."""
    argv = [
        cfg.bin, "--input-format", "stream-json", "--output-format", "stream-json",
        "--verbose", "--permission-prompt-tool", "stdio",
    ]
    if cfg.include_partial:
        argv.append("--include-partial-messages")
    if resume.session_id:
        argv += ["--resume", resume.session_id]
        if resume.at_uuid:
            argv += ["--resume-session-at", resume.at_uuid]
        if cfg.fork_session:
            argv.append("--fork-session")
    if mode or cfg.permission_mode:
        argv += ["--permission-mode", mode or cfg.permission_mode]
    allowed = tuple(dict.fromkeys((*cfg.allowed_tools, *rules)))
    if allowed:
        # One comma-joined value: the option is variadic and would swallow later words.
        argv += ["--allowedTools", ",".join(allowed)]
    if cfg.mcp_config:
        argv += ["--mcp-config", cfg.mcp_config]
    if cfg.disallowed_tools:
        argv += ["--disallowedTools", ",".join(cfg.disallowed_tools)]
    model = model or cfg.model
    if model:
        argv += ["--model", model]
    prompt = "\n\n".join(text for text in (cfg.system_prompt, memory) if text)
    if cfg.sandbox is not None and cfg.sandbox.enabled:
        argv += cfg.sandbox.cli_args(prompt, scratch, hosts)
    elif prompt:
        argv += ["--append-system-prompt", prompt]
    return argv


def turn_result(
    att: TurnAttempt, attempts: int, stale_reset: bool, started: float, *, warm: bool
) -> TurnResult:
    """The result of a successful attempt (its result object said so)."""
    result = att.parser.result
    assert result is not None
    return TurnResult(
        text=result.text or att.parser.text,
        session_id=att.parser.session_id or result.session_id,
        is_error=False,
        subtype=result.subtype,
        errors=result.errors,
        cost_usd=round(att.cost_usd, 6),
        duration_ms=result.duration_ms,
        num_turns=result.num_turns,
        attempts=attempts,
        exit_code=att.exit_code,
        stale_session_reset=stale_reset,
        wall_ms=int((time.monotonic() - started) * 1000),
        first_text_s=att.first_text_s,
        extra={
            "streamed_text": att.parser.text,
            "terminal_reason": result.terminal_reason,
            "permission_denials": result.permission_denials,
            "tools": tuple(att.parser.tools_used),
            "api_retries": att.parser.api_retries,
            "warm": warm,
        },
    )


def turn_error(reason: str, att: TurnAttempt, attempts: int, why: str) -> Exception:
    """The error of a turn given up on; ``side_effects`` is set when that is why."""
    result = att.parser.result
    details: dict[str, Any] = {
        "exit_code": att.exit_code,
        "stderr_tail": att.stderr_tail,
        "result_errors": result.errors if result else (),
        "attempts": attempts,
        "partial_text": att.parser.text,
    }
    verdict = classify(
        exit_code=att.exit_code if att.died else None, result=result, stderr=att.stderr_tail
    )
    if verdict.outcome is Outcome.TRANSIENT:
        effects = tuple(dict.fromkeys(att.side_effects)) if why == "side effects" else ()
        return TransientCliError(reason, side_effects=effects, **details)
    return PermanentCliError(reason, **details)


def api_failure(result: ResultInfo | None) -> bool:
    """The attempt ended with an error answer of the Anthropic API (any status)."""
    return result is not None and result.is_error and (
        result.api_error_status is not None or result.terminal_reason == "api_error"
    )


def auth_refusal(obj: dict[str, Any]) -> str | None:
    """``"401 authentication_failed"`` for the CLI's announcement of a retry after the API
    refused its credentials (measured on 2.1.329), else None."""
    if obj.get("type") != "system" or obj.get("subtype") != "api_retry":
        return None
    status, error = obj.get("error_status"), obj.get("error")
    if status != 401 and error != "authentication_failed":
        return None
    return " ".join(str(part) for part in (status, error) if part is not None)


def not_logged_in(result: ResultInfo | None, refusal: str) -> ResultInfo:
    """The result of a turn stopped at its first refused retry: what the CLI would have said
    minutes later, worded so that ``classify`` names the cause (an auth marker)."""
    sentence = f"Claude is not logged in: the API refused its credentials ({refusal})"
    return dataclasses.replace(
        result or parse_result({}),
        text=f"Not logged in · {sentence}",
        is_error=True,
        errors=(sentence,),
        terminal_reason="api_error",
    )
