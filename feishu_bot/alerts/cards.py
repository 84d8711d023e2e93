"""The words of an alert: each condition's title and remedy, and the card of a transition.

Pure functions; the card is Card JSON 1.0 (a header and markdown), small enough for any chat.
The condition's name is in the body too, so a search in the chat finds every card of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feishu_bot import wording

if TYPE_CHECKING:
    from feishu_bot.alerts.conditions import Transition

__all__ = ["REMEDIES", "TITLES", "alert_card", "alert_text"]

TITLES: dict[str, str] = {
    "ws_down": "The Feishu long connection was down",
    "claude_auth": "Claude cannot authenticate",
    "turn_failures": "Turns are failing",
    "degraded": "Warm sessions degraded to one process per turn",
    "queue_full": "The queue is full",
    "disk_low": "Disk space is low",
    "sandbox_off": "The sandbox is unavailable",
}

REMEDIES: dict[str, str] = {
    "ws_down": (
        "Feishu delivers the events of the outage again once the bot is back. If it happens "
        "often, check the network path to FEISHU_DOMAIN and the log's `feishu gateway` lines."
    ),
    "claude_auth": (
        "Users are told Claude is not logged in. Set a valid ANTHROPIC_API_KEY for the bot "
        "(environment or .env, then restart it), or log the CLI in as the bot's user "
        "(run `claude`, then /login)."
    ),
    "turn_failures": (
        "Read the log's `turn … failed` lines; check the Anthropic status page, and "
        "`feishu-bot check` for the CLI."
    ),
    "degraded": (
        "claude processes keep crashing: look for `claude exited` lines and their exit codes, "
        "and check free memory (each process takes ~200 MB)."
    ),
    "queue_full": (
        "Users are told the bot is busy. Raise CLAUDE_MAX_CONCURRENT or CLAUDE_QUEUE_MAX if the "
        "machine has room, or look for stuck turns (`/status`, the health line's `oldest`)."
    ),
    "disk_low": (
        "Free space on that filesystem: old conversation directories under CLAUDE_WORKDIR, "
        "transcripts under ~/.claude/projects, logs under LOG_DIR."
    ),
    "sandbox_off": (
        "Claude's tools run without containment. Install what the sandbox needs (README) and "
        "restart the bot."
    ),
}


def alert_text(t: Transition) -> tuple[str, str, str]:
    """(header template, title, markdown body) of a transition's card."""
    name = str(t.condition)
    title = TITLES.get(name, name)
    held = (
        f"\n({t.unannounced} earlier episode{'s' if t.unannounced != 1 else ''} in the last hour "
        "went without a card.)"
        if t.unannounced
        else ""
    )
    remedy = f"\n**What to do:** {REMEDIES.get(name, '')}"
    if name == "ws_down":
        # One card for the whole outage: it could not be sent while the connection was down.
        return "orange", f"⚠️ {title}", f"**{name}** · {t.detail}{held}{remedy}"
    if t.started:
        body = f"**{name}** since {wording.clock(t.since)}\n{t.detail}{held}{remedy}"
        return "red", f"⚠️ {title}", body
    after = wording.duration(t.at - t.since)
    body = f"**{name}** cleared at {wording.clock(t.at)}, after {after}\n{t.detail}"
    return "green", f"✅ Cleared: {title}", body


def alert_card(t: Transition, *, host: str) -> dict[str, Any]:
    template, title, body = alert_text(t)
    note = f"feishu-claude-bot on {host} · at most one start card per condition per hour"
    return {
        "config": {"wide_screen_mode": True},
        "header": {"template": template, "title": {"tag": "plain_text", "content": title}},
        "elements": [
            {"tag": "markdown", "content": body},
            {"tag": "note", "elements": [{"tag": "plain_text", "content": note}]},
        ],
    }
