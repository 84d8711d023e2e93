"""MediaClient against the Feishu simulator over real HTTP: downloads (limits, errors, retries,
stalls), uploads and send_file.

Retry waits go through a recording `sleep` that returns at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from feishu_bot.errors import AttachmentError
from feishu_bot.feishu.media import MediaClient, OutboundFileError
from feishu_bot.feishu.replier import FeishuReplier
from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_png

MB = 1024 * 1024


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def replier(sim: FeishuSimulator, sleeps: Sleeps) -> AsyncIterator[FeishuReplier]:
    async with FeishuReplier(
        app_id=sim.options.app_id,
        app_secret=sim.options.app_secret,
        domain=sim.base_url,
        timeout=10,
        sleep=sleeps,
    ) as r:
        yield r


def client(replier: FeishuReplier, sleeps: Sleeps, **kw: Any) -> MediaClient:
    kw.setdefault("max_download_bytes", 1 * MB)
    return MediaClient(replier, sleep=sleeps, **kw)


def gets(sim: FeishuSimulator, key: str) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.endswith("/" + key))


async def test_download_bytes_and_file(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    png = sample_png()
    sim.media.add_resource("om_1", "img_1", png, kind="image")
    data = bytes(range(256)) * 2000
    sim.media.add_resource("om_1", "file_1", data, declare_length=False, chunk_size=7000)
    media = client(replier, sleeps)
    assert await media.download_bytes("om_1", "img_1", kind="image", label="the image") == png
    dest = tmp_path / "inbox" / "om_1" / "data.bin"
    size = await media.download_to_file("om_1", "file_1", kind="file", label="x", dest=dest)
    assert size == len(data) and dest.read_bytes() == data
    assert list(dest.parent.iterdir()) == [dest]  # no .part left behind


async def test_declared_size_over_the_limit_is_refused_before_the_body(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    # The body stalls at once: reading any of it would hang the test.
    sim.media.add_resource("om_1", "big", b"x" * (2 * MB), stall_after=0)
    media = client(replier, sleeps, read_timeout=30)
    dest = tmp_path / "big.bin"
    with pytest.raises(AttachmentError) as info:
        await media.download_to_file("om_1", "big", kind="file", label='the file "big"', dest=dest)
    assert info.value.reason == "too_large"
    assert str(info.value) == (
        'The file "big" is 2.0 MB, over the 1 MB limit, so it was not downloaded and nothing '
        "was run."
    )
    assert not dest.exists() and not list(tmp_path.iterdir())
    assert sim.media.resources[("om_1", "big")].fetches == 1


async def test_unknown_size_over_the_limit_is_aborted_mid_stream(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    sim.media.add_resource("om_1", "big", b"y" * (3 * MB), declare_length=False)
    media = client(replier, sleeps)
    with pytest.raises(AttachmentError) as info:
        await media.download_bytes("om_1", "big", kind="file", label="the video")
    assert info.value.reason == "too_large"
    assert "larger than the 1 MB limit, so the download was stopped" in str(info.value)
    with pytest.raises(AttachmentError):
        await media.download_to_file(
            "om_1", "big", kind="file", label="the video", dest=tmp_path / "v.mp4"
        )
    assert not list(tmp_path.iterdir())


async def test_missing_resource_is_final(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps
) -> None:
    sim.media.add_resource("om_1", "gone", b"", status=404, code=234003)
    media = client(replier, sleeps)
    with pytest.raises(AttachmentError) as info:
        await media.download_bytes("om_1", "gone", kind="file", label="the image")
    assert info.value.reason == "not_found"
    assert "Feishu would not give me the image (HTTP 404, code 234003)" in str(info.value)
    with pytest.raises(AttachmentError, match="HTTP 400, code 234003"):
        await media.download_bytes("om_1", "never-registered", kind="file", label="x")
    assert gets(sim, "gone") == 1 and sleeps.waits == []


async def test_server_errors_are_retried_then_reported(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps
) -> None:
    sim.media.add_resource("om_1", "f", b"payload")
    sim.fail_next("GET", r"/resources/f$", status=500, count=2)
    media = client(replier, sleeps)
    assert await media.download_bytes("om_1", "f", kind="file", label="x") == b"payload"
    assert sleeps.waits == [0.5, 1.0]
    sim.fail_next("GET", r"/resources/f$", status=503, count=3, body="upstream down")
    with pytest.raises(AttachmentError) as info:
        await media.download_bytes("om_1", "f", kind="file", label="the file")
    assert info.value.reason == "download_failed"
    assert "after 3 attempts (HTTP 503)" in str(info.value)


async def test_a_stalled_body_times_out(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps
) -> None:
    sim.media.add_resource("om_1", "slow", b"z" * 100_000, stall_after=10_000)
    media = client(replier, sleeps, read_timeout=0.3, max_attempts=2)
    with pytest.raises(AttachmentError) as info:
        await media.download_bytes("om_1", "slow", kind="file", label="the file")
    assert info.value.reason == "timeout"
    assert sim.media.resources[("om_1", "slow")].fetches == 2


async def test_slow_but_moving_body_completes(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps
) -> None:
    data = b"s" * 50_000
    sim.media.add_resource("om_1", "slow", data, chunk_size=10_000, chunk_delay=0.05)
    media = client(replier, sleeps, read_timeout=1)
    assert await media.download_bytes("om_1", "slow", kind="file", label="x") == data


async def test_expired_token_is_replaced(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps
) -> None:
    sim.media.add_resource("om_1", "f", b"ok")
    media = client(replier, sleeps)
    assert await media.download_bytes("om_1", "f", kind="file", label="x") == b"ok"
    sim.expire_tokens()
    assert await media.download_bytes("om_1", "f", kind="file", label="x") == b"ok"
    assert replier.token_fetches == 2


# -- uploads and send_file ------------------------------------------------------------------


async def test_send_png_posts_an_image_then_the_caption(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    mid = await sim.push_message(text="make me a plot")
    png = sample_png(32, 32, seed=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "plot.png").write_bytes(png)
    media = client(replier, sleeps)
    sent = await media.send_file(
        tmp_path, "out/plot.png", reply_to=mid, in_thread=False, caption="the plot"
    )
    assert sent.kind == "image" and len(sent.message_ids) == 2
    [(msg, upload)] = sim.media.sent_media()
    assert msg.msg_type == "image" and msg.reply_to == mid and upload.data == png
    assert upload.image_type == "message"
    caption = sim.message(sent.message_ids[1])
    assert caption.msg_type == "text" and caption.text == "the plot"


async def test_send_text_file_posts_a_file_in_the_thread(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    root = await sim.push_message(text="topic", chat_type="group", thread_id="omt_1")
    (tmp_path / "fix.patch").write_text("--- a\n+++ b\n")
    media = client(replier, sleeps)
    sent = await media.send_file(tmp_path, "fix.patch", reply_to=root, in_thread=True)
    assert sent.kind == "file" and len(sent.message_ids) == 1
    [(msg, upload)] = sim.media.sent_media("file")
    assert msg.reply_in_thread and msg.thread_id
    assert (upload.file_name, upload.file_type, upload.data) == (
        "fix.patch",
        "stream",
        b"--- a\n+++ b\n",
    )


async def test_send_file_is_idempotent_per_seed(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    mid = await sim.push_message(text="x")
    (tmp_path / "a.txt").write_text("a")
    media = client(replier, sleeps)
    first = await media.send_file(
        tmp_path, "a.txt", reply_to=mid, in_thread=False, caption="c", idempotency_seed="toolu_1"
    )
    again = await media.send_file(
        tmp_path, "a.txt", reply_to=mid, in_thread=False, caption="c", idempotency_seed="toolu_1"
    )
    assert first.message_ids == again.message_ids
    assert len(sim.replies_to(mid)) == 2  # one file, one caption


async def test_send_file_refusals_upload_nothing(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    mid = await sim.push_message(text="x")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (work / "link.txt").symlink_to(tmp_path / "outside.txt")
    (work / "empty.txt").write_bytes(b"")
    with (work / "huge.bin").open("wb") as fh:  # sparse: no 31 MB written to disk
        fh.truncate(31 * MB)
    media = client(replier, sleeps)
    cases = {
        "../outside.txt": "only files inside",
        "link.txt": "only files inside",
        "missing.txt": "no such file",
        "empty.txt": "empty",
        "huge.bin": "over Feishu's 30 MB limit",
    }
    for rel, expected in cases.items():
        with pytest.raises(OutboundFileError, match=expected):
            await media.send_file(work, rel, reply_to=mid, in_thread=False)
    assert sim.media.uploads == [] and sim.replies_to(mid) == []


async def test_large_image_goes_as_a_file(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    mid = await sim.push_message(text="x")
    with (tmp_path / "big.png").open("wb") as fh:
        fh.write(sample_png())
        fh.truncate(11 * MB)
    media = client(replier, sleeps)
    sent = await media.send_file(tmp_path, "big.png", reply_to=mid, in_thread=False)
    assert sent.kind == "file" and sent.size == 11 * MB
    assert os.path.getsize(tmp_path / "big.png") == len(sim.media.uploads[0].data)


async def test_send_file_swapped_for_a_fifo_after_the_check_is_refused_without_blocking(
    sim: FeishuSimulator,
    replier: FeishuReplier,
    sleeps: Sleeps,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (safe controls #13): send_file checked a path, then reopened it by name; a
    FIFO swapped in between blocked the event loop on open(). Now the open file is checked."""
    import feishu_bot.feishu.media_checks as checks

    mid = await sim.push_message(text="x")
    (tmp_path / "a.txt").write_text("harmless")
    real_resolve = checks.resolve_inside

    def resolve_then_swap(workdir: Path, rel: str) -> Path:
        target = real_resolve(workdir, rel)
        target.unlink()
        os.mkfifo(target)  # nobody ever writes: a blocking open would hang forever
        return target

    monkeypatch.setattr(checks, "resolve_inside", resolve_then_swap)
    media = client(replier, sleeps)
    with pytest.raises(OutboundFileError, match="not a regular file"):
        await asyncio.wait_for(
            media.send_file(tmp_path, "a.txt", reply_to=mid, in_thread=False), 10
        )
    assert sim.media.uploads == []


