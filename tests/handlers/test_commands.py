"""Command handlers against a real SQLite store; the launcher is only asked for its numbers."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from database.store import SessionStore
from feishu_bot.claude.launcher_config import LauncherConfig
from feishu_bot.claude.sandbox import SandboxPolicy, SandboxStatus
from feishu_bot.config import Settings
from feishu_bot.context import BotContext, GatewayStatus
from feishu_bot.events import InboundMessage
from feishu_bot.handlers.commands import COMMANDS, parse_command, run_command
from feishu_bot.turns import TurnRegistry
from tests.fakes.wiring import make_conversations


@dataclass
class _Stats:
    active: int = 2
    max_concurrent: int = 5
    queued: int = 1
    warm_idle: int = 0


class _LauncherNumbers:
    config = LauncherConfig(bin="claude")

    def stats(self) -> _Stats:
        return _Stats()

    def queue_position(self, key: str) -> int | None:
        return None

    def is_warm(self, key: str) -> bool:
        return False

    async def close_session(self, key: str) -> None:
        return None


@pytest.fixture
async def ctx(tmp_path: Path):
    root = tmp_path / "ws"
    (root / "proj" / "sub").mkdir(parents=True)
    store = await SessionStore.open(tmp_path / "bot.db")
    settings = Settings(
        _env_file=None,
        FEISHU_APP_ID="cli_t",
        FEISHU_APP_SECRET="secret-t",
        CLAUDE_WORKDIR=root,
        CLAUDE_MODEL="",
    )
    launcher, turns = _LauncherNumbers(), TurnRegistry()
    context = BotContext(
        settings=settings,
        store=store,
        launcher=launcher,  # type: ignore[arg-type]
        replier=None,  # type: ignore[arg-type]
        turns=turns,
        conversations=make_conversations(store, launcher=launcher, turns=turns),
        workdir_root=root,
        gateway_status=lambda: GatewayStatus(connected=True),
    )
    yield context
    await store.close()


MSG = InboundMessage("om_1", "oc_1", "p2p", "ou_1", "text", "/x")


def test_parse_command_only_knows_its_table() -> None:
    assert parse_command("/help") == ("help", "")
    assert parse_command("/CD  proj/sub ") == ("cd", "proj/sub")
    assert parse_command("/compact the context") is None  # Claude's own command
    assert parse_command("hello /new") is None
    assert set(COMMANDS) == {
        "help", "new", "stop", "status", "cd", "model", "sessions", "resume", "stats",
        "permissions", "mode", "cron",
    }


async def test_help_lists_every_command(ctx: BotContext) -> None:
    text = await run_command(ctx, MSG, "help", "")
    for name in COMMANDS:
        assert f"/{name}" in text


async def test_new_clears_the_session(ctx: BotContext) -> None:
    await run_command(ctx, MSG, "status", "")
    await ctx.store.ensure_conversation(
        MSG.conversation_key, chat_id="oc_1", chat_type="p2p", thread_root=None, workdir="/tmp"
    )
    await ctx.store.set_session(MSG.conversation_key, "sess-1")
    text = await run_command(ctx, MSG, "new", "")
    assert "fresh" in text
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv is not None and conv.session_id is None


async def test_cd_accepts_only_existing_dirs_under_the_workspace(ctx: BotContext) -> None:
    root = ctx.workdir_root.resolve()
    await ctx.store.ensure_conversation(
        MSG.conversation_key, chat_id="oc_1", chat_type="p2p", thread_root=None, workdir=str(root)
    )
    await ctx.store.set_session(MSG.conversation_key, "sess-1")
    assert "outside" in await run_command(ctx, MSG, "cd", "..")
    assert "outside" in await run_command(ctx, MSG, "cd", "/etc")
    assert "No such directory" in await run_command(ctx, MSG, "cd", "nope")
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv.session_id == "sess-1" and Path(conv.workdir) == root

    text = await run_command(ctx, MSG, "cd", "proj/sub")
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert Path(conv.workdir) == root / "proj" / "sub"
    assert conv.session_id is None and "fresh" in text
    # relative to the current directory, and back up to the root is allowed
    await run_command(ctx, MSG, "cd", "..")
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert Path(conv.workdir) == root / "proj"


async def test_cd_stays_out_of_other_conversations_with_the_sandbox(ctx: BotContext) -> None:
    """The sandbox hides every directory but the working one: /cd must not hand a chat another
    conversation's directory, or the workspace root that holds them all."""
    root = ctx.workdir_root.resolve()
    mine = root / "p2p-oc_1"
    theirs = root / "group-oc_2"
    for d in (mine / "src", theirs, root / "shared-project"):
        d.mkdir(parents=True)
    on = SandboxPolicy(SandboxStatus(True))
    ctx.launcher.config = LauncherConfig(bin="claude", sandbox=on)  # type: ignore[misc]
    assert "another conversation's directory" in await run_command(ctx, MSG, "cd", str(theirs))
    assert "the workspace itself" in await run_command(ctx, MSG, "cd", str(root))
    for allowed in (mine / "src", root / "shared-project"):
        assert "Working directory is now" in await run_command(ctx, MSG, "cd", str(allowed))
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert Path(conv.workdir) == root / "shared-project"
    ctx.launcher.config = LauncherConfig(bin="claude")  # type: ignore[misc]
    assert "Working directory is now" in await run_command(ctx, MSG, "cd", str(theirs))


