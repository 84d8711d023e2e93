"""Feishu-facing parts: gateway (long connection), inbound parsing, replier, rendering."""

__all__: list[str] = []
