"""One exception tree for the bot.

Exceptions carry data (exit code, stderr tail, counts), never user-facing sentences: turning an
exception into words for a chat is `wording.describe_error`'s job alone (AttachmentError, whose
sentence only the attachments code can write, is the one exception and says so).
"""

from __future__ import annotations

__all__ = [
    "BotError",
    "ClaudeError",
    "CliNotFound",
    "ConfigError",
    "FeishuApiError",
    "JournalError",
    "PermanentCliError",
    "QueueFull",
    "StaleSession",
    "TransientCliError",
    "TurnCancelled",
    "TurnTimeout",
]


class BotError(Exception):
    """Root of every error the bot raises on purpose."""


class ConfigError(BotError):
    """Invalid configuration; `problems` holds one line per bad variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ClaudeError(BotError):
    """A Claude turn failed. `attempts` counts CLI runs made for the turn."""

    def __init__(
        self,
        message: str = "",
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        result_errors: tuple[str, ...] = (),
        attempts: int = 1,
        partial_text: str = "",
        history_cut: bool = False,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.result_errors = result_errors
        self.attempts = attempts
        self.partial_text = partial_text
        # The failed request was left out of the conversation: the next message continues
        # from Claude's last good answer.
        self.history_cut = history_cut


class CliNotFound(ClaudeError):
    """CLAUDE_BIN does not exist or is not executable."""


class PermanentCliError(ClaudeError):
    """A failure that retrying cannot fix (bad argument, root + bypass, max turns)."""


class TransientCliError(ClaudeError):
    """A failure worth retrying (API error after the CLI's own retries, crash, signal).

    `side_effects` names the tools that already ran in the failed attempt; when it is not
    empty the turn was deliberately not retried, so nothing runs twice.
    """

    def __init__(self, message: str = "", *, side_effects: tuple[str, ...] = (), **kw: object):
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.side_effects = side_effects


class StaleSession(ClaudeError):
    """The stored session no longer exists on disk (`No conversation found ...`)."""


class TurnTimeout(ClaudeError):
    """An attempt ran longer than CLAUDE_TIMEOUT and its process tree was killed."""


class TurnCancelled(ClaudeError):
    """The turn was stopped by /stop or by shutdown."""


class JournalError(BotError):
    """The turn journal could not record a turn's progress, so the turn was stopped rather
    than risk running it again after a crash."""


class QueueFull(BotError):
    """Every slot is busy and the wait queue is full."""

    def __init__(self, active: int, max_active: int, queued: int, *, user_waiting: int = 0) -> None:
        super().__init__(f"busy: {active}/{max_active} running, {queued} queued")
        self.active = active
        self.max_active = max_active
        self.queued = queued
        # Set when the sender's own waiting turns are the limit (CLAUDE_USER_QUEUE_MAX).
        self.user_waiting = user_waiting


class FeishuApiError(BotError):
    """A Feishu REST call failed for good (after retries)."""

    def __init__(self, message: str, *, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class FeishuTransientError(FeishuApiError):
    """A Feishu call that may succeed if repeated: timeout, connection error, HTTP 5xx.

    `retry_after` is the wait in seconds Feishu asked for (rate limits), else None.
    """

    def __init__(
        self, message: str, *, status: int = 0, code: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class FeishuRateLimited(FeishuTransientError):
    """HTTP 429 / code 99991400 / 230020: wait `retry_after` seconds, then repeat."""


class FeishuTokenInvalid(FeishuTransientError):
    """The tenant token was rejected (99991661/99991663): fetch a new one, then repeat."""


__all__ += ["FeishuRateLimited", "FeishuTokenInvalid", "FeishuTransientError"]


class GatewayError(BotError):
    """The Feishu long connection could not be established.

    `code` is the code Feishu answered to endpoint discovery when it refused the app (for
    instance a wrong app secret); 0 when the failure was a timeout or a crash.
    """

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


__all__ += ["GatewayError"]


class AttachmentError(BotError):
    """A message's attachment cannot be given to Claude (or a file cannot be sent back).

    Unlike the rest of this tree it carries its user-facing sentence as `str(exc)`: only the
    attachments code knows the file name, the limit and the reason, and the sentence is what
    the user must read (describe_error returns it as is). `reason` is one of "too_large",
    "not_found", "download_failed", "timeout", "not_image", "sticker", "unsupported",
    "save_failed".
    """

    def __init__(self, sentence: str, *, reason: str, kind: str = "", name: str = "") -> None:
        super().__init__(sentence)
        self.reason = reason
        self.kind = kind
        self.name = name


__all__ += ["AttachmentError"]


class TurnRefused(BotError):
    """A turn was refused before anything reached Claude (a spending limit): not a failure.

    Like AttachmentError it carries its sentence as `str(exc)`: only the policy that refused
    knows the limit and when it resets.
    """


__all__ += ["TurnRefused"]
