"""The launcher with the real pinned Claude CLI against FakeAnthropic (offline).

Warm sessions (issue 8) proven with the real CLI: the second turn runs in the same process and
carries the first; an interrupt mid-stream keeps the process; a stale ``--resume`` is recovered;
a retried turn (after a 529, after a crash) never shows the model the user's message twice.
Processes are told apart by pid (psutil), requests are read from FakeAnthropic.

These fail, never skip, when the binary is missing: the pinned CLI is part of the project.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from feishu_bot.claude.launcher import Launcher, LauncherConfig
from feishu_bot.errors import PermanentCliError, TransientCliError, TurnTimeout
from tests.claude.support import EventRecorder, MemoryBinding, alive_pids, poll_until, request
from tests.fakes.claude_env import REAL_CLAUDE_BIN, claude_env_overrides
from tests.fakes.fake_anthropic import ApiError, FakeAnthropic, Hang, Reply, ToolUse

pytestmark = pytest.mark.real_cli


@pytest.fixture
def real_bin() -> str:
    assert REAL_CLAUDE_BIN.exists(), f"pinned CLI missing: {REAL_CLAUDE_BIN} (run npm ci)"
    assert os.access(REAL_CLAUDE_BIN, os.X_OK)
    return str(REAL_CLAUDE_BIN)


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
async def real_launcher(
    real_bin: str,
    api: FakeAnthropic,
    home: Path,
    binding: MemoryBinding,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., Launcher]]:
    # As root the CLI refuses bypass permissions unless IS_SANDBOX is set; keep the real rule.
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    made: list[Launcher] = []

    def factory(**config: object) -> Launcher:
        env = claude_env_overrides(api.base_url, home)
        values: dict[str, object] = {
            "bin": real_bin,
            "timeout": 60.0,
            "retry_delay": 0.01,
            "kill_grace": 3.0,
            "extra_env": tuple(env.items()),
        }
        values.update(config)
        launcher = Launcher(LauncherConfig(**values), binding)  # type: ignore[arg-type]
        made.append(launcher)
        return launcher

    yield factory
    for launcher in made:
        await launcher.aclose()


def processes_under(marker: str) -> list[psutil.Process]:
    """Live processes whose environment or command line mentions ``marker``.

    ``proc.info["cmdline"]`` holds the command line read during the scan.
    """
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = proc.info["cmdline"] or []
        environ = proc.info["environ"] or {}
        if marker in " ".join(cmdline) + " " + " ".join(environ.values()):
            found.append(proc)
    return found


def cli_pids(home: Path) -> list[int]:
    """Pids of the real CLI processes of this test (their HOME is the test's)."""
    return [
        p.pid
        for p in processes_under(str(home))
        if p.info["cmdline"] and Path(p.info["cmdline"][0]).name in ("claude", "claude.exe")
    ]


async def test_real_turn(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding, home: Path
) -> None:
    launcher = real_launcher()
    recorder = EventRecorder()
    result = await launcher.run(request(workdir, "hello real cli"), on_event=recorder)
    assert result.text == "echo: hello real cli"
    assert result.is_error is False and result.exit_code is None  # alive: warm
    assert result.session_id and binding.sessions["p2p:c1"] == result.session_id
    kinds = recorder.kinds()
    assert kinds[0] == "init" and kinds[-1] == "result"
    texts = [e.text for e in recorder.events if e.kind == "text"]
    assert len(texts) >= 2 and texts[-1] == "echo: hello real cli"  # token streaming
    (req,) = api.message_requests
    assert req.query.get("beta") == "true"
    assert req.body["stream"] is True
    assert req.last_user_text == "hello real cli"
    assert len(cli_pids(home)) == 1 and launcher.is_warm("p2p:c1")


async def test_real_warm_second_turn_carries_the_first_in_the_same_process(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding, home: Path
) -> None:
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "first question"))
    (pid,) = cli_pids(home)
    second = await launcher.run(request(workdir, "second question", session_id=first.session_id))
    assert second.text == "echo: second question"
    assert cli_pids(home) == [pid]
    assert second.extra["warm"] is True
    body = api.message_requests[-1]
    assert body.user_texts == ["first question", "second question"]
    assert "echo: first question" in body.assistant_texts
    assert second.session_id == first.session_id == binding.sessions["p2p:c1"]
    assert launcher.stats().cold_starts == 1


