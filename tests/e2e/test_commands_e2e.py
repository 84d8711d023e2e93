"""Commands as a user sends them in a chat."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from feishu_bot.simulator import FeishuSimulator
from tests.e2e.conftest import StartBot, eventually, final_text
from tests.fakes.fake_anthropic import FakeAnthropic


async def test_new_forgets_the_session(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    first = await sim.push_message(text="my secret number is 8812")
    await final_text(sim, first, contains="echo: my secret number is 8812")
    reset = await sim.push_message(text="/new")
    await final_text(sim, reset, contains="fresh")
    after = await sim.push_message(text="what was it?")
    await final_text(sim, after, contains="echo: what was it?")
    assert "8812" not in json.dumps(anthropic.message_requests[-1].body)


async def test_status_shows_session_directory_and_bot_state(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    running = await start_bot()
    first = await sim.push_message(text="hi")
    await final_text(sim, first, contains="echo: hi")
    status = await sim.push_message(text="/status")
    text = await final_text(sim, status, contains="uptime")
    root = Path(running.settings.CLAUDE_WORKDIR).resolve()
    assert "p2p:oc_sim_p2p" in text and str(root) in text
    assert "session: none" not in text and "turns: 1" in text
    assert "0/5 running" in text and "websocket connected" in text


async def test_cd_changes_the_directory_claude_runs_in(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    running = await start_bot()
    target = Path(running.settings.CLAUDE_WORKDIR).resolve() / "project-x"
    target.mkdir(parents=True)
    outside = await sim.push_message(text="/cd /etc")
    await final_text(sim, outside, contains="outside")
    cd = await sim.push_message(text=f"/cd {target}")
    await final_text(sim, cd, contains="project-x")
    mid = await sim.push_message(text="where am I?")
    await final_text(sim, mid, contains="echo: where am I?")
    assert str(target) in json.dumps(anthropic.message_requests[-1].body)


async def test_model_is_passed_to_claude(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot()
    set_model = await sim.push_message(text="/model claude-test-model-7")
    await final_text(sim, set_model, contains="claude-test-model-7")
    mid = await sim.push_message(text="hello")
    await final_text(sim, mid, contains="echo: hello")
    assert anthropic.message_requests[-1].body["model"] == "claude-test-model-7"


async def test_unknown_slash_word_goes_to_claude(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot
) -> None:
    await start_bot(fake_cli=True)
    mid = await sim.push_message(text="/explain this repo")
    await final_text(sim, mid, contains="echo: /explain this repo")


async def test_stop_interrupts_kills_the_tool_tree_keeps_the_session_warm_and_cancels_queued(
    sim: FeishuSimulator, start_bot: StartBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "fake-claude.jsonl"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))
    await start_bot(fake_cli=True)
    busy = await sim.push_message(text="[[fake:spawn_child]] build everything")
    waiting = await sim.push_message(text="and then this")

    def child_record() -> dict | None:
        if not log.exists():
            return None
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec["event"] == "child":
                return rec
        return None

    rec = await eventually(child_record)
    pids = [rec["pid"], rec["child_pid"], rec["grandchild_pid"]]
    assert all(psutil.pid_exists(p) for p in pids)
    stop = await sim.push_message(text="/stop")
    await final_text(sim, stop, contains="Stopped 2")
    await final_text(sim, busy, contains="Stopped by /stop")
    await final_text(sim, waiting, contains="Stopped by /stop")

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # the interrupt ended the tool's whole tree; the CLI itself stays warm for the next turn
    await eventually(lambda: all(gone(p) for p in pids[1:]), timeout=10)
    assert not gone(pids[0])
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["prompt_head"] for r in records if r["event"] == "turn_start"] == [
        "[[fake:spawn_child]] build everything"
    ]
    assert os.getpid() not in pids
    after = await sim.push_message(text="still there?")
    await final_text(sim, after, contains="echo: still there?")
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert {r["pid"] for r in records if r["event"] == "turn_start"} == {pids[0]}
