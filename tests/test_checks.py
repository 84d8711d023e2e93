"""`feishu-bot check --online` for FEISHU_ADMIN_CHAT: a chat the bot is in, or an open_id,
checked without posting anything (against the Feishu simulator)."""

from __future__ import annotations

from feishu_bot.checks import online_checks
from feishu_bot.config import Settings
from feishu_bot.simulator import FeishuSimulator


def _settings(sim: FeishuSimulator, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "FEISHU_APP_ID": sim.options.app_id,
        "FEISHU_APP_SECRET": sim.options.app_secret,
        "FEISHU_DOMAIN": sim.base_url,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _posts(sim: FeishuSimulator) -> list[str]:
    return [r.path for r in sim.requests if r.path.startswith("/open-apis/im/v1/messages")]


async def test_no_admin_chat_adds_no_line(sim: FeishuSimulator) -> None:
    results = await online_checks(_settings(sim))
    assert len(results) == 3 and all(ok for ok, _ in results)


async def test_a_chat_the_bot_is_in(sim: FeishuSimulator) -> None:
    sim.records.bot_chats.add("oc_ops")
    results = await online_checks(_settings(sim, FEISHU_ADMIN_CHAT="oc_ops"))
    assert results[3] == (True, "admin chat: oc_ops (the bot is in it)")
    (ask,) = [r for r in sim.requests if r.path.endswith("/is_in_chat")]
    assert ask.path == "/open-apis/im/v1/chats/oc_ops/members/is_in_chat"
    assert _posts(sim) == []  # nothing was posted


async def test_a_chat_the_bot_is_not_in(sim: FeishuSimulator) -> None:
    results = await online_checks(_settings(sim, FEISHU_ADMIN_CHAT="oc_elsewhere"))
    ok, line = results[3]
    assert not ok
    assert line == (
        "admin chat: the bot is not in oc_elsewhere: add it to that chat, or fix FEISHU_ADMIN_CHAT"
    )


async def test_a_refused_check_names_the_scope(sim: FeishuSimulator) -> None:
    sim.fail_next("GET", r"/is_in_chat$", status=400, code=99991672)
    ok, line = (await online_checks(_settings(sim, FEISHU_ADMIN_CHAT="oc_ops")))[3]
    assert not ok and "code 99991672" in line and "im:chat:readonly" in line


async def test_an_open_id_is_accepted_without_posting(sim: FeishuSimulator) -> None:
    ok, line = (await online_checks(_settings(sim, FEISHU_ADMIN_CHAT="ou_boss")))[3]
    assert ok and line.startswith("admin chat: the open_id ou_boss: alerts go to the bot's")
    assert _posts(sim) == []


async def test_without_a_token_the_chat_is_not_checked(sim: FeishuSimulator) -> None:
    results = await online_checks(
        _settings(sim, FEISHU_APP_SECRET="wrong", FEISHU_ADMIN_CHAT="oc_ops")
    )
    assert results[3] == (False, "admin chat: not checked (no tenant token)")
