"""Private hosts are refused before anyone is asked (pure checks; the CLI part is in
test_sandbox_cli.py)."""

from __future__ import annotations

import pytest

from feishu_bot.claude.netguard import NETWORK_TOOL, guard, refused_host
from feishu_bot.events import PermissionDecision, PermissionRequest


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.9.9.9", "127.1", "0x7f000001", "2130706433", "017700000001",
        "[::1]", "::1", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "0.0.0.0", "0", "::",
        "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "fd00::1", "fe80::1%eth0", "224.0.0.1",
        "localhost", "LOCALHOST.", "api.localhost", "printer.local", "metadata.google.internal",
    ],
)
def test_private_and_local_hosts_are_refused(host: str) -> None:
    assert refused_host(host)


@pytest.mark.parametrize(
    "host", ["pypi.org", "example.com", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "1.1.1.1"]
)
def test_public_hosts_are_left_to_people(host: str) -> None:
    assert refused_host(host) is None


class Asked:
    def __init__(self) -> None:
        self.requests: list[PermissionRequest] = []

    async def __call__(self, req: PermissionRequest) -> PermissionDecision:
        self.requests.append(req)
        return PermissionDecision(True)


def request(tool: str, **tool_input: object) -> PermissionRequest:
    return PermissionRequest(request_id="r1", tool_name=tool, input=dict(tool_input))


@pytest.mark.parametrize(
    "req",
    [
        request(NETWORK_TOOL, host="10.1.2.3"),
        request(NETWORK_TOOL, host="127.9.9.9"),
        request("WebFetch", url="http://[::ffff:127.0.0.1]:8080/x", prompt="p"),
        request("WebFetch", url="http://192.168.0.10/", prompt="p"),
    ],
)
async def test_guard_denies_private_hosts_without_asking(req: PermissionRequest) -> None:
    asked = Asked()
    decision = await guard(asked)(req)
    assert decision.allow is False and "never allows" in decision.message
    assert asked.requests == []


async def test_guard_refuses_a_name_that_resolves_to_a_private_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A permitted name may point at the intranet; the CLI's proxy re-checks only loopback,
    link-local and this host's own addresses when it connects."""
    import asyncio
    import socket

    async def resolve(host: str, *_: object, **__: object) -> list[tuple[object, ...]]:
        assert host == "intranet.example.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", 0))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve)
    asked = Asked()
    decision = await guard(asked)(request(NETWORK_TOOL, host="intranet.example.com"))
    assert decision.allow is False
    assert "resolves to the private address 10.20.30.40" in decision.message
    assert asked.requests == []


@pytest.mark.parametrize(
    "req",
    [
        request(NETWORK_TOOL, host="example.com"),
        request("WebFetch", url="https://example.com/page", prompt="p"),
        request("Bash", command="curl http://127.0.0.1/"),  # no host field: not ours to judge
    ],
)
async def test_guard_passes_everything_else_to_people(req: PermissionRequest) -> None:
    asked = Asked()
    decision = await guard(asked)(req)
    assert decision.allow is True and asked.requests == [req]
