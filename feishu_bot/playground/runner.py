"""`Playground`: the simulator, the real bot connected to it, and the chat page, in one process.

Nothing is short-cut: the bot is `feishu_bot.app.Bot` with its ordinary Settings pointed at the
simulator (FEISHU_DOMAIN = the simulator's URL), so events travel over the real ``lark_oapi``
long connection, replies through the real REST client, turns through the real launcher and the
real Claude CLI. In offline mode only the model is pretend (`OfflineApi`).

The playground keeps its own state under ``data_dir`` (database, workspace, logs, and in offline
mode a throwaway HOME for the CLI), so it never touches a real bot's data.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from feishu_bot.checks import resolve_claude_bin
from feishu_bot.config import Settings, load_settings
from feishu_bot.errors import ConfigError
from feishu_bot.simulator import FeishuSimulator

from .credentials import claude_credentials
from .offline_api import OFFLINE_LABEL, OfflineApi
from .web import PlaygroundWeb

__all__ = ["Playground", "PlaygroundConfig", "find_claude_bin"]

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
# Measured on 2.1.329: with these set the CLI only talks to ANTHROPIC_BASE_URL.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
# Settings from the user's shell that would send the offline demo elsewhere.
OFFLINE_SCRUB = (
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CONFIG_DIR",
)


@dataclass
class PlaygroundConfig:
    """How to run one playground. `offline=None` means: offline only if no credentials."""

    data_dir: Path = Path("./playground-data")
    port: int | None = None  # None: PLAYGROUND_PORT
    host: str = "127.0.0.1"
    offline: bool | None = False
    env_file: str | None = ".env"
    overrides: dict[str, Any] = field(default_factory=dict)


def find_claude_bin(configured: str) -> str:
    """The pinned CLI in the project's node_modules when CLAUDE_BIN is left at its default."""
    if configured != "claude":
        return configured
    for root in (Path.cwd(), REPO_ROOT):
        candidate = root / "node_modules" / ".bin" / "claude"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return configured


