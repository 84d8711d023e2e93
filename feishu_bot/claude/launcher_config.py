"""What the launcher is configured with and what it reports: plain values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from feishu_bot.claude.sandbox import SandboxPolicy
    from feishu_bot.config import Settings

__all__ = [
    "SCHEDULING_TOOLS",
    "LauncherConfig",
    "LauncherStats",
    "RunningTurn",
    "SessionBinding",
]

# The CLI's own scheduling tools (2.1.329) wake a live session with turns nobody sent; the bot
# schedules through /cron instead, so every CLI it runs has them disallowed.
SCHEDULING_TOOLS = ("CronCreate", "CronDelete", "CronList", "ScheduleWakeup")


class SessionBinding(Protocol):
    """Where a conversation's Claude session id lives (the SessionStore satisfies it)."""

    async def set_session(self, key: str, session_id: str) -> None: ...

    async def clear_session(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    """How CLI processes are started and limited. ``extra_env`` is added to the child's
    environment; ``env_drop`` names the bot's own variables the child must not see."""

    bin: str
    max_concurrent: int = 5
    queue_max: int = 20
    conversation_queue_max: int = 5
    max_per_user: int = 0
    user_queue_max: int = 0
    timeout: float = 600.0
    max_retries: int = 2
    retry_delay: float = 2.0
    permission_mode: str | None = "acceptEdits"
    allowed_tools: tuple[str, ...] = ()
    model: str | None = None
    kill_grace: float = 3.0
    interrupt_grace: float = 5.0
    include_partial: bool = True
    extra_env: tuple[tuple[str, str], ...] = ()
    env_drop: tuple[str, ...] = ()
    fork_session: bool = True
    max_line_bytes: int = 64 * 1024 * 1024
    stderr_tail_bytes: int = 16 * 1024
    warm: bool = True
    idle_timeout: float = 1800.0
    mcp_config: str | None = None  # JSON for --mcp-config (in-process SDK servers)
    disallowed_tools: tuple[str, ...] = SCHEDULING_TOOLS
    system_prompt: str = ""  # --append-system-prompt (measured: a second one replaces it)
    # Claude Code's sandbox around every process (None or not enabled: commands unconfined).
    sandbox: SandboxPolicy | None = None

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None and self.sandbox.enabled

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.queue_max < 0 or self.max_retries < 0:
            raise ValueError("queue_max and max_retries must not be negative")
        if self.timeout <= 0 or self.kill_grace < 0 or self.retry_delay < 0:
            raise ValueError("timeout must be positive, kill_grace and retry_delay not negative")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LauncherConfig:
        """Build from the ``CLAUDE_*`` settings; keyword overrides win."""
        values: dict[str, Any] = {
            "bin": settings.CLAUDE_BIN,
            "max_concurrent": settings.CLAUDE_MAX_CONCURRENT,
            "queue_max": settings.CLAUDE_QUEUE_MAX,
            "conversation_queue_max": settings.CLAUDE_CONVERSATION_QUEUE_MAX,
            "max_per_user": settings.CLAUDE_MAX_PER_USER,
            "user_queue_max": settings.CLAUDE_USER_QUEUE_MAX,
            "timeout": settings.CLAUDE_TIMEOUT,
            "max_retries": settings.CLAUDE_MAX_RETRIES,
            "retry_delay": settings.CLAUDE_RETRY_DELAY,
            "permission_mode": settings.CLAUDE_PERMISSION_MODE or None,
            "allowed_tools": tuple(settings.allowed_tools),
            "model": settings.CLAUDE_MODEL or None,
            "warm": settings.CLAUDE_WARM,
            "idle_timeout": settings.CLAUDE_IDLE_TIMEOUT,
            "env_drop": tuple(type(settings).model_fields),
        }
        values.update(overrides)
        return cls(**values)


class RunningTurn(NamedTuple):
    """A turn holding a slot: ``elapsed_s`` of its current attempt (0 between attempts)."""

    key: str
    elapsed_s: float
    timeout_s: float


@dataclass(frozen=True, slots=True)
class LauncherStats:
    """A consistent snapshot; counters are cumulative since start.

    ``active`` turns hold a process; ``warm_idle`` processes wait for their conversation;
    ``cold_starts`` counts processes started, ``evictions`` idle ones closed to make room.
    """

    active: int
    max_concurrent: int
    queued: int
    oldest_wait_s: float
    ok: int
    failed: int
    retried: int
    stale_cleared: int
    timeouts: int
    running: tuple[RunningTurn, ...]
    queue_max: int = 0
    cancelled: int = 0
    rejected: int = 0
    warm_idle: int = 0
    closing: int = 0
    evictions: int = 0
    cold_starts: int = 0
    died_idle: int = 0
    degraded: bool = False
    warm: bool = True
