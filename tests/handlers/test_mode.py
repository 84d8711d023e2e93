"""/mode against a real SQLite store: the modes CLAUDE_ALLOWED_MODES offers, the warm process
closed on a change, /status showing it, /new going back to CLAUDE_PERMISSION_MODE."""

from __future__ import annotations

from pathlib import Path

import pytest

from database.store import SessionStore
from feishu_bot.config import Settings
from feishu_bot.context import BotContext, GatewayStatus
from feishu_bot.events import InboundMessage
from feishu_bot.handlers.commands import run_command
from feishu_bot.turns import TurnRegistry
from tests.fakes.wiring import make_conversations
from tests.handlers.test_commands import _LauncherNumbers


class Launcher(_LauncherNumbers):
    def __init__(self) -> None:
        self.closed: list[str] = []

    async def close_session(self, key: str) -> None:
        self.closed.append(key)


async def context(tmp_path: Path, **settings: object) -> BotContext:
    store = await SessionStore.open(tmp_path / "bot.db")
    values: dict[str, object] = {
        "FEISHU_APP_ID": "cli_t", "FEISHU_APP_SECRET": "secret-t", "CLAUDE_WORKDIR": tmp_path,
    }
    values.update(settings)
    launcher, turns = Launcher(), TurnRegistry()
    return BotContext(
        settings=Settings(_env_file=None, **values), store=store,
        launcher=launcher, replier=None,  # type: ignore[arg-type]
        turns=turns, workdir_root=tmp_path,
        conversations=make_conversations(store, launcher=launcher, turns=turns),
        gateway_status=lambda: GatewayStatus(connected=True),
    )


@pytest.fixture
async def ctx(tmp_path: Path):
    made = await context(tmp_path)
    yield made
    await made.store.close()


MSG = InboundMessage("om_1", "oc_1", "p2p", "ou_1", "text", "/mode")


async def cmd(ctx: BotContext, name: str, args: str = "") -> str:
    return await run_command(ctx, MSG, name, args)


async def test_show_and_change_the_mode(ctx: BotContext) -> None:
    shown = await cmd(ctx, "mode")
    assert shown.startswith("Permission mode: acceptEdits (the bot's default)")
    assert "Usage: /mode default|acceptEdits|plan" in shown
    changed = await cmd(ctx, "mode", "PLAN")  # names are matched without case
    assert changed.startswith("Permission mode is now plan: Claude only plans")
    assert await ctx.store.permission_mode("p2p:oc_1") == "plan"
    assert ctx.launcher.closed == ["p2p:oc_1"]  # the warm process starts again in plan mode
    assert "already in plan mode" in await cmd(ctx, "mode", "plan")
    assert "• permission mode: plan (/mode)" in await cmd(ctx, "status")
    await cmd(ctx, "new")
    assert await ctx.store.permission_mode("p2p:oc_1") is None
    assert "• permission mode: acceptEdits\n" in await cmd(ctx, "status")


async def test_only_the_allowed_modes_can_be_chosen(ctx: BotContext, tmp_path: Path) -> None:
    refused = await cmd(ctx, "mode", "bypassPermissions")
    assert "is not a mode you can choose here" in refused
    assert "(CLAUDE_ALLOWED_MODES)" in refused
    assert await ctx.store.permission_mode("p2p:oc_1") is None
    assert ctx.launcher.closed == []
    wide = await context(
        tmp_path / "wide", CLAUDE_ALLOWED_MODES="default,bypassPermissions",
        CLAUDE_PERMISSION_MODE="default",
    )
    try:
        assert (await cmd(wide, "mode", "bypasspermissions")).startswith(
            "Permission mode is now bypassPermissions"
        )
        assert "not a mode you can choose" in await cmd(wide, "mode", "plan")
    finally:
        await wide.store.close()
