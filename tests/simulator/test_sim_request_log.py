"""The simulator's request log is bounded: a number of records, bytes of kept bodies, and no
body at all from a call the platform refuses for want of a token."""

from __future__ import annotations

import aiohttp

from feishu_bot.simulator import FeishuSimulator

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
IMAGES = "/open-apis/im/v1/images"
MESSAGES = "/open-apis/im/v1/messages"


async def _token(sim: FeishuSimulator, http: aiohttp.ClientSession) -> str:
    async with http.post(
        sim.base_url + TOKEN_PATH,
        json={"app_id": sim.options.app_id, "app_secret": sim.options.app_secret},
    ) as resp:
        return str((await resp.json())["tenant_access_token"])


async def _post(
    sim: FeishuSimulator, http: aiohttp.ClientSession, path: str, body: bytes, token: str | None
) -> int:
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(sim.base_url + path, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_a_large_upload_body_is_not_kept(
    sim: FeishuSimulator, http: aiohttp.ClientSession
) -> None:
    token = await _token(sim, http)
    big = b"\x89PNG" + b"\0" * (2 * 1024 * 1024)
    await _post(sim, http, IMAGES, big, token)
    record = sim.requests[-1]
    assert record.path == IMAGES
    assert record.body is None, "a 2 MiB upload body was kept in the request log"
    assert record.body_size == len(big)
    assert sim.records.requests.body_bytes == sim.requests[0].body_size  # the token call only


async def test_a_body_without_a_token_is_neither_read_nor_kept(
    sim: FeishuSimulator, http: aiohttp.ClientSession
) -> None:
    status = await _post(sim, http, MESSAGES, b"x" * (512 * 1024), token=None)
    assert status == 400  # Feishu's "missing access token" answer
    record = sim.requests[-1]
    assert (record.path, record.code, record.body, record.body_size) == (
        MESSAGES,
        99991661,
        None,
        0,
    )
    assert sim.records.requests.body_bytes == 0


async def test_count_cap_keeps_the_newest(http: aiohttp.ClientSession) -> None:
    async with FeishuSimulator(request_log_max=5) as sim:
        token = await _token(sim, http)
        for n in range(12):
            await _post(sim, http, f"{MESSAGES}/om_{n}", b"{}", token)
        assert len(sim.requests) == 5
        assert [r.path for r in sim.requests] == [f"{MESSAGES}/om_{n}" for n in range(7, 12)]
        assert sim.records.requests.dropped == 8  # the token call and the first seven


async def test_byte_cap_drops_the_oldest_bodies(http: aiohttp.ClientSession) -> None:
    async with FeishuSimulator(request_log_bytes=10_000) as sim:
        token = await _token(sim, http)
        body = b'{"text": "' + b"y" * 3000 + b'"}'
        for n in range(10):
            await _post(sim, http, f"{MESSAGES}/om_{n}", body, token)
            assert sim.records.requests.body_bytes <= 10_000
        kept = [r for r in sim.requests if r.path.startswith(MESSAGES)]
        assert [r.path for r in kept] == [f"{MESSAGES}/om_{n}" for n in range(7, 10)]
        assert all(r.body == {"text": "y" * 3000} for r in kept)
