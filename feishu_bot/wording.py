"""Every sentence a user reads when something is not a normal answer, in one place."""

from __future__ import annotations

import time

from feishu_bot.errors import (
    AttachmentError,
    ClaudeError,
    CliNotFound,
    FeishuApiError,
    JournalError,
    PermanentCliError,
    QueueFull,
    StaleSession,
    TransientCliError,
    TurnCancelled,
    TurnRefused,
    TurnTimeout,
)

__all__ = [
    "CLICK_ALREADY_DONE",
    "CLICK_ELSEWHERE",
    "CLICK_FAILED",
    "CLICK_FINISHED",
    "CLICK_FORGED",
    "CLICK_NEW_SESSION",
    "CLICK_NOT_ALLOWED",
    "CLICK_NO_APPROVALS",
    "CLICK_OLD_CARD",
    "CLICK_STOPPING",
    "CLICK_UNREADABLE",
    "DEFERRED",
    "EMPTY",
    "HISTORY_CUT",
    "INTERRUPTED",
    "MALFORMED",
    "RECALLED",
    "REPLAY_REFUSED",
    "STALE_NOTICE",
    "STOPPED",
    "TOO_LONG",
    "UNSUPPORTED",
    "bounded",
    "clock",
    "describe_error",
    "duration",
]

STOPPED = "Stopped by /stop."
CLICK_FAILED = "Something went wrong; try again."
# Toasts a button click answers with.
CLICK_NOT_ALLOWED = "You are not allowed to use this bot."
CLICK_FORGED = (
    "This button is not valid (it was changed or is not from this bot). Nothing was done."
)
CLICK_ELSEWHERE = "This button belongs to another chat. Nothing was done."
CLICK_FINISHED = "This request has already finished."
CLICK_UNREADABLE = "Sorry, this button could not be read."
CLICK_NO_APPROVALS = "Approvals are not available right now."
CLICK_OLD_CARD = (
    "This is not the conversation's latest answer, so its New session button does nothing. "
    "Use the button on the latest answer, or send /new."
)
CLICK_ALREADY_DONE = "Already done."
CLICK_STOPPING = "Stopping…"
CLICK_NEW_SESSION = "New session: your next message starts a fresh conversation."

INTERRUPTED = (
    "The bot restarted while Claude was working on this, so the request was interrupted. "
    "Please send it again."
)
DEFERRED = "The bot is restarting; this request is kept and will run when it is back."
REPLAY_REFUSED = (
    "This request was kept while the bot restarted, but you are no longer allowed to use the "
    "bot, so it was not run."
)
UNSUPPORTED = (
    "Sorry, I can only read text and rich-text (post) messages for now; "
    "{kind} messages are not supported yet."
)
EMPTY = "Your message was empty. Send me some text (or /help)."
MALFORMED = "Sorry, I could not read that message. Please send it again as plain text."
TOO_LONG = "Your message is too long ({size} characters; the limit is {limit}). Please shorten it."
RECALLED = "Withdrawn: the message was recalled before Claude started on it, so it was not run."


def bounded(text: str, limit: int = 80) -> str:
    """User input echoed back: printable, at most ``limit`` characters."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


STALE_NOTICE = "The earlier Claude session had expired, so this answer starts a fresh context."
HISTORY_CUT = (
    "This request was left out of the conversation: your next message continues from "
    "Claude's last answer."
)


def describe_error(exc: BaseException, *, timeout_s: float = 0) -> tuple[str, str]:
    """(one short sentence for the user, journal status) for a failed turn."""
    text, status = _describe(exc, timeout_s)
    if isinstance(exc, ClaudeError) and exc.history_cut:
        text = f"{text} {HISTORY_CUT}"
    return text, status


def _describe(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    if isinstance(exc, AttachmentError):
        return str(exc), "failed"
    if isinstance(exc, TurnRefused):
        return str(exc), "cancelled"  # nothing ran: not a failure
    if isinstance(exc, JournalError):
        return (
            "The bot could not record that your request started (its database failed), so it "
            "stopped it rather than risk running it twice. Please send it again.",
            "failed",
        )
    if isinstance(exc, QueueFull) and exc.user_waiting:
        return (
            f"You already have {exc.user_waiting} requests waiting. Please wait for them to "
            "start (or /stop them) before sending more.",
            "failed",
        )
    if isinstance(exc, QueueFull):
        return (
            f"The bot is busy ({exc.active}/{exc.max_active} running, {exc.queued} queued). "
            "Please try again in a minute.",
            "failed",
        )
    if isinstance(exc, TurnTimeout):
        return (
            f"Claude took longer than {timeout_s:g}s and was stopped. Try a smaller request, "
            "or ask the operator to raise CLAUDE_TIMEOUT.",
            "failed",
        )
    if isinstance(exc, CliNotFound):
        return (
            "The Claude CLI is not available on the server. Ask the operator to check CLAUDE_BIN.",
            "failed",
        )
    if isinstance(exc, TurnCancelled):
        return STOPPED, "cancelled"
    if isinstance(exc, PermanentCliError):
        return f"Claude could not run this request: {_detail(exc)}", "failed"
    if isinstance(exc, StaleSession):
        return "The earlier Claude session could not be resumed. Send /new and try again.", "failed"
    if isinstance(exc, TransientCliError):
        if exc.side_effects:
            tools = ", ".join(exc.side_effects)
            return (
                f"Claude failed ({_detail(exc)}) after it had already run {tools}. The request "
                "was not repeated, so nothing runs twice: check what changed, then resend what "
                "is still needed.",
                "failed",
            )
        return (
            f"Claude failed after {exc.attempts} attempt{'s' if exc.attempts != 1 else ''}"
            f" ({_detail(exc)}). Please try again.",
            "failed",
        )
    if isinstance(exc, ClaudeError):
        return f"Claude failed: {_detail(exc)}", "failed"
    if isinstance(exc, FeishuApiError):
        return f"Feishu rejected the reply (code {exc.code}).", "failed"
    text = getattr(exc, "user_text", None)
    if isinstance(text, str) and text:
        return text, "failed"
    return (
        f"Something went wrong inside the bot ({type(exc).__name__}). "
        "The operator can find details in the logs.",
        "failed",
    )


def _detail(exc: ClaudeError) -> str:
    for candidate in (*exc.result_errors, *exc.stderr_tail.strip().splitlines()[-1:], str(exc)):
        if candidate and candidate.strip():
            text = candidate.strip()
            return text if len(text) <= 300 else text[:297] + "..."
    return type(exc).__name__


def duration(seconds: float) -> str:
    """A span of time as people read it: "0.05 s", "30 s", "10 min", "2 min 05 s", "1 h 02 min"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{round(seconds, 2):g} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min" if secs == 0 else f"{minutes} min {secs:02d} s"


def clock(ts: float) -> str:
    """A wall-clock time with its UTC offset, as the operator's log shows it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))
