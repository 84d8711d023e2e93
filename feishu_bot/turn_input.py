"""What a message's images and files become for a Claude turn, and the ones kept for later.

- `prepare_turn_input` turns a text message (plus whatever the conversation kept for it) into
  the prompt text and the image content blocks of one turn. Images (at most MAX_IMAGES and
  MAX_IMAGE_BYTES per turn) are downloaded to a directory of the turn's own, checked one at a
  time to be complete png/jpeg/gif/webp images, and given as blocks whose data is the file
  (`ImageFile`: the CLI session streams it as base64 when it writes the turn), in the order
  they were sent; files, voice messages and videos are saved under
  `.feishu/inbox/<message_id>/<name>` in the working directory and named in the prompt.
  Anything that cannot be given to Claude raises `AttachmentError` (its message is the
  sentence for the user) before anything runs.
- An image or file sent without text is kept for its conversation (`keep_attachments`) and
  given to the conversation's next text message within KEEP_WINDOW_S. The journal holds
  the kept keys (never bytes), so they survive a restart, and the claim is idempotent per
  message, so a replayed turn downloads the same ones again. `/new` drops them (`drop_kept`).
- `turn_mcp` builds the `feishu` MCP server of one turn (the `send_file` tool).

Nothing here runs Claude or words errors other than its own; it does not decide which messages
reach it (dispatch and conversations do). It sits below conversations and the handlers: what
it needs (the store, the settings, the replier) is handed in as `InputServices`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from feishu_bot.claude.mcp_feishu import FeishuMcp
from feishu_bot.claude.sandbox import scratch_root
from feishu_bot.errors import AttachmentError
from feishu_bot.events import Attachment, ImageFile, InboundMessage
from feishu_bot.feishu.media import MediaClient, check_image, sanitize_name

if TYPE_CHECKING:
    from database.store import SessionStore
    from feishu_bot.config import Settings
    from feishu_bot.feishu.replier import FeishuReplier


class InputServices(Protocol):
    """What turn input needs from the bot (the BotContext and the chat runner have it)."""

    @property
    def store(self) -> SessionStore: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def replier(self) -> FeishuReplier: ...

__all__ = [
    "INBOX",
    "KEEP_WINDOW_S",
    "KEPT_TEXT",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "STICKER_TEXT",
    "InputServices",
    "TurnInput",
    "attachments_from_items",
    "attachments_from_json",
    "attachments_to_json",
    "drop_kept",
    "keep_attachments",
    "media_client",
    "needs_question",
    "prepare_turn_input",
    "turn_mcp",
]

KEEP_WINDOW_S = 600.0
MAX_IMAGES = 10
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # all images of one turn together
INBOX = Path(".feishu") / "inbox"
KEPT_TEXT = "Got it — what should Claude do with it?"
STICKER_TEXT = (
    "Stickers can't be downloaded by bots, so Claude cannot see them. Send it as an image."
)
_PLACEHOLDERS = re.compile(r"\[(image|video)\]")
_KINDS = ("image", "file", "audio", "media")


@dataclass(frozen=True)
class TurnInput:
    """The prompt text and the content blocks of one turn, and what to clean up after it.

    `content` goes into `TurnRequest.content` (image blocks, in the order sent). `files` are
    the inbox files saved for this turn (they stay: Claude may use them in later turns).
    `cleanup(session_id)` removes the images downloaded for this turn and the copies the CLI
    saved of them under its temp dir for that session (only files that were not there
    before the turn: another conversation's copies are never touched); call it after the
    turn, whatever its outcome, with the session the turn ran in when it is known. It never
    raises.
    """

    prompt: str
    content: tuple[dict[str, Any], ...] = ()
    files: tuple[Path, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    cleanup: Callable[[str | None], None] = field(default=lambda _session=None: None)


# -- journal encoding ------------------------------------------------------------------------


def attachments_to_json(attachments: Iterable[Attachment]) -> str:
    """Keys and kinds as JSON (never bytes), the form of the turns.attachments column."""
    return json.dumps(
        [{"kind": a.kind, "key": a.key, "name": a.name, "size": a.size} for a in attachments],
        ensure_ascii=False,
    )


def attachments_from_json(raw: str | None) -> tuple[Attachment, ...]:
    """The inverse of `attachments_to_json`; unreadable entries are skipped."""
    try:
        items = json.loads(raw or "[]")
    except ValueError:
        return ()
    return attachments_from_items(items if isinstance(items, list) else [])


def attachments_from_items(items: Iterable[object]) -> tuple[Attachment, ...]:
    """Attachments from their decoded JSON objects (a journal row's); others are skipped."""
    out = []
    for item in items:
        if isinstance(item, Attachment):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("key"), str) and item["key"]:
            size = item.get("size")
            out.append(
                Attachment(
                    kind=str(item.get("kind") or ""),
                    key=item["key"],
                    name=str(item.get("name") or ""),
                    size=size if isinstance(size, int) else None,
                )
            )
    return tuple(out)


# -- kept attachments ------------------------------------------------------------------------


def needs_question(msg: InboundMessage) -> bool:
    """True for a message that carries attachments but no words (an image, a file, a post
    holding only images): it is kept until the next text message instead of being a turn."""
    if not msg.attachments:
        return False
    words = _PLACEHOLDERS.sub("", msg.text or "")
    return not words.strip()


async def keep_attachments(ctx: InputServices, msg: InboundMessage) -> str | None:
    """Keep the attachments of a message without text; return the reply to send, or None
    when the message was seen before (a redelivery: send nothing).

    Stickers are not kept (they cannot be downloaded): the reply says so.
    """
    if all(a.kind == "sticker" for a in msg.attachments):
        return STICKER_TEXT if await ctx.store.mark_processed(msg.message_id) else None
    usable = tuple(a for a in msg.attachments if a.kind in _KINDS)
    kept = await ctx.store.keep_message(
        msg.message_id,
        conversation_key=msg.conversation_key,
        chat_id=msg.chat_id,
        attachments_json=attachments_to_json(usable),
        reply_in_thread=msg.in_thread,
        sender_open_id=msg.sender_open_id,
    )
    if not kept:
        return None
    logger.info("kept {} attachment(s) for the next message", len(usable))
    return KEPT_TEXT


async def drop_kept(ctx: InputServices, conversation_key: str) -> int:
    """Forget what the conversation kept (for /new); returns how many messages were dropped."""
    return await ctx.store.drop_kept(conversation_key)


# -- turn input ------------------------------------------------------------------------------


def media_client(ctx: InputServices) -> MediaClient:
    """A media client over the bot's replier, with FEISHU_MAX_DOWNLOAD_MB as its limit."""
    limit = int(ctx.settings.FEISHU_MAX_DOWNLOAD_MB * 1024 * 1024)
    return MediaClient(ctx.replier, max_download_bytes=limit)


async def prepare_turn_input(
    ctx: InputServices,
    msg: InboundMessage,
    *,
    workdir: Path,
    media: MediaClient | None = None,
) -> TurnInput:
    """Download what `msg` (and the attachments kept for it) carry; build the turn's input.

    Raises AttachmentError (nothing is run; files saved so far are removed again) when a
    resource is a sticker, too large, missing, not a usable image, or cannot be downloaded.
    Holds at most one resource in memory while downloading; the image blocks of the turn are
    the only copies kept (they must be written to the CLI).
    """
    media = media or media_client(ctx)
    since = (msg.create_time_ms / 1000 if msg.create_time_ms else time.time()) - KEEP_WINDOW_S
    claimed = await ctx.store.claim_kept(
        msg.conversation_key, msg.message_id, since=since, sender_open_id=msg.sender_open_id
    )
    sources: list[tuple[str, Attachment, bool]] = [
        (mid, att, True) for mid, raw in claimed for att in attachments_from_json(raw)
    ]
    sources += [(msg.message_id, att, False) for att in msg.attachments]
    if not sources:
        return TurnInput(prompt=msg.text or "")

    images = [s for s in sources if s[1].kind == "image"]
    if len(images) > MAX_IMAGES:
        raise AttachmentError(
            f"That is {len(images)} images; Claude takes at most {MAX_IMAGES} in one message. "
            "Please send fewer at a time.",
            reason="too_many",
            kind="image",
        )
    blocks: list[dict[str, Any]] = []
    notes: list[str] = []
    saved: list[Path] = []
    image_dir: Path | None = None
    image_bytes = 0
    image_no = 0
    before = _cli_image_copies(workdir) if images else set()
    try:
        for message_id, att, _ in sources:
            label = _label(att, image_no, len(images))
            if att.kind == "sticker":
                raise AttachmentError(STICKER_TEXT, reason="sticker", kind="sticker")
            if att.kind == "image":
                if image_dir is None:
                    image_dir = Path(tempfile.mkdtemp(prefix="feishu-bot-images-"))
                dest = image_dir / f"{image_no}.img"
                size = await media.download_to_file(
                    message_id, att.key, kind="image", label=label, dest=dest
                )
                image_bytes += size
                if image_bytes > MAX_IMAGE_BYTES:
                    raise AttachmentError(
                        f"The images of this message are over {MAX_IMAGE_BYTES >> 20} MB "
                        "together, more than Claude takes in one message. Please send fewer "
                        "or smaller ones.",
                        reason="too_large",
                        kind="image",
                    )
                # one image in memory at a time, only while it is checked; read off the loop
                data = await asyncio.to_thread(dest.read_bytes)
                media_type = check_image(data, label=label[:1].upper() + label[1:])
                del data
                blocks.append(_image_block(media_type, ImageFile(dest, size)))
                image_no += 1
            elif att.kind in ("file", "audio", "media"):
                rel = INBOX / _dir_name(message_id) / _file_name(att)
                dest = workdir / rel
                size = await media.download_to_file(
                    message_id, att.key, kind="file", label=label, dest=dest
                )
                saved.append(dest)
                notes.append(_file_note(att, rel, size))
            else:
                raise AttachmentError(
                    f"Claude cannot take {att.kind} attachments.", reason="unsupported"
                )
    except BaseException:
        for path in saved:
            path.unlink(missing_ok=True)
        if image_dir is not None:
            shutil.rmtree(image_dir, ignore_errors=True)
        raise
    kept_images = sum(1 for s in images if s[2])
    prompt = _compose(msg.text or "", notes, len(blocks), kept_images)
    cleanup = _turn_cleanup(workdir, image_dir, before) if blocks else _nothing
    return TurnInput(
        prompt=prompt,
        content=tuple(blocks),
        files=tuple(saved),
        attachments=tuple(s[1] for s in sources),
        cleanup=cleanup,
    )


def _nothing(_session_id: str | None = None) -> None:
    return None


def turn_mcp(ctx: InputServices, msg: InboundMessage, *, workdir: Path) -> FeishuMcp:
    """The `feishu` MCP server of one turn: `send_file` posts files of `workdir` as replies
    to `msg` (in its thread)."""
    media = media_client(ctx)

    async def send(path: str, caption: str | None, tool_use_id: str | None) -> str:
        sent = await media.send_file(
            workdir,
            path,
            reply_to=msg.message_id,
            in_thread=msg.in_thread,
            caption=caption,
            idempotency_seed=f"{msg.message_id}:{tool_use_id}" if tool_use_id else "",
        )
        what = "an image" if sent.kind == "image" else "a file"
        return f"Sent {path} ({_size(sent.size)}) to the chat as {what}."

    return FeishuMcp(send)


# -- helpers ---------------------------------------------------------------------------------


def _label(att: Attachment, index: int, images: int) -> str:
    if att.kind == "image":
        return "the image" if images == 1 else f"image {index + 1} of {images}"
    name = _display(att.name)
    if att.kind == "audio":
        return "the voice message"
    if att.kind == "media":
        return f'the video "{name}"' if name else "the video"
    if att.kind == "sticker":
        return "the sticker"
    return f'the file "{name}"' if name else "the file"


def _display(name: str, limit: int = 60) -> str:
    clean = "".join(ch if ch.isprintable() else "?" for ch in name)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _dir_name(message_id: str) -> str:
    return sanitize_name(message_id, fallback="message")


def _file_name(att: Attachment) -> str:
    short = re.sub(r"[^A-Za-z0-9]", "", att.key)[-8:] or "x"
    fallback = {"audio": f"voice-{short}.opus", "media": f"video-{short}.mp4"}.get(
        att.kind, f"file-{short}"
    )
    return sanitize_name(att.name, fallback=fallback)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1048576:.1f} MB"