async def test_cd_refuses_symlink_escaping_the_workspace(ctx: BotContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ctx.workdir_root / "link").symlink_to(outside)
    assert "outside" in await run_command(ctx, MSG, "cd", str(ctx.workdir_root / "link"))


async def test_model_sets_validates_and_resets(ctx: BotContext) -> None:
    assert "claude-sonnet-4-5" in await run_command(ctx, MSG, "model", "claude-sonnet-4-5")
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv.model == "claude-sonnet-4-5"
    assert "Not a valid" in await run_command(ctx, MSG, "model", "rm -rf /")
    await run_command(ctx, MSG, "model", "default")
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv.model is None


async def test_status_shows_conversation_and_bot(ctx: BotContext) -> None:
    await run_command(ctx, MSG, "model", "opus")
    text = await run_command(ctx, MSG, "status", "")
    assert MSG.conversation_key in text
    assert "session: none" in text and "model: opus" in text and "state: idle" in text
    assert "2/5 running" in text and "1 queued" in text and "websocket connected" in text
    assert "claude process: none" in text
    assert "always allowed here: nothing" in text
    await ctx.store.add_grant(MSG.conversation_key, "tool", "Bash(npm test:*)", "ou_boss")
    text = await run_command(ctx, MSG, "status", "")
    assert "always allowed here: Bash(npm test:*)" in text
    await run_command(ctx, MSG, "new", "")
    assert "always allowed here: nothing" in await run_command(ctx, MSG, "status", "")


async def test_status_says_whether_commands_are_sandboxed(ctx: BotContext) -> None:
    off = SandboxPolicy(SandboxStatus(False, "bubblewrap missing"))
    ctx.launcher.config = LauncherConfig(bin="claude", sandbox=off)  # type: ignore[misc]
    text = await run_command(ctx, MSG, "status", "")
    assert "sandbox: off (bubblewrap missing): Claude's commands are not confined" in text
    on = SandboxPolicy(SandboxStatus(True), allowed_domains=("pypi.org", "github.com"))
    ctx.launcher.config = LauncherConfig(bin="claude", sandbox=on)  # type: ignore[misc]
    text = await run_command(ctx, MSG, "status", "")
    assert "sandbox: on: commands write only here" in text
    assert "network without asking: pypi.org, github.com (other hosts are asked for)" in text


async def test_stop_with_nothing_running(ctx: BotContext) -> None:
    assert "Nothing" in await run_command(ctx, MSG, "stop", "")


# -- #14: replies quote bounded input and say plainly what is wrong --------------------------------


async def test_unbounded_command_echo_cd(ctx: BotContext) -> None:
    """A 100k-character /cd argument used to come back whole; a long name raised OSError and a
    NUL byte ValueError, both shown as "Something went wrong"."""
    root = ctx.workdir_root.resolve()
    await run_command(ctx, MSG, "cd", "")  # the conversation exists, in its default directory
    before = (await ctx.store.get_conversation(MSG.conversation_key)).workdir
    cases = {
        "x" * 100_000: "too long",  # whole path beyond PATH_MAX
        "a" * 300: "name in the path is too long",  # one name beyond NAME_MAX
        f"{root}/proj/" + "b" * 250 + "/" + "c" * 250 + "/" * 10: "No such directory",
        "bad\x00name": "NUL",
        "/etc/" + "y" * 200: "outside the workspace",
        "z" * 200 + "\n" * 500: "too long",
        f"{root}/" + "z" * 200 + "\n" * 20: "No such directory",
    }
    for args, expected in cases.items():
        text = await run_command(ctx, MSG, "cd", args)
        assert expected in text, (args[:20], text)
        assert len(text) <= 160 + len(str(root)), text
        assert "\x00" not in text and "\n" not in text
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv.workdir == before  # nothing changed


async def test_unbounded_command_echo_cd_loop_and_long_target(ctx: BotContext) -> None:
    (ctx.workdir_root / "a").symlink_to("b")
    (ctx.workdir_root / "b").symlink_to("a")
    assert "loop" in await run_command(ctx, MSG, "cd", str(ctx.workdir_root / "a" / "x"))
    deep = ctx.workdir_root
    for i in range(20):
        deep = deep / f"level-{i:02d}-{'d' * 20}"
    deep.mkdir(parents=True)
    text = await run_command(ctx, MSG, "cd", str(deep))
    assert "now …" in text and len(text) < 200  # the end of the path, not all of it
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert Path(conv.workdir) == deep.resolve()


