"""Turn input from attachments and the kept attachments, against the simulator and a real
SQLite store; the `feishu` MCP server's JSON-RPC handling."""

from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from database import SessionStore
from feishu_bot import turn_input as att_mod
from feishu_bot.claude.mcp_feishu import MCP_CONFIG, SEND_FILE_TOOL, FeishuMcp, mcp_config_arg
from feishu_bot.config import Settings
from feishu_bot.errors import AttachmentError
from feishu_bot.events import Attachment, ImageFile, InboundMessage
from feishu_bot.feishu.media import OutboundFileError
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_gif, sample_png
from feishu_bot.turn_input import (
    KEPT_TEXT,
    STICKER_TEXT,
    attachments_from_json,
    attachments_to_json,
    drop_kept,
    keep_attachments,
    prepare_turn_input,
    turn_mcp,
)


@dataclass
class Ctx:
    """The part of BotContext the attachments code uses."""

    settings: Settings
    store: SessionStore
    replier: FeishuReplier


@pytest.fixture
async def ctx(sim: FeishuSimulator, tmp_path: Path) -> AsyncIterator[Ctx]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        FEISHU_APP_ID=sim.options.app_id,
        FEISHU_APP_SECRET=sim.options.app_secret,
        FEISHU_DOMAIN=sim.base_url,
        FEISHU_MAX_DOWNLOAD_MB=1,
    )
    async with await SessionStore.open(tmp_path / "bot.db") as store:
        async with FeishuReplier(
            app_id=sim.options.app_id, app_secret=sim.options.app_secret, domain=sim.base_url
        ) as replier:
            yield Ctx(settings, store, replier)


def message(
    message_id: str, text: str | None, *atts: Attachment, chat: str = "oc_1", ts: float = 0
) -> InboundMessage:
    return InboundMessage(
        message_id=message_id,
        chat_id=chat,
        chat_type="p2p",
        sender_open_id="ou_user",
        msg_type="text" if text is not None else "image",
        text=text,
        create_time_ms=int((ts or time.time()) * 1000),
        attachments=atts,
    )


def image_bytes(block: dict[str, Any]) -> bytes:
    assert block["type"] == "image" and block["source"]["type"] == "base64"
    data = block["source"]["data"]
    return data.path.read_bytes() if isinstance(data, ImageFile) else base64.b64decode(data)


async def test_text_without_attachments_is_unchanged(ctx: Ctx, tmp_path: Path) -> None:
    got = await prepare_turn_input(ctx, message("om_t", "hello"), workdir=tmp_path)  # type: ignore[arg-type]
    assert (got.prompt, got.content, got.files) == ("hello", (), ())