async def test_real_resumed_turn_carries_the_earlier_exchange(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding
) -> None:
    """One process per turn (the fallback): --resume with --fork-session."""
    launcher = real_launcher(warm=False)
    first = await launcher.run(request(workdir, "first question"))
    second = await launcher.run(request(workdir, "second question", session_id=first.session_id))
    assert second.text == "echo: second question"
    body = api.message_requests[-1]
    assert body.user_texts == ["first question", "second question"]
    assert "echo: first question" in body.assistant_texts
    assert binding.sessions["p2p:c1"] == second.session_id != first.session_id
    assert launcher.stats().cold_starts == 2


async def test_real_interrupt_mid_stream_keeps_the_process(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    launcher = real_launcher()
    api.enqueue(Reply("a long story " * 40, chunks=40, chunk_delay=0.25))
    recorder = EventRecorder()
    task = asyncio.create_task(launcher.run(request(workdir, "tell a story"), on_event=recorder))
    await recorder.wait_kind("text", timeout=30)
    (pid,) = cli_pids(home)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert launcher.is_warm("p2p:c1") and launcher.stats().cancelled == 1
    result = await launcher.run(request(workdir, "next one"))
    assert result.text == "echo: next one"
    assert cli_pids(home) == [pid]  # the same process answered
    body = api.message_requests[-1]
    assert body.last_user_text == "next one"
    assert body.user_texts.count("next one") == 1
    assert launcher.stats().cold_starts == 1


async def test_real_stop_right_after_the_message_interrupts_the_turn(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    """Measured: a warm CLI ignores an interrupt read before it has begun the turn just
    written; the launcher repeats it, so a quick /stop still ends a 10 s answer at once."""
    slow = Reply("slow " * 40, chunks=20, chunk_delay=0.5)
    api.responder = lambda req: slow if req.last_user_text.startswith("stop") else None
    launcher = real_launcher(interrupt_grace=30.0)
    await launcher.run(request(workdir, "warm up"))
    (pid,) = cli_pids(home)
    loop = asyncio.get_running_loop()
    for ticks in range(6):
        task = asyncio.create_task(launcher.run(request(workdir, f"stop {ticks}")))
        for _ in range(ticks):
            await asyncio.sleep(0)
        started = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - started < 5.0  # not the 10 s answer, not the 30 s grace
    assert cli_pids(home) == [pid]
    result = await launcher.run(request(workdir, "after the stops"))
    assert result.text == "echo: after the stops"
    assert cli_pids(home) == [pid]


async def test_real_stale_resume_is_recovered(
    real_launcher, api: FakeAnthropic, workdir: Path, binding: MemoryBinding
) -> None:
    stale_id = str(uuid.uuid4())
    binding.sessions["p2p:c1"] = stale_id
    launcher = real_launcher(max_retries=0)
    result = await launcher.run(request(workdir, "are you there", session_id=stale_id))
    assert result.text == "echo: are you there"
    assert result.stale_session_reset is True
    assert result.attempts == 2
    assert binding.calls == [("clear", "p2p:c1"), ("set", "p2p:c1", result.session_id)]
    assert result.session_id != stale_id
    assert len(api.message_requests) == 1  # the stale attempt never reached the API
    assert launcher.is_warm("p2p:c1")


async def test_real_api_error_retry_does_not_repeat_the_prompt(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    """Measured: after a 529 the failed prompt stays in the history (merged into the next
    user message, same process or --resume); the retry resumes before it."""
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "one"))
    (pid,) = cli_pids(home)
    api.enqueue(ApiError(529))  # CLAUDE_CODE_MAX_RETRIES=0: the CLI gives up at once
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    assert second.attempts == 2
    assert second.text == "echo: two"
    assert api.message_requests[-1].user_texts == ["one", "two"]
    assert pid not in cli_pids(home) and len(cli_pids(home)) == 1
    third = await launcher.run(request(workdir, "three", session_id=second.session_id))
    assert third.text == "echo: three"
    assert api.message_requests[-1].user_texts == ["one", "two", "three"]


async def test_real_crash_mid_turn_is_retried_without_repeating_the_prompt(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    """SIGKILL of the CLI while the API hangs: the prompt is already in the transcript, so a
    plain --resume would show it twice; the retry resumes at the previous answer."""
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "one"))
    (pid,) = cli_pids(home)
    api.enqueue(Hang())
    task = asyncio.create_task(launcher.run(request(workdir, "two", session_id=first.session_id)))
    await api.wait_for_requests(2)
    os.kill(pid, signal.SIGKILL)
    second = await task
    assert second.attempts == 2
    assert second.text == "echo: two"
    assert api.message_requests[-1].user_texts == ["one", "two"]
    assert "echo: one" in api.message_requests[-1].assistant_texts
    assert pid not in cli_pids(home) and len(cli_pids(home)) == 1
    assert launcher.stats().retried == 1


