"""Images and files, both ways, through the whole bot: the real lark_oapi client, the Feishu
simulator, the real pinned CLI and the fake Anthropic API (issue 10's "done when").

The conversations share CLAUDE_WORKDIR (CLAUDE_SHARED_WORKDIR) so the test knows the working
directory without asking the bot.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.claude.mcp_feishu import SEND_FILE_TOOL
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_png
from feishu_bot.turn_input import KEPT_TEXT
from tests.e2e.conftest import StartBot, final_text, shown_text
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, ToolUse

MB = 1024 * 1024


async def start(start_bot: StartBot, tmp_path: Path, **kw: Any) -> Path:
    await start_bot(CLAUDE_SHARED_WORKDIR=True, **kw)
    return tmp_path / "workspace"


def images_in(request: Any) -> list[tuple[str, bytes]]:
    """(media_type, bytes) of the image blocks in the newest user message of a request."""
    last = [m for m in request.messages if m.get("role") == "user"][-1]
    out = []
    for block in last.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "image":
            src = block["source"]
            out.append((src["media_type"], base64.b64decode(src["data"])))
    return out


async def kept(sim: FeishuSimulator, message_id: str) -> None:
    await shown_text(sim, message_id, contains=KEPT_TEXT)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "one-shot"])
async def test_screenshot_then_question_reaches_the_model_byte_identical(
    sim: FeishuSimulator,
    anthropic: FakeAnthropic,
    start_bot: StartBot,
    tmp_path: Path,
    warm: bool,
) -> None:
    await start(start_bot, tmp_path, CLAUDE_WARM=warm)
    shot = sample_png(48, 32, seed=11)
    image_id = await sim.media.push_image(shot)
    await kept(sim, image_id)
    assert anthropic.message_requests == []  # nothing ran for the image alone
    question = await sim.push_message(text="what does this error mean?")
    await final_text(sim, question, contains="echo:")
    request = anthropic.message_requests[-1]
    assert images_in(request) == [("image/png", shot)]
    assert any(t.startswith("what does this error mean?") for t in request.user_texts)
    # the copy the CLI saved under CLAUDE_CODE_TMPDIR was removed after the turn
    assert not list((tmp_path / "home" / "tmp").glob("claude-*/*/*/images/*"))
    # the next question does not carry the screenshot again
    again = await sim.push_message(text="thanks")
    await final_text(sim, again, contains="echo:")
    assert images_in(anthropic.message_requests[-1]) == []


async def test_in_a_group_a_kept_image_goes_only_with_its_senders_question(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    """Regression (safe controls #9): a screenshot kept in a group went with whoever spoke
    next. Kept attachments belong to their sender."""
    await start(start_bot, tmp_path)
    shot = sample_png(40, 30, seed=5)
    group = {"chat_type": "group", "chat_id": "oc_team"}
    post = await sim.media.push_post([shot], mention_bot=True, sender_open_id="ou_alice", **group)
    await kept(sim, post)
    other = await sim.push_message(
        text="@ClaudeBot what time is it?", mention_bot=True, sender_open_id="ou_bob", **group
    )
    await final_text(sim, other, contains="echo:")
    assert images_in(anthropic.message_requests[-1]) == []  # not Bob's
    mine = await sim.push_message(
        text="@ClaudeBot what is in my screenshot?",
        mention_bot=True,
        sender_open_id="ou_alice",
        **group,
    )
    await final_text(sim, mine, contains="echo:")
    assert images_in(anthropic.message_requests[-1]) == [("image/png", shot)]


async def test_post_with_text_and_two_images(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    await start(start_bot, tmp_path)
    one, two = sample_png(seed=1), sample_png(seed=2)
    post = await sim.media.push_post(["before and after:", one, two, "which is right?"])
    await final_text(sim, post, contains="echo:")
    request = anthropic.message_requests[-1]
    assert images_in(request) == [("image/png", one), ("image/png", two)]
    assert any("before and after:" in t and "which is right?" in t for t in request.user_texts)


async def test_file_lands_in_the_inbox_and_the_prompt_names_it(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    workdir = await start(start_bot, tmp_path)
    file_id = await sim.media.push_file(b"ERROR at line 3\n", "app.log")
    await kept(sim, file_id)
    question = await sim.push_message(text="why does it fail?")
    await final_text(sim, question, contains="echo:")
    saved = workdir / ".feishu" / "inbox" / file_id / "app.log"
    assert saved.read_bytes() == b"ERROR at line 3\n"
    texts = "\n".join(anthropic.message_requests[-1].user_texts)
    assert f".feishu/inbox/{file_id}/app.log" in texts
    assert "why does it fail?" in texts


async def test_a_long_chinese_file_name_is_saved_cut_by_bytes(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    """Regression (safe controls #11): 94 Chinese characters are 274 bytes, over the 255 a
    file name may have; the save failed with "Something went wrong inside the bot (OSError)"."""
    workdir = await start(start_bot, tmp_path)
    name = "季度销售数据分析报告" * 9 + "最终版本.xlsx"
    assert len(name.encode()) > 255
    file_id = await sim.media.push_file(b"PK-not-really", name)
    await kept(sim, file_id)
    question = await sim.push_message(text="summarise it")
    await final_text(sim, question, contains="echo:")
    (saved,) = (workdir / ".feishu" / "inbox" / file_id).iterdir()
    assert saved.read_bytes() == b"PK-not-really"
    assert len(saved.name.encode()) <= 200 and saved.name.endswith("最终版本.xlsx") is False
    assert saved.name.endswith(".xlsx") and saved.name.startswith("季度销售数据分析报告")


async def test_25_mb_file_is_refused_and_nothing_runs(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    workdir = await start(start_bot, tmp_path)
    file_id = await sim.media.push_file(b"\0" * (25 * MB), "dump.bin")
    await kept(sim, file_id)
    question = await sim.push_message(text="analyse the dump")
    text = await final_text(sim, question, contains="limit")
    assert 'The file "dump.bin" is 25.0 MB, over the 20 MB limit' in text
    assert anthropic.message_requests == []
    assert not (workdir / ".feishu" / "inbox" / file_id).exists() or not any(
        (workdir / ".feishu" / "inbox" / file_id).iterdir()
    )


async def test_failed_download_is_reported_and_nothing_runs(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    await start(start_bot, tmp_path)
    post = await sim.media.push_post(["look at this", sample_png()])
    # The image is gone by the time the bot asks for it.
    for resource in sim.media.resources.values():
        if resource.message_id == post:
            resource.status, resource.code = 404, 234003
    text = await final_text(sim, post, contains="Feishu would not give me")
    assert "HTTP 404" in text
    assert anthropic.message_requests == []


async def test_send_file_posts_a_png_and_a_text_file(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    workdir = await start(start_bot, tmp_path)
    workdir.mkdir(parents=True, exist_ok=True)
    png = sample_png(64, 48, seed=6)
    (workdir / "plot.png").write_bytes(png)
    (workdir / "report.md").write_text("# Report\nall green\n")
    anthropic.enqueue(
        ToolUse(SEND_FILE_TOOL, {"path": "plot.png", "caption": "here is the plot"}),
        ToolUse(SEND_FILE_TOOL, {"path": "report.md"}),
        Reply("sent the plot and the report"),
    )
    question = await sim.push_message(text="send me the plot and the report")
    await final_text(sim, question, contains="sent the plot and the report")
    [(image_msg, image_upload)] = sim.media.sent_media("image")
    [(file_msg, file_upload)] = sim.media.sent_media("file")
    assert image_upload.data == png and image_msg.reply_to == question
    assert file_upload.data == b"# Report\nall green\n" and file_upload.file_name == "report.md"
    assert file_msg.reply_to == question
    assert any(m.text == "here is the plot" for m in sim.replies_to(question))


async def test_send_file_refuses_paths_outside_the_working_directory(
    sim: FeishuSimulator, anthropic: FakeAnthropic, start_bot: StartBot, tmp_path: Path
) -> None:
    workdir = await start(start_bot, tmp_path)
    workdir.mkdir(parents=True, exist_ok=True)
    (tmp_path / "outside.txt").write_text("secret")
    (workdir / "link.txt").symlink_to(tmp_path / "outside.txt")
    anthropic.enqueue(
        ToolUse(SEND_FILE_TOOL, {"path": "../outside.txt"}),
        ToolUse(SEND_FILE_TOOL, {"path": "link.txt"}),
        Reply("both refused"),
    )
    question = await sim.push_message(text="send me the secrets")
    await final_text(sim, question, contains="both refused")
    results = [
        b
        for r in anthropic.message_requests
        for b in r.messages[-1]["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    assert len(results) == 2, [r.messages[-1] for r in anthropic.message_requests]
    for block in results:
        assert block["type"] == "tool_result" and block.get("is_error") is True
        assert "only files inside the conversation's working directory" in json.dumps(block)
    assert sim.media.uploads == []
    assert all(m.msg_type not in ("image", "file") for m in sim.replies_to(question))