async def test_unbounded_command_echo_model(ctx: BotContext) -> None:
    for args in ("m" * 100_000, "claude\x00opus", "a" * 101, "rm -rf /", "模型"):
        text = await run_command(ctx, MSG, "model", args)
        assert text.startswith("Not a valid model name"), text
        assert len(text) <= 250 and "\x00" not in text
        assert "letters, digits" in text  # says what a valid name is
    conv = await ctx.store.get_conversation(MSG.conversation_key)
    assert conv.model is None
    name = "claude-sonnet-4-5[1m]"
    assert name in await run_command(ctx, MSG, "model", name)
    assert "Model set" in await run_command(ctx, MSG, "model", "a" * 100)


# -- sessions and numbers ---------------------------------------------------------------------


async def test_sessions_lists_and_resume_switches_back(ctx: BotContext) -> None:
    key = MSG.conversation_key
    await run_command(ctx, MSG, "status", "")
    assert "No Claude sessions" in await run_command(ctx, MSG, "sessions", "")
    await ctx.store.ensure_conversation(
        key, chat_id="oc_1", chat_type="p2p", thread_root=None, workdir=str(ctx.workdir_root)
    )
    old = "11111111-1111-1111-1111-111111111111"
    new = "22222222-2222-2222-2222-222222222222"
    await ctx.store.touch_session(key, old, "fix the flaky test please")
    await ctx.store.touch_session(key, new, "write the release notes")
    await ctx.store.set_session(key, new)
    listing = await run_command(ctx, MSG, "sessions", "")
    assert "22222222" in listing and "11111111" in listing and "← current" in listing
    assert listing.index("22222222") < listing.index("11111111")  # newest first
    assert "fix the flaky test" in listing
    assert "Usage" in await run_command(ctx, MSG, "resume", "x")
    assert "no session" in await run_command(ctx, MSG, "resume", "9")
    assert "11111111" in await run_command(ctx, MSG, "resume", "2")
    conv = await ctx.store.get_conversation(key)
    assert conv.session_id == old


async def test_stats_counts_turns_success_latency_and_cost(ctx: BotContext) -> None:
    key = MSG.conversation_key
    for n, (status, ms, cost) in enumerate(
        [("done", 1000, 0.01), ("done", 3000, 0.02), ("failed", 500, 0.0)]
    ):
        turn = await ctx.store.accept_message(
            f"om_s{n}", conversation_key=key, chat_id="oc_1", prompt="p", reply_in_thread=False
        )
        await ctx.store.update_turn(turn, status=status, duration_ms=ms, cost_usd=cost)
    other = await ctx.store.accept_message(
        "om_other", conversation_key="p2p:oc_2", chat_id="oc_2", prompt="p", reply_in_thread=False
    )
    await ctx.store.update_turn(other, status="done", duration_ms=2000, cost_usd=0.5)
    text = await run_command(ctx, MSG, "stats", "")
    assert "This conversation, total: 3 turns, 67% ok, median 1.0s, $0.0300" in text
    assert "Whole bot, total: 4 turns, 75% ok" in text
    assert "This conversation, today: 3 turns" in text


async def test_permissions_lists_removes_and_tells_of_dropped_grants_once(
    ctx: BotContext,
) -> None:
    """Safe controls #4: grants are listed with who and when, removed one by one (the warm
    process is closed so the CLI forgets the session rule), and the upgrade notice is shown
    once."""
    key = MSG.conversation_key
    assert "Nothing is always allowed" in await run_command(ctx, MSG, "permissions", "")
    await ctx.store.add_grant(key, "tool", "Bash(npm test:*)", "ou_boss")
    await ctx.store.add_grant(key, "host", "example.com", "ou_boss")
    text = await run_command(ctx, MSG, "permissions", "")
    assert "1. Bash(npm test:*) · by ou_boss" in text
    assert "2. network: example.com · by ou_boss" in text
    closed: list[str] = []

    async def close_session(k: str) -> bool:
        closed.append(k)
        return True

    ctx.launcher.close_session = close_session  # type: ignore[method-assign]
    assert "Removed: Bash(npm test:*)" in await run_command(ctx, MSG, "permissions", "rm 1")
    assert closed == [key]
    assert [g.rule for g in await ctx.store.list_grants(key)] == ["example.com"]
    assert "no grant 5" in await run_command(ctx, MSG, "permissions", "rm 5")
    assert "Usage" in await run_command(ctx, MSG, "permissions", "rm x")


async def test_permissions_notice_of_grants_dropped_by_the_upgrade(
    ctx: BotContext, tmp_path: Path
) -> None:
    import sqlite3

    db = sqlite3.connect(ctx.store.path)
    db.execute(
        "INSERT INTO grant_notices VALUES (?, 'Bash')", (MSG.conversation_key,)
    )
    db.commit()
    db.close()
    first = await run_command(ctx, MSG, "permissions", "")
    assert "earlier “Always allow” grants (Bash)" in first
    assert "earlier" not in await run_command(ctx, MSG, "permissions", "")
