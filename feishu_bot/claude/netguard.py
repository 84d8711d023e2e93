"""Network requests to private addresses are refused before anyone is asked.

With the sandbox on, a connection to a host the settings neither allow nor deny reaches the bot
as a ``can_use_tool`` request for ``SandboxNetworkAccess`` (``input.host``); a WebFetch asks as
``WebFetch`` (``input.url``). The CLI's ``deniedDomains`` matches host names exactly (measured on
2.1.329: an entry "127.0.0.0/8" let ``127.9.9.9`` and ``10.1.2.3`` come to a person, and an
approved ``127.0.0.1`` reached the bot's own loopback). So every host that is, or resolves to, a
loopback, private, link-local, shared, unspecified or multicast address is answered "deny" here,
without a card. ``refused_host`` is pure; ``guard`` wraps the turn's ``ask_permission``.

What it does not do: decide anything about public hosts (people do), or stop a name that
resolves elsewhere later (DNS rebinding: the CLI's proxy checks loopback and link-local again
when it connects).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from feishu_bot.events import AskPermission, PermissionDecision, PermissionRequest

__all__ = ["NETWORK_TOOL", "guard", "refused_address", "refused_host"]

NETWORK_TOOL = "SandboxNetworkAccess"
_LOOKUP_TIMEOUT_S = 2.0
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: someone's private net


def refused_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses that are never the public internet."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_unspecified
        or addr.is_multicast
        or addr.is_reserved
        or (isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED)
    )


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host string stands for, in any form a client accepts (127.1, 0x7f000001,
    2130706433, [::ffff:127.0.0.1], a trailing dot), or None for a name."""
    text = host.strip().rstrip(".").strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:  # the BSD forms of inet_aton: what curl and browsers resolve them to
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def refused_host(host: str) -> str | None:
    """Why ``host`` is refused without a lookup (a private address or a local name), or None."""
    name = host.strip().rstrip(".").lower()
    if not name:
        return "an empty host name"
    if name == "localhost" or name.endswith((".localhost", ".local", ".internal")):
        return f"{host} is a local name"
    addr = _literal(name)
    if addr is not None and refused_address(addr):
        return f"{host} is a private or loopback address"
    return None


async def _refused_after_lookup(host: str) -> str | None:
    """``refused_host``, then the addresses the name resolves to (a failed lookup refuses
    nothing: the connection fails by itself)."""
    reason = refused_host(host)
    if reason or _literal(host) is not None:
        return reason
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host.rstrip("."), None, type=socket.SOCK_STREAM), _LOOKUP_TIMEOUT_S
        )
    except (OSError, TimeoutError, UnicodeError):
        return None
    for info in infos:
        try:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        if refused_address(addr):
            return f"{host} resolves to the private address {addr}"
    return None


def _host_of(req: PermissionRequest) -> str | None:
    if req.tool_name == NETWORK_TOOL:
        host = req.input.get("host")
        return host if isinstance(host, str) else ""
    if req.tool_name == "WebFetch":
        url = req.input.get("url")
        try:
            return (urlsplit(url).hostname or "") if isinstance(url, str) else ""
        except ValueError:
            return ""
    return None


def guard(ask: AskPermission) -> AskPermission:
    """``ask`` behind the private-address check; requests without a host pass unchanged."""

    async def guarded(req: PermissionRequest) -> PermissionDecision:
        host = _host_of(req)
        if host is not None:
            reason = await _refused_after_lookup(host)
            if reason:
                return PermissionDecision(
                    False, f"Refused: {reason}; the bot never allows connections there."
                )
        return await ask(req)

    return guarded