def _file_note(att: Attachment, rel: Path, size: int) -> str:
    where = f"saved at `{rel.as_posix()}` (relative to the working directory, {_size(size)})"
    if att.kind == "audio":
        return f"The user sent a voice message (Opus audio), {where}."
    if att.kind == "media":
        return f"The user sent a video, {where}."
    return f'The user attached the file "{_display(att.name) or rel.name}", {where}.'


def _compose(text: str, notes: list[str], images: int, kept_images: int) -> str:
    lines = [text.strip()] if text.strip() else []
    extra = list(notes)
    if images:
        which = "The user's image is" if images == 1 else f"The user's {images} images are"
        sentence = f"{which} attached below, in the order they were sent"
        if kept_images:
            earlier = "it was" if images == 1 else f"the first {kept_images} were"
            sentence += f" ({earlier} sent just before this message)"
        extra.append(sentence + ".")
    if extra:
        lines.append("\n".join(f"[{line}]" for line in extra))
    return "\n\n".join(lines)


def _image_block(media_type: str, data: ImageFile) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _cli_tmp_root() -> Path:
    # The CLI saves a copy of every image block under $CLAUDE_CODE_TMPDIR (else the system
    # temp dir): <tmp>/claude-<uid>/<cwd, non-alphanumerics as "-">/<session>/images/N.ext
    # (measured on 2.1.329). The child inherits the bot's environment, so read it here.
    return Path(os.environ.get("CLAUDE_CODE_TMPDIR") or tempfile.gettempdir())