async def test_post_images_become_blocks_in_order(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    one, two = sample_png(seed=1), sample_gif()
    sim.media.add_resource("om_p", "img_1", one, kind="image")
    sim.media.add_resource("om_p", "img_2", two, kind="image")
    msg = message(
        "om_p",
        "compare\n[image]\n[image]",
        Attachment("image", "img_1"),
        Attachment("image", "img_2"),
    )
    got = await prepare_turn_input(ctx, msg, workdir=tmp_path)  # type: ignore[arg-type]
    assert [image_bytes(b) for b in got.content] == [one, two]
    assert [b["source"]["media_type"] for b in got.content] == ["image/png", "image/gif"]
    assert got.prompt == (
        "compare\n[image]\n[image]\n\n"
        "[The user's 2 images are attached below, in the order they were sent.]"
    )


async def test_files_land_in_the_inbox_and_the_prompt_names_them(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    sim.media.add_resource("om_f", "file_a", b"%PDF-1.7 data")
    sim.media.add_resource("om_f", "file_b", b"OggS voice")
    sim.media.add_resource("om_f", "file_c", b"mp4 video")
    msg = message(
        "om_f",
        "summarise",
        Attachment("file", "file_a", name="../../Q3 report.pdf"),
        Attachment("audio", "file_b"),
        Attachment("media", "file_c", name="clip.mp4"),
    )
    got = await prepare_turn_input(ctx, msg, workdir=tmp_path)  # type: ignore[arg-type]
    inbox = tmp_path / ".feishu" / "inbox" / "om_f"
    assert sorted(p.name for p in inbox.iterdir()) == [
        "_.._Q3 report.pdf",
        "clip.mp4",
        "voice-fileb.opus",
    ]
    assert (inbox / "_.._Q3 report.pdf").read_bytes() == b"%PDF-1.7 data"
    assert got.files == (
        inbox / "_.._Q3 report.pdf",
        inbox / "voice-fileb.opus",
        inbox / "clip.mp4",
    )
    assert got.prompt.startswith('summarise\n\n[The user attached the file "../../Q3 report.pdf"')
    assert (
        "saved at `.feishu/inbox/om_f/_.._Q3 report.pdf` (relative to the working directory"
        in got.prompt
    )
    assert (
        "[The user sent a voice message (Opus audio), saved at "
        "`.feishu/inbox/om_f/voice-fileb.opus`" in got.prompt
    )
    assert "[The user sent a video, saved at `.feishu/inbox/om_f/clip.mp4`" in got.prompt
    assert got.content == ()


async def test_a_failure_runs_nothing_and_leaves_no_files(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    sim.media.add_resource("om_x", "file_ok", b"fine")
    sim.media.add_resource("om_x", "img_bad", b"<html>not an image</html>", kind="image")
    msg = message(
        "om_x", "go", Attachment("file", "file_ok", name="a.txt"), Attachment("image", "img_bad")
    )
    with pytest.raises(AttachmentError) as info:
        await prepare_turn_input(ctx, msg, workdir=tmp_path)  # type: ignore[arg-type]
    assert info.value.reason == "not_image"
    assert (
        str(info.value)
        == "The image is not a PNG, JPEG, GIF or WebP image, so Claude cannot look at it."
    )
    assert not (tmp_path / ".feishu" / "inbox" / "om_x" / "a.txt").exists()


async def test_limit_comes_from_settings(ctx: Ctx, sim: FeishuSimulator, tmp_path: Path) -> None:
    sim.media.add_resource("om_b", "file_big", b"x" * (1024 * 1024 + 1))
    msg = message("om_b", "read it", Attachment("file", "file_big", name="big.log"))
    with pytest.raises(AttachmentError, match=r'The file "big.log" is 1.0 MB, over the 1 MB limit'):
        await prepare_turn_input(ctx, msg, workdir=tmp_path)  # type: ignore[arg-type]


async def test_stickers_are_refused(ctx: Ctx, tmp_path: Path) -> None:
    msg = message("om_s", None, Attachment("sticker", "file_s"))
    assert await keep_attachments(ctx, msg) == STICKER_TEXT  # type: ignore[arg-type]
    assert await keep_attachments(ctx, msg) is None  # a redelivery says nothing
    post = message("om_s2", "look", Attachment("sticker", "file_s"))
    with pytest.raises(AttachmentError) as info:
        await prepare_turn_input(ctx, post, workdir=tmp_path)  # type: ignore[arg-type]
    assert info.value.reason == "sticker"


async def test_an_image_waits_for_its_question(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    png = sample_png(seed=5)
    sim.media.add_resource("om_img", "img_k", png, kind="image")
    sim.media.add_resource("om_file", "file_k", b"log line\n")
    assert (
        await keep_attachments(ctx, message("om_img", None, Attachment("image", "img_k")))
        == KEPT_TEXT
    )  # type: ignore[arg-type]
    assert (
        await keep_attachments(ctx, message("om_img", None, Attachment("image", "img_k"))) is None
    )  # type: ignore[arg-type]
    assert (
        await keep_attachments(
            ctx, message("om_file", None, Attachment("file", "file_k", name="app.log"))
        )
        == KEPT_TEXT
    )  # type: ignore[arg-type]
    question = message("om_q", "what is wrong here?")
    got = await prepare_turn_input(ctx, question, workdir=tmp_path)  # type: ignore[arg-type]
    assert [image_bytes(b) for b in got.content] == [png]
    assert "(it was sent just before this message)" in got.prompt
    assert (tmp_path / ".feishu/inbox/om_file/app.log").read_bytes() == b"log line\n"
    # A replay of the same turn after a restart gets the same attachments again ...
    again = await prepare_turn_input(ctx, question, workdir=tmp_path)  # type: ignore[arg-type]
    assert [image_bytes(b) for b in again.content] == [png]
    # ... but the next question does not.
    later = await prepare_turn_input(ctx, message("om_q2", "and now?"), workdir=tmp_path)  # type: ignore[arg-type]
    assert later.content == () and later.prompt == "and now?"


async def test_kept_attachments_expire_and_stay_in_their_conversation(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    sim.media.add_resource("om_old", "img_o", sample_png(), kind="image")
    await keep_attachments(ctx, message("om_old", None, Attachment("image", "img_o")))  # type: ignore[arg-type]
    other_chat = message("om_other", "hi", chat="oc_2")
    assert (await prepare_turn_input(ctx, other_chat, workdir=tmp_path)).content == ()  # type: ignore[arg-type]
    eleven_min_later = message("om_late", "hi", ts=time.time() + 660)
    assert (await prepare_turn_input(ctx, eleven_min_later, workdir=tmp_path)).content == ()  # type: ignore[arg-type]


async def test_new_drops_kept_attachments(ctx: Ctx, sim: FeishuSimulator, tmp_path: Path) -> None:
    sim.media.add_resource("om_i", "img_i", sample_png(), kind="image")
    await keep_attachments(ctx, message("om_i", None, Attachment("image", "img_i")))  # type: ignore[arg-type]
    assert await drop_kept(ctx, "p2p:oc_1") == 1  # type: ignore[arg-type]
    assert (await prepare_turn_input(ctx, message("om_q", "hm"), workdir=tmp_path)).content == ()  # type: ignore[arg-type]


async def test_cleanup_removes_only_this_turns_cli_image_copies(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (safe controls #14): clean-up deleted by mtime, so another conversation
    sharing the directory lost copies it had just made. Only this turn's new copies, in its
    own session's directory, are removed — and the downloaded image with them."""
    cli_tmp = tmp_path / "clitmp"
    monkeypatch.setenv("CLAUDE_CODE_TMPDIR", str(cli_tmp))
    work = tmp_path / "my_work.dir"
    work.mkdir()
    slug = str(work).replace("/", "-").replace("_", "-").replace(".", "-")
    sessions = cli_tmp / "claude-0" / slug
    old = sessions / "sess-a" / "images" / "1.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    sim.media.add_resource("om_c", "img_c", sample_png(), kind="image")
    got = await prepare_turn_input(
        ctx, message("om_c", "see", Attachment("image", "img_c")), workdir=work
    )  # type: ignore[arg-type]
    downloaded = got.content[0]["source"]["data"]
    assert isinstance(downloaded, ImageFile) and downloaded.path.exists()
    new = old.parent / "2.png"
    new.write_bytes(b"new")  # what the CLI saves while the turn runs
    neighbour = sessions / "sess-b" / "images" / "1.png"  # another conversation, same dir
    neighbour.parent.mkdir(parents=True)
    neighbour.write_bytes(b"theirs")
    got.cleanup("sess-a")
    assert old.exists() and not new.exists() and neighbour.exists()
    assert not downloaded.path.exists()


async def test_more_than_ten_images_or_fifty_megabytes_are_refused(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (safe controls #6): image memory was unbounded (every image as base64 in
    memory until the turn ended)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the turn's images go
    images = [Attachment("image", f"img_{n}") for n in range(11)]
    for n in range(11):
        sim.media.add_resource("om_many", f"img_{n}", sample_png(seed=n), kind="image")
    with pytest.raises(AttachmentError, match="at most 10"):
        await prepare_turn_input(
            ctx, message("om_many", "look", *images), workdir=tmp_path
        )  # type: ignore[arg-type]
    assert not any(r.path.endswith("/img_0") for r in sim.requests)  # refused before any download
    monkeypatch.setattr(att_mod, "MAX_IMAGE_BYTES", 2 * len(sample_png(seed=1)))
    with pytest.raises(AttachmentError, match="together"):
        await prepare_turn_input(
            ctx, message("om_many", "look", *images[:3]), workdir=tmp_path
        )  # type: ignore[arg-type]
    assert list(temp.iterdir()) == []  # what was downloaded before the refusal is gone


def test_attachments_json_round_trip() -> None:
    atts = (Attachment("image", "img_1"), Attachment("file", "f", name="a b.txt", size=3))
    assert attachments_from_json(attachments_to_json(atts)) == atts
    assert attachments_from_json("not json") == ()
    assert attachments_from_json('[{"kind": "image"}, 5, {"key": "k"}]') == (Attachment("", "k"),)


# -- the MCP server -------------------------------------------------------------------------


async def test_mcp_handshake_and_tools_list() -> None:
    async def never(*_: Any) -> str:
        raise AssertionError

    mcp = FeishuMcp(never)
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
    }
    answer = await mcp("feishu", init)
    assert answer is not None and answer["id"] == 0
    assert answer["result"]["protocolVersion"] == "2025-11-25"
    assert answer["result"]["capabilities"] == {"tools": {}}
    assert await mcp("feishu", {"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    tools = await mcp("feishu", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert tools is not None
    [tool] = tools["result"]["tools"]
    assert tool["name"] == "send_file" and tool["inputSchema"]["required"] == ["path"]
    unknown = await mcp("feishu", {"jsonrpc": "2.0", "id": 2, "method": "resources/list"})
    assert unknown is not None and unknown["error"]["code"] == -32601
    other = await mcp("github", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert other is not None and "not found" in other["error"]["message"]
    assert SEND_FILE_TOOL == "mcp__feishu__send_file"
    assert mcp_config_arg() == '{"mcpServers":{"feishu":{"type":"sdk","name":"feishu"}}}'
    assert MCP_CONFIG["mcpServers"]["feishu"]["type"] == "sdk"


async def test_mcp_tools_call_results_and_errors() -> None:
    calls: list[tuple[Any, ...]] = []

    async def send(path: str, caption: str | None, tool_use_id: str | None) -> str:
        calls.append((path, caption, tool_use_id))
        if path == "bad":
            raise OutboundFileError("bad: refused")
        if path == "boom":
            raise RuntimeError("network")
        return f"Sent {path}."

    mcp = FeishuMcp(send)

    async def call(args: Any, name: str = "send_file") -> dict[str, Any]:
        msg = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {
                "name": name,
                "arguments": args,
                "_meta": {"claudecode/toolUseId": "toolu_1"},
            },
        }
        answer = await mcp("feishu", msg)
        assert answer is not None and answer["id"] == 9
        return answer["result"]

    ok = await call({"path": "a.png", "caption": "hi"})
    assert ok == {"content": [{"type": "text", "text": "Sent a.png."}]}
    assert calls[-1] == ("a.png", "hi", "toolu_1")
    bad = await call({"path": "bad"})
    assert bad["isError"] is True and bad["content"][0]["text"] == "bad: refused"
    boom = await call({"path": "boom"})
    assert boom["isError"] is True and "RuntimeError: network" in boom["content"][0]["text"]
    assert (await call({}))["isError"] is True
    assert (await call({"path": "x", "caption": 5}))["isError"] is True
    assert (await call({"path": "x"}, name="rm_rf"))["isError"] is True
    assert len(calls) == 3


async def test_turn_mcp_sends_into_the_conversation(
    ctx: Ctx, sim: FeishuSimulator, tmp_path: Path
) -> None:
    mid = await sim.push_message(text="send me the patch")
    (tmp_path / "fix.patch").write_text("+x\n")
    mcp = turn_mcp(ctx, message(mid, "send me the patch"), workdir=tmp_path)  # type: ignore[arg-type]
    msg = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "send_file", "arguments": {"path": "fix.patch"}},
    }
    answer = await mcp("feishu", msg)
    assert answer is not None
    assert (
        answer["result"]["content"][0]["text"] == "Sent fix.patch (3 bytes) to the chat as a file."
    )
    [(sent, upload)] = sim.media.sent_media("file")
    assert sent.reply_to == mid and upload.data == b"+x\n"
    escape = dict(msg, params={"name": "send_file", "arguments": {"path": "../x"}})
    refused = await mcp("feishu", escape)
    assert refused is not None and refused["result"]["isError"] is True


def test_module_exports() -> None:
    assert set(att_mod.__all__) <= set(dir(att_mod))
