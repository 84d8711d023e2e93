"""The simulator's message resources, uploads and media messages, over real HTTP and the SDK."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from feishu_bot.simulator import FeishuSimulator
from feishu_bot.simulator.media import sample_png

RES = "/open-apis/im/v1/messages/{mid}/resources/{key}"


async def get(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str, mid: str, key: str, kind: str
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(
        sim.base_url + RES.format(mid=mid, key=key),
        params={"type": kind},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def post_form(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str, path: str, fields: list[Any]
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    for name, value, *rest in fields:
        if rest:
            form.add_field(name, value, filename=rest[0], content_type="application/octet-stream")
        else:
            form.add_field(name, value)
    async with http.post(
        sim.base_url + path, data=form, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, json.loads(await resp.text())


async def test_pushed_image_is_served_byte_for_byte(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str, connect: Any
) -> None:
    _, sink = await connect(sim)
    png = sample_png(seed=7)
    mid = await sim.media.push_image(png)
    event = (await sink.wait(1))[-1]
    assert event["event"]["message"]["message_id"] == mid
    content = json.loads(event["event"]["message"]["content"])
    assert event["event"]["message"]["message_type"] == "image"
    status, headers, body = await get(sim, http, token, mid, content["image_key"], "image")
    assert status == 200
    assert body == png
    assert headers["Content-Length"] == str(len(png))
    assert sim.media.resources[(mid, content["image_key"])].fetches == 1


async def test_resource_errors(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str
) -> None:
    sim.media.add_resource("om_1", "file_1", b"abc", kind="file")
    sim.media.add_resource("om_1", "img_gone", b"", kind="image", status=404, code=234003)
    assert (await get(sim, http, token, "om_1", "file_1", "image"))[0] == 400  # wrong type
    assert (await get(sim, http, token, "om_1", "nope", "file"))[0] == 400  # unknown key
    assert (await get(sim, http, token, "om_2", "file_1", "file"))[0] == 400  # other message
    status, _, body = await get(sim, http, token, "om_1", "img_gone", "image")
    assert status == 404
    assert json.loads(body)["code"] == 234003
    status, _, _ = await get(sim, http, token, "om_1", "file_1", "bogus")
    assert status == 400
    async with http.get(sim.base_url + RES.format(mid="om_1", key="file_1")) as resp:
        assert resp.status == 400  # no token
        assert (await resp.json())["code"] == 99991661


async def test_chunked_resource_has_no_length(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str
) -> None:
    data = bytes(range(256)) * 1000
    sim.media.add_resource("om_1", "f", data, declare_length=False, chunk_size=10_000)
    status, headers, body = await get(sim, http, token, "om_1", "f", "file")
    assert status == 200
    assert "Content-Length" not in headers
    assert headers.get("Transfer-Encoding") == "chunked"
    assert body == data


async def test_image_upload_limits_and_keys(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str
) -> None:
    png = sample_png()
    path = "/open-apis/im/v1/images"
    status, body = await post_form(
        sim, http, token, path, [("image_type", "message"), ("image", png, "a.png")]
    )
    assert status == 200, body
    key = body["data"]["image_key"]
    upload = sim.media.upload(key)
    assert upload is not None and upload.data == png and upload.kind == "image"
    status, body = await post_form(
        sim, http, token, path, [("image_type", "message"), ("image", b"not an image", "a.png")]
    )
    assert (status, body["code"]) == (400, 234011)
    big = png + b"\x00" * (10 * 1024 * 1024)
    status, body = await post_form(
        sim, http, token, path, [("image_type", "message"), ("image", big, "a.png")]
    )
    assert (status, body["code"]) == (400, 234006)
    status, body = await post_form(sim, http, token, path, [("image", png, "a.png")])
    assert (status, body["code"]) == (400, 234001)


async def test_file_upload_limits_and_keys(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str
) -> None:
    path = "/open-apis/im/v1/files"
    data = b"diff --git a/x b/x\r\n\r\n--boundary-like line\r\n" * 10
    fields = [("file_type", "stream"), ("file_name", "fix.patch"), ("file", data, "fix.patch")]
    status, body = await post_form(sim, http, token, path, fields)
    assert status == 200, body
    upload = sim.media.upload(body["data"]["file_key"])
    assert upload is not None
    assert upload.data == data  # byte-exact through the multipart parser
    assert (upload.file_name, upload.file_type) == ("fix.patch", "stream")
    empty = [("file_type", "stream"), ("file_name", "e"), ("file", b"", "e")]
    assert (await post_form(sim, http, token, path, empty))[1]["code"] == 234010
    big = [("file_type", "pdf"), ("file_name", "b.pdf"), ("file", b"x" * (30 * 1048576 + 1), "b")]
    assert (await post_form(sim, http, token, path, big))[1]["code"] == 234006
    bad = [("file_type", "exe"), ("file_name", "a"), ("file", b"x", "a")]
    assert (await post_form(sim, http, token, path, bad))[1]["code"] == 234001


async def test_image_and_file_messages_need_uploaded_keys(
    sim: FeishuSimulator, http: aiohttp.ClientSession, token: str
) -> None:
    mid = await sim.push_message(text="hi")
    headers = {"Authorization": f"Bearer {token}"}

    async def reply(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        async with http.post(
            f"{sim.base_url}/open-apis/im/v1/messages/{mid}/reply",
            json={"msg_type": msg_type, "content": json.dumps(content)},
            headers=headers,
        ) as resp:
            return await resp.json()

    assert (await reply("image", {"image_key": "img_unknown"}))["code"] == 230001
    _, body = await post_form(
        sim,
        http,
        token,
        "/open-apis/im/v1/images",
        [("image_type", "message"), ("image", sample_png(), "p.png")],
    )
    key = body["data"]["image_key"]
    assert (await reply("file", {"file_key": key}))["code"] == 230001  # an image key as a file
    assert (await reply("image", {"image_key": key}))["code"] == 0
    sent = sim.media.sent_media("image")
    assert len(sent) == 1 and sent[0][0].reply_to == mid and sent[0][1].key == key


@pytest.mark.parametrize("msg_type", ["file", "audio", "media"])
async def test_pushed_files_carry_their_content_shape(
    sim: FeishuSimulator, connect: Any, msg_type: str
) -> None:
    _, sink = await connect(sim)
    mid = await sim.media.push_file(b"data", "clip.mp4", msg_type=msg_type)
    event = (await sink.wait(1))[-1]
    assert event["event"]["message"]["message_id"] == mid
    content = json.loads(event["event"]["message"]["content"])
    assert content["file_key"].startswith("file_v3_")
    assert ("file_name" in content) == (msg_type != "audio")
    assert ("duration" in content) == (msg_type != "file")
    assert (mid, content["file_key"]) in sim.media.resources


async def test_pushed_post_keeps_text_and_images_in_order(
    sim: FeishuSimulator, connect: Any
) -> None:
    _, sink = await connect(sim)
    one, two = sample_png(seed=1), sample_png(seed=2)
    mid = await sim.media.push_post(
        ["before", one, "between", two], chat_type="group", mention_bot=True
    )
    event = (await sink.wait(1))[-1]
    assert event["event"]["message"]["message_id"] == mid
    content = json.loads(event["event"]["message"]["content"])
    tags = [[el["tag"] for el in p] for p in content["content"]]
    assert tags == [["at"], ["text"], ["img"], ["text"], ["img"]]
    keys = [p[0]["image_key"] for p in content["content"] if p[0]["tag"] == "img"]
    assert [sim.media.resources[(mid, k)].data for k in keys] == [one, two]
    assert event["event"]["message"]["mentions"][0]["key"] == "@_user_1"