def _slugs(workdir: Path) -> set[str]:
    return {re.sub(r"[^A-Za-z0-9]", "-", str(p)) for p in (workdir, workdir.resolve())}


def _cli_image_copies(workdir: Path, session_id: str = "*") -> set[Path]:
    root = _cli_tmp_root()
    found: set[Path] = set()
    try:
        for slug in _slugs(workdir):
            found.update(root.glob(f"claude-*/{slug}/{session_id}/images/*"))
            # A sandboxed CLI has a temporary directory of its own under the scratch root.
            found.update(scratch_root().glob(f"*/claude-*/{slug}/{session_id}/images/*"))
    except OSError:
        logger.exception("could not list the CLI's image copies")
    return found


def _turn_cleanup(
    workdir: Path, image_dir: Path | None, before: set[Path]
) -> Callable[[str | None], None]:
    def cleanup(session_id: str | None = None) -> None:
        if image_dir is not None:
            shutil.rmtree(image_dir, ignore_errors=True)
        if not session_id or "/" in session_id or session_id.startswith("."):
            return  # not known: leave the CLI's copies rather than guess whose they are
        removed = 0
        try:
            for path in _cli_image_copies(workdir, session_id) - before:
                path.unlink(missing_ok=True)
                removed += 1
        except OSError:
            logger.exception("could not remove the CLI's image copies")
        if removed:
            logger.debug("removed {} image copies the CLI saved", removed)

    return cleanup
