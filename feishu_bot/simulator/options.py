"""Settings of one simulator instance (immutable once the simulator is built)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SimOptions"]


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Identity of the simulated app and bot, and the knobs of the simulated platform.

    `reconnect_*` and `ping_interval` are what the simulator tells the SDK in its
    ClientConfig (discovery answer and every pong). Feishu sends ReconnectNonce 30 and
    ReconnectInterval 120; the defaults here are small so reconnect tests finish in about a
    second (the SDK waits ``random() * nonce`` before the first retry, then `interval` between
    attempts: lark_oapi/ws/client.py ``_reconnect``). Floats are accepted by the SDK.
    """

    app_id: str = "cli_sim_app"
    app_secret: str = "sim_secret_0123456789"
    bot_open_id: str = "ou_sim_bot"
    bot_name: str = "ClaudeBot"
    tenant_key: str = "sim_tenant"
    verification_token: str = "sim_verification_token"
    ping_interval: float = 120
    reconnect_interval: float = 1
    reconnect_nonce: float = 0
    reconnect_count: int = -1
    token_ttl: int = 7200
    rate_limits: bool = False
    max_connections: int = 50
