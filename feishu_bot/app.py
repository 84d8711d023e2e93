"""The composition root: the only place that builds services and wires them together.

Lifetimes hang on one AsyncExitStack (torn down in reverse). The SIGTERM/SIGINT handlers are
installed before anything starts and removed last. Shutdown order on the first signal: close the
websocket (events not yet delivered stay with Feishu), turns that have not started are kept
queued in the journal for the next start, running turns get SHUTDOWN_GRACE seconds, what is
still running then is cancelled (process trees killed, users told), then the launcher, the
replier and the store close and `run()` returns 0. A second signal skips the rest of the grace
period. A signal during startup abandons the start and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from feishu_bot import __version__
from feishu_bot.claude.sandbox import SandboxStatus, SandboxUnavailable, startup_policy
from feishu_bot.config import Settings
from feishu_bot.errors import FeishuApiError, GatewayError
from feishu_bot.startup import (
    DatabaseUnusable,
    credentials_refused,
    gateway_refused,
    open_store,
    wait_for_bot_info,
    wait_stop_or_gateway_failure,
)

if TYPE_CHECKING:
    from feishu_bot.context import GatewayStatus
    from feishu_bot.metrics import HealthSnapshot

__all__ = ["Bot", "run_app"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
KILL_BUDGET_S = 15.0


class Bot:
    """One running bot. `run()` returns the process exit code. ``sandbox``: what the entry
    point found out about Claude Code's sandbox (detected at start when None)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sandbox: SandboxStatus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` (epoch seconds) is what scheduled prompts are timed by (tests move it)."""
        self.settings = settings
        self._sandbox = sandbox
        self._clock = clock
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.ready = asyncio.Event()
        self.dispatcher: Any = None
        self.gateway: Any = None
        self.launcher: Any = None
        self.store: Any = None
        self.alerts: Any = None
        self.cron: Any = None
        self._ctx: Any = None  # the BotContext, once `_start` has wired it

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: skip the grace period."""
        if self._force.is_set():
            logger.warning("stop signal: already stopping as fast as possible")
        elif self._stop.is_set():
            logger.warning("second stop signal: stopping now")
            self._force.set()
        else:
            logger.info(
                "stop requested: finishing running turns (up to {}s)", self.settings.SHUTDOWN_GRACE
            )
            self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        # Exit codes: see feishu_bot/startup.py (2 only for what a restart cannot fix).
        failure: GatewayError | None = None
        try:
            async with AsyncExitStack() as stack:
                await self._open_store(stack)
                if not await self._start_unless_stopped(stack):
                    logger.info("stop requested during startup: start abandoned")
                else:
                    self.ready.set()
                    failure = await wait_stop_or_gateway_failure(self._stop, self.gateway)
                    if failure is not None:
                        logger.error("stopping so that the supervisor restarts me: {}", failure)
                        self._stop.set()
                    await self._drain()
            if failure is not None:
                logger.info("feishu-bot stopped (exit {})", EXIT_FAILURE)
                return EXIT_FAILURE
            logger.info("feishu-bot stopped")
            return EXIT_OK
        except (DatabaseUnusable, SandboxUnavailable) as exc:
            logger.error("{}", exc.line)
            return EXIT_CONFIG
        except FeishuApiError as exc:
            if credentials_refused(exc):
                logger.error(
                    "Feishu refused the app credentials: {} (code {}): check FEISHU_APP_ID, "
                    "FEISHU_APP_SECRET and FEISHU_DOMAIN",
                    exc,
                    exc.code,
                )
                return EXIT_CONFIG
            logger.error("a Feishu call failed during start-up: {} (code {})", exc, exc.code)
            return EXIT_FAILURE
        except GatewayError as exc:
            if gateway_refused(exc):
                logger.error(
                    "Feishu refused the long connection (code {}): check FEISHU_APP_ID, "
                    "FEISHU_APP_SECRET and FEISHU_DOMAIN",
                    exc.code,
                )
                return EXIT_CONFIG
            logger.error("could not open the Feishu long connection: {}", exc)
            return EXIT_FAILURE
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _open_store(self, stack: AsyncExitStack) -> None:
        # Opened before the cancellable part of the start: a half-opened connection has a
        # non-daemon thread that would keep the process alive.
        logger.info("feishu-bot {} starting (domain {})", __version__, self.settings.FEISHU_DOMAIN)
        store = await open_store(self.settings.DATABASE_PATH)
        stack.push_async_callback(store.close)
        self.store = store

    async def _start_unless_stopped(self, stack: AsyncExitStack) -> bool:
        """Run `_start`; False if a stop signal came first (the start is then cancelled)."""
        start = asyncio.ensure_future(self._start(stack))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not start.done():
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
        if start.cancelled():
            return False
        start.result()  # re-raise a failed start
        return True

    async def _start(self, stack: AsyncExitStack) -> None:
        from feishu_bot.alerts import (
            AlertEngine,
            AlertService,
            Thresholds,
            admin_chat_sender,
        )
        from feishu_bot.claude.launcher import Launcher, LauncherConfig
        from feishu_bot.context import BotContext
        from feishu_bot.conversations import Conversations
        from feishu_bot.dispatch import (
            CARD_ACTION_EVENT,
            MENU_EVENT,
            MESSAGE_EVENT,
            RECALL_EVENT,
            Dispatcher,
        )
        from feishu_bot.feishu.access import AccessPolicy, RefusalLimiter
        from feishu_bot.feishu.gateway import FeishuGateway
        from feishu_bot.feishu.replier import FeishuReplier
        from feishu_bot.health import HealthMonitor
        from feishu_bot.health_http import HealthServer
        from feishu_bot.metrics import BotMetrics
        from feishu_bot.turns import TurnRegistry

        s = self.settings
        store = self.store
        workdir_root = Path(s.CLAUDE_WORKDIR).expanduser().resolve()
        workdir_root.mkdir(parents=True, exist_ok=True)

        cleared = await store.wipe_stale_sessions(s.SESSION_STALE_HOURS)
        logger.info(
            "Cleared {} Claude session IDs inactive for {:g}h+", cleared, s.SESSION_STALE_HOURS
        )

        replier = FeishuReplier(
            app_id=s.FEISHU_APP_ID,
            app_secret=s.FEISHU_APP_SECRET.get_secret_value(),
            domain=s.FEISHU_DOMAIN,
        )
        stack.push_async_callback(replier.aclose)
        sandbox = await asyncio.to_thread(startup_policy, s, self._sandbox)
        alerts = AlertService(
            AlertEngine(
                Thresholds.from_settings(s),
                # An operator's CLAUDE_SANDBOX=off is a choice, not an outage to report.
                sandbox_available=None if s.CLAUDE_SANDBOX == "off" else sandbox.enabled,
                sandbox_detail=sandbox.status.text,
            ),
            sample=self._alert_sample,
            send=admin_chat_sender(replier, s.FEISHU_ADMIN_CHAT),
            disk_paths={
                "CLAUDE_WORKDIR": workdir_root,
                "DATABASE_PATH": Path(s.DATABASE_PATH).expanduser().resolve().parent,
            },
            # often enough that an outage is measured to within a quarter of its threshold
            interval=min(1.0, s.ALERT_WS_DOWN_S / 4),
        )
        self.alerts = alerts
        # Up before the first Feishu call: while Feishu cannot be reached the bot waits (and
        # /healthz says 503) instead of exiting.
        metrics = BotMetrics(self._metrics_snapshot, on_turn=alerts.turn_finished)
        if s.HEALTH_PORT:
            server = HealthServer(
                host=s.HEALTH_HOST,
                port=s.HEALTH_PORT,
                status=self.health_status,
                metrics=metrics,
            )
            await server.start()
            stack.push_async_callback(server.stop)
            logger.info("health endpoint on http://{}:{}/healthz", s.HEALTH_HOST, server.port)
        bot_info = await wait_for_bot_info(replier)
        bot_open_id = str(bot_info.get("open_id", ""))
        logger.info("bot identity: {} ({})", bot_info.get("app_name", "?"), bot_open_id)

        from feishu_bot.claude.mcp_feishu import SEND_FILE_TOOL, FeishuMcp, mcp_config_arg
        from feishu_bot.handlers.cron import CRON_SYSTEM_PROMPT
        from feishu_bot.spend import SpendPolicy

        spend = SpendPolicy.from_settings(s, store)
        launcher = Launcher(
            LauncherConfig.from_settings(
                s,
                mcp_config=mcp_config_arg(),
                allowed_tools=(*s.allowed_tools, SEND_FILE_TOOL),
                sandbox=sandbox,
                system_prompt=CRON_SYSTEM_PROMPT,
            ),
            store,
            default_mcp=FeishuMcp(_no_turn_send),
            gate=spend.gate if spend.limited else None,  # checked again as a turn leaves the queue
        )
        stack.push_async_callback(launcher.aclose)
        self.launcher = launcher

        turns = TurnRegistry()
        stack.push_async_callback(turns.aclose)

        access = AccessPolicy(s.FEISHU_ALLOWED_USERS, s.FEISHU_ALLOWED_CHATS, s.FEISHU_ALLOW_ALL)
        from feishu_bot.handlers.cards import card_services
        from feishu_bot.handlers.chat import ChatRunner

        cards = card_services(s, store)  # signer, reply sinks, ApprovalBroker, answers
        runner = ChatRunner(s, store, replier, launcher, cards.broker, workdir_root)
        conversations = Conversations(
            store=store,
            replier=replier,
            launcher=launcher,
            turns=turns,
            metrics=metrics,
            access=access,
            sinks=cards.stream_factory,
            runner=runner,
            approvals=cards.broker,
            timeout_s=s.CLAUDE_TIMEOUT,
            spend=spend if spend.limited else None,
            cron_tz=s.CRON_TZ,
        )
        from feishu_bot.cron_runner import CronRunner
        from feishu_bot.cron_schedule import zone

        cron = CronRunner(
            store=store,
            conversations=conversations,
            turns=turns,
            access=access,
            replier=replier,
            tz=zone(s.CRON_TZ),
            clock=self._clock,
        )
        self.cron = cron
        ctx = BotContext(
            settings=s,
            store=store,
            launcher=launcher,
            replier=replier,
            turns=turns,
            conversations=conversations,
            workdir_root=workdir_root,
            gateway_status=self._gateway_status,
            metrics=metrics,
            approvals=cards.broker,
            card_answers=cards.answers,
            cron=cron,
        )
        self._ctx = ctx
        dispatcher = Dispatcher(
            ctx, bot_open_id=bot_open_id, access=access, refusals=RefusalLimiter()
        )
        self.dispatcher = dispatcher
        if not (s.FEISHU_ALLOW_ALL or s.FEISHU_ALLOWED_USERS or s.FEISHU_ALLOWED_CHATS):
            logger.warning(
                "no one is allowed to use the bot: set FEISHU_ALLOWED_USERS, FEISHU_ALLOWED_CHATS "
                "or FEISHU_ALLOW_ALL"
            )
        await conversations.recover()

        loop = asyncio.get_running_loop()
        gateway = FeishuGateway(
            app_id=s.FEISHU_APP_ID,
            app_secret=s.FEISHU_APP_SECRET.get_secret_value(),
            domain=s.FEISHU_DOMAIN,
            on_event=dispatcher.handle,
            loop=loop,
            forward_event_types=(MESSAGE_EVENT, CARD_ACTION_EVENT, MENU_EVENT, RECALL_EVENT),
        )
        self.gateway = gateway
        await gateway.start()
        stack.push_async_callback(gateway.stop)

        monitor = HealthMonitor(
            s.HEALTH_INTERVAL, launcher_stats=launcher.stats, extras=self._health_extras
        )
        health_task = loop.create_task(monitor.run(), name="health")
        stack.push_async_callback(_cancel_and_wait, health_task)
        from feishu_bot.retention import run_pruning

        pruning = loop.create_task(
            run_pruning(store, env=launcher.child_environment()), name="retention"
        )
        stack.push_async_callback(_cancel_and_wait, pruning)
        alerting = loop.create_task(alerts.run(), name="alerts")
        stack.push_async_callback(_cancel_and_wait, alerting)
        # After recovery and the connection: a run missed while the bot was down is made up.
        scheduling = loop.create_task(cron.run(), name="cron")
        stack.push_async_callback(cron.aclose)
        stack.push_async_callback(_cancel_and_wait, scheduling)
        if s.FEISHU_ADMIN_CHAT:
            logger.info("alerts go to {}", s.FEISHU_ADMIN_CHAT)

        logger.info(
            "feishu-bot ready: max {} concurrent claude processes, queue {}, timeout {:g}s",
            s.CLAUDE_MAX_CONCURRENT,
            s.CLAUDE_QUEUE_MAX,
            s.CLAUDE_TIMEOUT,
        )

    def _sandbox_text(self) -> str:
        policy = self.launcher.config.sandbox if self.launcher else None
        return policy.status.text if policy is not None else "unknown"

    async def _drain(self) -> None:
        """Graceful stop; see the module docstring for the order. Never raises on a stuck turn."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        turns = self._ctx.turns
        if self.gateway is not None:
            await self.gateway.stop()
        self._ctx.conversations.stop_accepting()
        # One loop pass first: a turn task created while the gateway stopped must take its first
        # step (journaling the message) before it is cancelled, or the acked message is lost.
        await asyncio.sleep(0)
        # Turns that have not started are kept queued in the journal rather than started now
        # and interrupted when the grace runs out.
        kept = turns.cancel_waiting("shutdown")
        grace = self.settings.SHUTDOWN_GRACE
        logger.info(
            "shutdown: stopped taking events; {} running turns get up to {:g}s, "
            "{} waiting turns kept for the next start",
            turns.running_turns,
            grace,
            kept,
        )
        finished = False
        if not self._force.is_set():
            force = asyncio.ensure_future(self._force.wait())
            idle = asyncio.ensure_future(turns.wait_idle(grace))
            await asyncio.wait({force, idle}, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            finished = idle.done() and idle.result()
            idle.cancel()
        if not finished:
            cancelled = turns.cancel_all("shutdown")
            logger.warning("shutdown: interrupting {} turns still running", cancelled)
            # cancelled turns kill their process trees (SIGTERM, grace, SIGKILL) before ending
            if not await turns.wait_idle(KILL_BUDGET_S):
                logger.error("shutdown: turns still not finished after {:g}s", KILL_BUDGET_S)
        logger.info("shutdown: turns drained in {:.1f}s", loop.time() - began)

    def _metrics_snapshot(self) -> HealthSnapshot:
        from feishu_bot.metrics import HealthSnapshot

        status = self._gateway_status()
        stats = self.launcher.stats() if self.launcher else None
        counters = self.dispatcher.counters if self.dispatcher else None
        common = {
            "ws_connected": status.connected,
            "reconnects": status.reconnects,
            "last_frame_at": status.last_frame_at,
            "duplicates": counters.duplicates_dropped if counters else 0,
            "uptime_s": self._ctx.uptime_s if self._ctx is not None else 0.0,
            "alerts": self.alerts.gauges() if self.alerts else {},
            "disk_free": self.alerts.disk_free() if self.alerts else {},
        }
        if stats is None:
            return HealthSnapshot(**common)
        return HealthSnapshot(
            active=stats.active,
            queued=stats.queued,
            max_concurrent=stats.max_concurrent,
            proc_busy=stats.active,
            proc_idle=stats.warm_idle,
            proc_closing=stats.closing,
            evictions=stats.evictions,
            cold_starts=stats.cold_starts,
            retried=stats.retried,
            stale_cleared=stats.stale_cleared,
            **common,
        )

    async def health_status(self) -> dict[str, Any]:
        """The body of /healthz: healthy when the websocket is up and the database answers."""
        snap = self._metrics_snapshot()
        try:
            db_ok = bool(await self.store.ping()) if self.store else False
        except Exception:
            db_ok = False
        healthy = snap.ws_connected and db_ok and not self._stop.is_set()
        last_ok = self._ctx.metrics.last_ok_at if self._ctx is not None else None
        return {
            "healthy": healthy,
            "version": __version__,
            "websocket": {
                "connected": snap.ws_connected,
                "reconnects": snap.reconnects,
                "last_frame_age_s": _age(snap.last_frame_at),
            },
            "database": {"ok": db_ok},
            "active": snap.active,
            "max_concurrent": snap.max_concurrent,
            "queued": snap.queued,
            "uptime_s": round(snap.uptime_s, 1),
            "last_ok_turn_age_s": _age(last_ok),
            "alerts": self.alerts.active() if self.alerts else [],
            "stopping": self._stop.is_set(),
            "sandbox": self._sandbox_text(),
        }

    def _gateway_status(self) -> GatewayStatus:
        from feishu_bot.context import GatewayStatus

        gateway = self.gateway
        if gateway is None:
            return GatewayStatus(connected=False)
        return GatewayStatus(
            connected=bool(gateway.connected),
            reconnects=int(gateway.reconnects),
            last_frame_at=gateway.last_frame_at,
        )

    def _alert_sample(self) -> Any:
        from feishu_bot.alerts import sample_of

        # While stopping, the gateway is closed on purpose: not an outage.
        gateway = None if self._stop.is_set() else self.gateway
        return sample_of(gateway, self.launcher.stats() if self.launcher else None)

    def _health_extras(self) -> dict[str, Any]:
        status = self._gateway_status()
        counters = self.dispatcher.counters if self.dispatcher else None
        stats = self.launcher.stats() if self.launcher else None
        warm: dict[str, Any] = {}
        if stats is not None:
            mode = "off" if not stats.warm else ("degraded" if stats.degraded else "on")
            warm = {
                "warm": f"{mode} busy {stats.active} idle {stats.warm_idle}",
                "evictions": stats.evictions,
                "cold-starts": stats.cold_starts,
            }
        last_ok = self._ctx.metrics.last_ok_at if self._ctx is not None else None
        active = self.alerts.active() if self.alerts else []
        return {
            **warm,
            "sandbox": self._sandbox_text(),
            "ws": "up" if status.connected else "down",
            "reconnects": status.reconnects,
            "dup": counters.duplicates_dropped if counters else 0,
            "last-frame": _ago(status.last_frame_at),
            "last-ok-turn": _ago(last_ok),
            "alerts": ",".join(a["condition"] for a in active) or "none",
        }


async def _no_turn_send(path: str, caption: str | None, tool_use_id: str | None) -> str:
    # The CLI's MCP handshake can come before a turn; a tool call never should.
    raise ValueError("send_file is only available while answering a message")


def _age(ts: float | None) -> float | None:
    return round(max(0.0, time.time() - ts), 1) if ts else None


def _ago(ts: float | None) -> str:
    age = _age(ts)
    return "never" if age is None else f"{age:.0f}s"


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_app(settings: Settings, *, sandbox: SandboxStatus | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT; returns the exit code."""
    return await Bot(settings, sandbox=sandbox).run()