async def test_send_file_uploads_the_file_it_checked_not_what_the_name_points_to_later(
    sim: FeishuSimulator,
    replier: FeishuReplier,
    sleeps: Sleeps,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once checked, the name is never used again: a symlink to a secret swapped in after the
    open does not change what is uploaded."""
    import feishu_bot.feishu.media as media_module

    mid = await sim.push_message(text="x")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "secret.txt").write_text("the secret")
    (work / "report.txt").write_text("the report")
    real_open = media_module.open_inside

    def open_then_swap(workdir: Path, rel: str):  # type: ignore[no-untyped-def]
        opened = real_open(workdir, rel)
        (workdir / rel).unlink()
        (workdir / rel).symlink_to(tmp_path / "secret.txt")
        return opened

    monkeypatch.setattr(media_module, "open_inside", open_then_swap)
    media = client(replier, sleeps)
    await media.send_file(work, "report.txt", reply_to=mid, in_thread=False)
    [(_msg, upload)] = sim.media.sent_media("file")
    assert upload.data == b"the report"


async def test_caption_mention_tags_are_shown_literally(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    """Regression (safe controls #10): a prompt-injected caption could ping the whole group."""
    mid = await sim.push_message(text="x", chat_type="group")
    (tmp_path / "a.txt").write_text("a")
    media = client(replier, sleeps)
    sent = await media.send_file(
        tmp_path,
        "a.txt",
        reply_to=mid,
        in_thread=False,
        caption='hi <at id=all></at> <at user_id="all">x</at>',
    )
    caption = sim.message(sent.message_ids[1]).text
    assert "<at" not in caption.replace("<\u200bat", "").replace("<\u200b/at", "")
    assert caption.replace("\u200b", "") == 'hi <at id=all></at> <at user_id="all">x</at>'


async def test_a_file_that_cannot_be_saved_is_reported_with_its_cause(
    sim: FeishuSimulator, replier: FeishuReplier, sleeps: Sleeps, tmp_path: Path
) -> None:
    """Regression (safe controls #11): a save error reached the user as "Something went wrong
    inside the bot (OSError)". It names the file and the cause, and leaves nothing behind."""
    sim.media.add_resource("om_1", "file_1", b"data", kind="file")
    (tmp_path / "inbox").write_text("a file where a directory should be")
    media = client(replier, sleeps)
    dest = tmp_path / "inbox" / "om_1" / "data.bin"
    expected = r"could not save the file data\.bin.*\(Not a directory\)"
    with pytest.raises(AttachmentError, match=expected) as info:
        await media.download_to_file(
            "om_1", "file_1", kind="file", label="the file data.bin", dest=dest
        )
    assert info.value.reason == "save_failed"
