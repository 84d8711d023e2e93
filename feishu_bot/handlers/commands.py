"""Bot commands: a table of `/name` → handler. Each returns the text of its reply.

Commands run at once, outside the conversation's queue, so `/stop` and `/status` answer while a
turn is running. Any `/word` not in the table is not a command: it goes to Claude as text.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from feishu_bot import wording
from feishu_bot.events import InboundMessage
from feishu_bot.handlers.cron import cmd_cron
from feishu_bot.handlers.mode import cmd_mode, effective_mode
from feishu_bot.handlers.permission_commands import cmd_permissions
from feishu_bot.handlers.session_commands import cmd_resume, cmd_sessions, cmd_stats
from feishu_bot.keys import default_workdir
from feishu_bot.spend import SpendPolicy
from feishu_bot.turn_input import drop_kept

if TYPE_CHECKING:
    from database.models import Conversation
    from feishu_bot.context import BotContext

__all__ = ["COMMANDS", "parse_command", "reset_conversation", "run_command"]

CommandFn = Callable[["BotContext", InboundMessage, str], Awaitable[str]]
_MODEL_NAME_MAX = 100
_MODEL_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._\-\[\]:]{{0,{_MODEL_NAME_MAX - 1}}}")
# Replies quote user input at most this long; Linux path limits (bytes) for /cd.
ECHO_MAX = 80
_PATH_MAX = 4096
_NAME_MAX = 255


async def cmd_help(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    lines = ["Send me a message and Claude Code answers it in this chat's working directory."]
    lines += [f"/{name} — {summary}" for name, (_, summary) in COMMANDS.items()]
    lines.append("Any other /command is passed to Claude as text.")
    return "\n".join(lines)


async def reset_conversation(ctx: BotContext, key: str) -> None:
    """/new and the New session button: close the process, forget the session, the grants,
    the /mode choice and what was kept (scheduled prompts stay)."""
    await ctx.launcher.close_session(key)
    await ctx.store.clear_session(key)
    await ctx.store.clear_grants(key)
    await ctx.store.set_permission_mode(key, None)
    await drop_kept(ctx, key)


async def cmd_new(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    await _ensure(ctx, msg)
    await reset_conversation(ctx, msg.conversation_key)
    return "Started a new conversation: your next message begins a fresh Claude session."


async def cmd_stop(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    stopped = ctx.conversations.stop(msg.conversation_key)
    if not stopped:
        return "Nothing is running in this conversation."
    return f"Stopped {stopped} request{'s' if stopped != 1 else ''} (running and queued)."


async def cmd_status(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    conv = await ctx.store.get_conversation(msg.conversation_key)
    where = ctx.conversations.status(msg.conversation_key)
    waiting = where.waiting
    if where.running:
        # A running turn is "running" even while a later one of this conversation waits in the
        # queue (queue_position then answers for that one).
        state = "running"
    elif waiting:
        position = ctx.launcher.queue_position(msg.conversation_key)
        state = f"queued, position {position}" if position else f"{waiting} waiting"
        waiting -= 1
    else:
        state = "idle"
    if waiting > 0:
        state += f" ({waiting} more waiting)"
    grants = await ctx.store.list_grants(msg.conversation_key)
    allowed = ", ".join(g.rule if g.kind == "tool" else f"network: {g.rule}" for g in grants)
    stats = ctx.launcher.stats()
    warm = "warm (the next message needs no start-up)" if ctx.launcher.is_warm(
        msg.conversation_key) else "none (the next message starts one)"
    model = (conv.model if conv else None) or ctx.settings.CLAUDE_MODEL or "CLI default"
    turns, cost = (conv.turn_count, conv.total_cost_usd) if conv else (0, 0.0)
    mode, chosen = await effective_mode(ctx, msg.conversation_key)
    spent = await SpendPolicy.from_settings(ctx.settings, ctx.store).summary(msg.sender_open_id)
    gateway = ctx.gateway_status()
    ws = "connected" if gateway.connected else "disconnected"
    lines = [
        f"Conversation {msg.conversation_key}",
        f"• session: {(conv.session_id if conv else None) or 'none (next message starts fresh)'}",
        f"• state: {state}",
        f"• working directory: {conv.workdir if conv else ctx.workdir_root}",
        f"• model: {model}",
        f"• permission mode: {mode}{' (/mode)' if chosen else ''}",
        f"• claude process: {warm}",
        f"• always allowed here: {allowed or 'nothing (commands are asked for)'}"
        " (/permissions)",
        _sandbox_line(ctx),
        f"• turns: {turns}, cost ${cost:.4f}",
        f"• {spent}",
        f"Bot: {stats.active}/{stats.max_concurrent} running, {stats.warm_idle} warm idle, "
        f"{stats.queued} queued, "
        f"uptime {wording.duration(ctx.uptime_s)}, websocket {ws}",
    ]
    return "\n".join(lines)


_CONVERSATION_DIRS = ("p2p-", "group-", "thread-")  # default_workdir's names


def _not_yours(ctx: BotContext, msg: InboundMessage, target: Path, root: Path) -> str | None:
    """With the sandbox on, a conversation's tools reach its working directory only, so /cd
    must not move a conversation into the workspace root (every directory) or into another
    conversation's own directory. Shared workdirs are shared by the operator's choice."""
    policy = ctx.launcher.config.sandbox
    if policy is None or not policy.enabled or ctx.settings.CLAUDE_SHARED_WORKDIR:
        return None
    if target == root:
        return "the workspace itself, which holds every conversation's directory"
    top = root / target.relative_to(root).parts[0]
    mine = default_workdir(root, msg.conversation_key, shared=False)
    if top != mine and top.name.startswith(_CONVERSATION_DIRS):
        return "another conversation's directory"
    return None


def _sandbox_line(ctx: BotContext) -> str:
    policy = ctx.launcher.config.sandbox
    if policy is None or not policy.enabled:
        why = policy.status.text if policy is not None else "off"
        return f"• sandbox: {why}: Claude's commands are not confined to this directory"
    hosts = ", ".join(policy.allowed_domains) or "none"
    return (
        "• sandbox: on: commands write only here and cannot read other conversations or the "
        f"bot's files; network without asking: {hosts} (other hosts are asked for)"
    )


async def cmd_cd(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    root = ctx.workdir_root.resolve()
    conv = await _ensure(ctx, msg)
    if not args:
        return f"Working directory: {conv.workdir}\nUsage: /cd <path under {root}>"
    problem = _path_problem(args)
    if problem:
        return f"Cannot change to {_echo(args)}: {problem}."
    try:
        raw = Path(args).expanduser()
        target = (raw if raw.is_absolute() else Path(conv.workdir) / raw).resolve()
        if target != root and root not in target.parents:
            return f"Refused: {_echo(args)} is outside the workspace {root}."
        if not target.is_dir():
            return f"No such directory: {_echo_path(target)}"
        why = _not_yours(ctx, msg, target, root)
        if why:
            return f"Refused: {_echo(args)} is {why}."
    except (OSError, ValueError, RuntimeError) as exc:  # EACCES, unencodable names, loops
        if isinstance(exc, RuntimeError):  # pathlib's "Symlink loop from ..."
            reason = "it is a loop of symbolic links"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = "not a usable path"
        return f"Cannot change to {_echo(args)}: {reason}."
    await ctx.launcher.close_session(msg.conversation_key)
    await ctx.store.set_workdir(msg.conversation_key, str(target))
    return (
        f"Working directory is now {_echo_path(target)}. "
        "Your next message starts a fresh Claude session."
    )


async def cmd_model(ctx: BotContext, msg: InboundMessage, args: str) -> str:
    conv = await _ensure(ctx, msg)
    if not args:
        current = conv.model or ctx.settings.CLAUDE_MODEL or "CLI default"
        return f"Model: {current}\nUsage: /model <name>, or /model default"
    if args.lower() in ("default", "reset"):
        await ctx.launcher.close_session(msg.conversation_key)
        await ctx.store.set_model(msg.conversation_key, None)
        return "Model reset to the default."
    if not _MODEL_NAME.fullmatch(args):
        return (
            f"Not a valid model name: {_echo(args)}. A model name is 1 to {_MODEL_NAME_MAX} "
            "letters, digits and . _ - : [ ] (for example sonnet, opus or claude-sonnet-4-5)."
        )
    await ctx.launcher.close_session(msg.conversation_key)
    await ctx.store.set_model(msg.conversation_key, args)
    return f"Model set to {args} for this conversation."


def _echo(text: str, limit: int = ECHO_MAX) -> str:
    """User input quoted in a reply: one line of printable characters, at most `limit` long
    (a 100k-character argument must not come back as a 100k-character reply)."""
    head = text[: limit * 4]  # enough to fill `limit` after whitespace is squeezed
    line = "".join(c if c.isprintable() else " " for c in head)
    line = " ".join(line.split())
    if len(line) > limit or len(head) < len(text):
        line = line[: limit - 1] + "…"
    return f"“{line}”"


def _echo_path(path: Path, limit: int = ECHO_MAX) -> str:
    """A path in a reply, bounded; a long one keeps its end (the part that differs)."""
    text = "".join(c if c.isprintable() else "?" for c in str(path))
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _path_problem(args: str) -> str | None:
    """Why `args` cannot be a path at all (said plainly, not as an internal error)."""
    if "\x00" in args:
        return "a path cannot contain a NUL character"
    size = len(args.encode("utf-8", "surrogatepass"))
    if size > _PATH_MAX:
        return f"the path is too long ({size} bytes; at most {_PATH_MAX})"
    longest = max(len(part.encode("utf-8", "surrogatepass")) for part in args.split("/"))
    if longest > _NAME_MAX:
        return f"a name in the path is too long ({longest} bytes; at most {_NAME_MAX})"
    return None


async def _ensure(ctx: BotContext, msg: InboundMessage) -> Conversation:
    return await ctx.store.ensure_conversation(
        msg.conversation_key,
        chat_id=msg.chat_id,
        chat_type=msg.chat_type,
        thread_root=msg.thread_root,
        workdir=str(
            default_workdir(
                ctx.workdir_root.resolve(),
                msg.conversation_key,
                shared=ctx.settings.CLAUDE_SHARED_WORKDIR,
            )
        ),
    )


COMMANDS: dict[str, tuple[CommandFn, str]] = {
    "help": (cmd_help, "show this help"),
    "new": (cmd_new, "forget this conversation's Claude session"),
    "stop": (cmd_stop, "stop the running request and the queued ones"),
    "status": (cmd_status, "show this conversation and the bot's state"),
    "cd": (cmd_cd, "change the working directory (under the workspace)"),
    "model": (cmd_model, "set the Claude model for this conversation"),
    "sessions": (cmd_sessions, "list this conversation's recent Claude sessions"),
    "resume": (cmd_resume, "switch back to session N from /sessions"),
    "stats": (cmd_stats, "turns, success rate, median time and cost, today and in total"),
    "permissions": (cmd_permissions, "what is always allowed here; /permissions rm N removes one"),
    "mode": (cmd_mode, "permission mode here: default, acceptEdits or plan (plan, then approve)"),
    "cron": (cmd_cron, "scheduled prompts: /cron add <m h dom mon dow> <prompt>, list, rm, pause"),
}


def parse_command(text: str) -> tuple[str, str] | None:
    """(name, args) when the text is one of our commands, else None."""
    if not text.startswith("/"):
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.strip().lower()
    if name not in COMMANDS:
        return None
    return name, rest.strip()


async def run_command(ctx: BotContext, msg: InboundMessage, name: str, args: str) -> str:
    handler, _ = COMMANDS[name]
    return await handler(ctx, msg, args)