class _EnvPatch:
    """Set/unset process environment variables (inherited by the claude children); undoable."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def set(self, name: str, value: str | None) -> None:
        if name not in self._saved:
            self._saved[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved.clear()


class Playground:
    """``await start()`` (returns once the bot is connected), ``await stop()``.

    `bot_task` ends when the bot stops (SIGINT/SIGTERM reach the bot's own handlers); its
    result is the bot's exit code.
    """

    def __init__(self, config: PlaygroundConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.sim: FeishuSimulator | None = None
        self.api: OfflineApi | None = None
        self.web: PlaygroundWeb | None = None
        self.bot: Any = None
        self.bot_task: asyncio.Task[int] | None = None
        self.settings: Settings | None = None
        self.credentials: str | None = None
        self.offline = False
        self._env = _EnvPatch()
        self._sink_id: int | None = None
        # A fresh app secret per run: the simulator is only reachable from this machine, but
        # nothing should be able to connect to it as "the bot" with a known constant. Public so
        # the caller can register it with the log redaction before anything starts.
        self.app_secret = secrets.token_hex(16)
        # The page's token (see `guard`): whoever has it can drive the bot, approvals
        # included. Made here, like the secret above, so the log redaction knows it early.
        self.page_token = secrets.token_urlsafe(32)

    @property
    def url(self) -> str:
        """The address to open in a browser: the page with this run's token."""
        assert self.web is not None
        return self.web.url

    @property
    def base_url(self) -> str:
        """The page's origin, ``http://127.0.0.1:PORT`` (the API is under it)."""
        assert self.web is not None
        return self.web.base_url

    def mode_text(self) -> str:
        if self.offline:
            return f"{OFFLINE_LABEL} (a local fake model answers through the real Claude CLI)"
        if self.credentials:
            return f"real Claude (credentials: {self.credentials})"
        return (
            "no Claude credentials found: answers will fail. Set ANTHROPIC_API_KEY (or log the "
            "CLI in), or restart with --offline for the demo"
        )

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials = claude_credentials()
        wanted = self.config.offline
        self.offline = (self.credentials is None) if wanted is None else bool(wanted)
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        loopback = "127.0.0.1,localhost"
        no_proxy = os.environ.get("NO_PROXY", "")
        self._env.set("NO_PROXY", f"{loopback},{no_proxy}" if no_proxy else loopback)
        self._env.set("no_proxy", os.environ["NO_PROXY"])
        self.sim = await FeishuSimulator(
            app_id="cli_playground",
            app_secret=self.app_secret,
            bot_open_id="ou_playground_bot",
            bot_name="ClaudeBot",
        ).start()
        if self.offline:
            self.api = OfflineApi()
            await self.api.start()
            self._offline_env(self.api.base_url)
        self.settings = self._settings()
        if resolve_claude_bin(self.settings.CLAUDE_BIN) is None:
            raise ConfigError(
                [
                    f"CLAUDE_BIN: {self.settings.CLAUDE_BIN!r} not found: run "
                    "./scripts/bootstrap.sh (it installs the pinned Claude CLI into node_modules)"
                ]
            )
        self.web = PlaygroundWeb(
            self.sim,
            info=self._info(),
            health=self._health,
            host=self.config.host,
            port=self.settings.PLAYGROUND_PORT if self.config.port is None else self.config.port,
            token=self.page_token,
        )
        self._sink_id = logger.add(self._log_sink, level="INFO", format="{message}")
        # The page first: a busy port fails at once, and the page is up while the bot connects.
        await self.web.start()
        await self._start_bot()

    def _offline_env(self, base_url: str) -> None:
        home = self.data_dir / "claude-home"
        tmp = home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for name in OFFLINE_SCRUB:
            self._env.set(name, None)
        values = {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-offline-demo",
            # The CLI keeps transcripts and settings under HOME: the demo's stay out of the
            # user's own ~/.claude.
            "HOME": str(home),
            "CLAUDE_CODE_TMPDIR": str(tmp),
            **QUIET_ENV,
        }
        for name, value in values.items():
            self._env.set(name, value)

    def _settings(self) -> Settings:
        assert self.sim is not None
        opts = self.sim.options
        values: dict[str, Any] = {
            "FEISHU_APP_ID": opts.app_id,
            "FEISHU_APP_SECRET": opts.app_secret,
            "FEISHU_DOMAIN": self.sim.base_url,
            "FEISHU_ALLOW_ALL": True,
            "FEISHU_ALLOWED_USERS": [],
            "FEISHU_ALLOWED_CHATS": [],
            "DATABASE_PATH": self.data_dir / "data" / "feishu_bot.db",
            "CLAUDE_WORKDIR": self.data_dir / "workspace",
            "LOG_DIR": str(self.data_dir / "logs"),
            "HEALTH_PORT": 0,
            "HEALTH_INTERVAL": 10,
            "SHUTDOWN_GRACE": 3,
        }
        values.update(self.config.overrides)
        settings = load_settings(self.config.env_file, **values)
        claude_bin = find_claude_bin(settings.CLAUDE_BIN)
        if claude_bin != settings.CLAUDE_BIN:
            bin_dir = str(Path(claude_bin).parent)
            self._env.set("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
            settings = load_settings(self.config.env_file, **values, CLAUDE_BIN=claude_bin)
        return settings

    def _info(self) -> dict[str, Any]:
        return {
            "offline": self.offline,
            "offline_label": OFFLINE_LABEL,
            "credentials": self.credentials,
            "mode": self.mode_text(),
            "claude_bin": self.settings.CLAUDE_BIN if self.settings else "",
        }

    async def _start_bot(self) -> None:
        from feishu_bot.app import Bot

        assert self.settings is not None
        self.bot = Bot(self.settings)
        self.bot_task = asyncio.create_task(self.bot.run(), name="playground-bot")
        ready = asyncio.create_task(self.bot.ready.wait())
        try:
            await asyncio.wait(
                {self.bot_task, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if not self.bot.ready.is_set():
            if self.bot_task.done():
                raise RuntimeError(
                    f"the bot stopped during start-up (exit {self.bot_task.result()})"
                )
            raise RuntimeError(f"the bot was not ready within {READY_TIMEOUT_S:g}s")
        self.bot_task.add_done_callback(self._bot_ended)

    def _bot_ended(self, task: asyncio.Task[int]) -> None:
        if self.web is None:
            return
        code = None if task.cancelled() or task.exception() else task.result()
        self.web.notice(f"the bot has stopped (exit {code}); restart the playground", "error")

    async def _health(self) -> dict[str, Any]:
        if self.bot is None:
            return {}
        return await self.bot.health_status()

    def _log_sink(self, message: Any) -> None:
        record = message.record
        text = str(record["message"])
        if text.startswith("health:") and self.web is not None:
            self.web.set_health_line(text)

    async def stop(self) -> None:
        """Stop the bot (graceful, short), the page, the demo model and the simulator."""
        if self.bot_task is not None and not self.bot_task.done():
            self.bot.request_stop()
            # The bot drains for SHUTDOWN_GRACE, then kills what still runs; a second request
            # skips the grace, and a bot that still hangs is cancelled rather than waited on.
            for last in (False, False, True):
                done, _ = await asyncio.wait({self.bot_task}, timeout=30)
                if done:
                    break
                if last:
                    self.bot_task.cancel()
                    await asyncio.gather(self.bot_task, return_exceptions=True)
                else:
                    self.bot.request_stop()
        if self.web is not None:
            await self.web.stop()
        if self._sink_id is not None:
            try:
                logger.remove(self._sink_id)
            except ValueError:
                pass  # removed by a logging reconfiguration
            self._sink_id = None
        if self.api is not None:
            await self.api.close()
        if self.sim is not None:
            await self.sim.stop()
        self._env.restore()