async def test_real_hung_api_is_interrupted_at_the_timeout(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    api.enqueue(Hang())
    launcher = real_launcher(timeout=5.0, max_retries=2)
    task = asyncio.create_task(launcher.run(request(workdir, "hang please")))
    await api.wait_for_requests(1)
    (pid,) = cli_pids(home)
    with pytest.raises(TurnTimeout) as info:
        await task
    assert info.value.attempts == 1
    assert launcher.stats().active == 0
    # interrupted, not killed: the process answers the next turn
    assert cli_pids(home) == [pid]
    result = await launcher.run(request(workdir, "still there"))
    assert result.text == "echo: still there"
    assert cli_pids(home) == [pid]


async def test_real_hung_api_without_warm_sessions_leaves_nothing(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    api.default = Hang()
    launcher = real_launcher(timeout=5.0, max_retries=2, warm=False)
    task = asyncio.create_task(launcher.run(request(workdir, "hang please")))
    await api.wait_for_requests(1)
    tree = [p.pid for p in processes_under(str(home))]
    assert tree, "the CLI should be running"
    with pytest.raises(TurnTimeout) as info:
        await task
    assert info.value.attempts == 1
    assert alive_pids(tree) == []
    assert processes_under(str(home)) == []
    assert launcher.stats().active == 0


async def test_real_bash_tool_children_die_with_the_turn(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    marker = f"sleep-marker-{uuid.uuid4().hex[:8]}"
    command = f'python3 -c "import time; time.sleep(300)" {marker}'
    api.enqueue(ToolUse("Bash", {"command": command, "description": "wait"}))
    launcher = real_launcher(allowed_tools=("Bash",))
    task = asyncio.create_task(launcher.run(request(workdir, "run the tool")))

    def sleepers() -> list[psutil.Process]:
        return [
            p
            for p in processes_under(marker)
            if Path(p.info["cmdline"][0]).name.startswith("python")
        ]

    await poll_until(lambda: bool(sleepers()), timeout=30)
    tool_procs = processes_under(marker)  # the tool's shell and the sleeper
    (cli,) = cli_pids(home)
    # the tool runs in a session of its own: killing the CLI's group alone would miss it
    assert os.getsid(sleepers()[0].pid) != os.getsid(cli)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the CLI kills the tool's tree itself on the interrupt, within ~20 ms of its result
    await poll_until(lambda: alive_pids([p.pid for p in tool_procs]) == [], timeout=10)
    assert processes_under(marker) == []
    assert cli_pids(home) == [cli]  # interrupted, still warm
    await launcher.aclose()
    assert alive_pids([cli]) == []


def _transcripts(home: Path) -> set[str]:
    return {p.stem for p in home.glob(".claude/projects/*/*.jsonl")}


async def test_superseded_transcripts_are_removed_and_history_survives(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    launcher = real_launcher(warm=False)
    first = await launcher.run(request(workdir, "one"))
    second = await launcher.run(request(workdir, "two", session_id=first.session_id))
    third = await launcher.run(request(workdir, "three", session_id=second.session_id))
    # one transcript per conversation, not one per turn
    assert _transcripts(home) == {third.session_id}
    assert api.message_requests[-1].user_texts == ["one", "two", "three"]


async def test_retry_after_a_kill_mid_command_does_not_run_the_command_again(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    """Regression (safe controls #2): a CLI killed while its Bash command ran was retried and
    the command ran again. The command counts from its tool_use, not from its result."""
    marker = f"side-effect-{uuid.uuid4().hex[:8]}"
    command = f"echo ran >> count.txt; sleep 300 # {marker}"
    api.enqueue(ToolUse("Bash", {"command": command, "description": "count"}))
    launcher = real_launcher(allowed_tools=("Bash",), max_retries=2)
    task = asyncio.create_task(launcher.run(request(workdir, "count once")))
    count = workdir / "count.txt"
    await poll_until(lambda: count.exists() and count.read_text() == "ran\n", timeout=30)
    (pid,) = cli_pids(home)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TransientCliError) as info:
        await task
    assert info.value.attempts == 1
    assert any("Bash" in effect and "count.txt" in effect for effect in info.value.side_effects)
    assert count.read_text() == "ran\n"  # ran once, never again
    assert launcher.stats().retried == 0
    for leftover in processes_under(marker):  # orphaned by the SIGKILL (containment's part)
        leftover.kill()


async def test_a_warm_turn_costs_its_own_share_not_the_processes_running_total(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path
) -> None:
    """Regression (safe controls #16): total_cost_usd of a warm process is its running total,
    so the second of two equal turns was recorded at about twice the first."""
    launcher = real_launcher()
    events = EventRecorder()
    first = await launcher.run(request(workdir, "same size question one"))
    second = await launcher.run(
        request(workdir, "same size question two", session_id=first.session_id),
        on_event=events,
    )
    assert len(cli_pids(home)) == 1  # one warm process for both
    assert first.cost_usd > 0 and second.cost_usd > 0
    # the second request carries the first exchange, so it costs a bit more, never double
    assert second.cost_usd < 1.6 * first.cost_usd
    # the turn's own cost also rides on its "result" event (journaled while it holds its slot)
    [result] = [e for e in events.events if e.kind == "result"]
    assert result.cost_usd == second.cost_usd


async def test_a_permanent_api_error_does_not_poison_the_conversation(
    real_launcher, api: FakeAnthropic, workdir: Path, home: Path, binding: MemoryBinding
) -> None:
    """Regression (safe controls #12): after a 400 (not retried) the failed prompt stayed in
    the history and was merged into every later message. The next turn starts from the last
    good answer, and the error says so."""
    launcher = real_launcher()
    first = await launcher.run(request(workdir, "one"))
    normal = api.default
    # Measured on 2.1.329: the CLI itself sends a 400-refused request 6 times before it gives up.
    api.default = ApiError(400, "invalid_request_error", "bad request")
    with pytest.raises(PermanentCliError) as info:
        await launcher.run(request(workdir, "poison", session_id=first.session_id))
    assert info.value.history_cut and info.value.attempts == 1
    api.default = normal
    third = await launcher.run(
        request(workdir, "three", session_id=binding.sessions.get("p2p:c1"))
    )
    assert third.text == "echo: three"
    assert api.message_requests[-1].user_texts == ["one", "three"]
