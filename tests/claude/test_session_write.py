"""CliSession writes a turn with images that wait on disk: streamed as base64 from the file
(safe controls #6), and the line the CLI reads is exactly the JSON of the message."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from feishu_bot.claude.session import CliSession, user_message
from feishu_bot.events import ImageFile


async def test_images_on_disk_are_streamed_into_the_json_line(tmp_path: Path) -> None:
    images = []
    for n, size in enumerate((1, 2, 3, 200_000, 3 * 64 * 1024 + 1)):
        path = tmp_path / f"{n}.img"
        path.write_bytes(os.urandom(size))
        images.append(ImageFile(path, size))
    blocks = tuple(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": im}}
        for im in images
    )
    out = tmp_path / "stdin.jsonl"
    session = CliSession(
        "p2p:test", ["/bin/sh", "-c", f"cat > {out}"], cwd=tmp_path, env=dict(os.environ)
    )
    await session.start()
    try:
        await session._write(user_message("look at these", blocks))
    finally:
        await session.close()
    (line,) = out.read_text().splitlines()
    message = json.loads(line)
    content = message["message"]["content"]
    assert content[0] == {"type": "text", "text": "look at these"}
    for block, image in zip(content[1:], images, strict=True):
        assert base64.b64decode(block["source"]["data"]) == image.path.read_bytes()
