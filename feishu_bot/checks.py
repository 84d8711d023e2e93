"""Start-up checks of the environment, shared by `feishu-bot check` and `feishu-bot run`.

Each check returns problem lines naming the variable to fix. Only `online_checks` (for
`feishu-bot check --online`) connects to Feishu.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from feishu_bot.claude.sandbox import SandboxStatus, detect, unavailable_problem
from feishu_bot.config import Settings

__all__ = [
    "check_claude_version",
    "check_environment",
    "check_sandbox",
    "online_checks",
    "resolve_claude_bin",
    "run_checks",
    "run_online_checks",
]


def resolve_claude_bin(name: str) -> str | None:
    """The absolute path of CLAUDE_BIN, or None when it is not an executable file."""
    if os.sep in name:
        path = Path(name).expanduser()
        return str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(name)


def _check_writable_dir(variable: str, directory: Path) -> list[str]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"{variable}: cannot create {directory}: {exc.strerror}"]
    if not os.access(directory, os.W_OK):
        return [f"{variable}: {directory} is not writable"]
    return []


def check_environment(settings: Settings) -> list[str]:
    """Cheap checks needed before `run`: the CLI exists and the paths are usable."""
    problems: list[str] = []
    if resolve_claude_bin(settings.CLAUDE_BIN) is None:
        problems.append(f"CLAUDE_BIN: {settings.CLAUDE_BIN!r} not found or not executable")
    problems += _check_writable_dir("DATABASE_PATH", settings.DATABASE_PATH.parent)
    problems += _check_writable_dir("CLAUDE_WORKDIR", settings.CLAUDE_WORKDIR)
    if settings.LOG_DIR:
        problems += _check_writable_dir("LOG_DIR", Path(settings.LOG_DIR))
    return problems


def check_sandbox(settings: Settings) -> tuple[SandboxStatus, list[str]]:
    """Whether Claude Code's sandbox can run here (CLAUDE_SANDBOX); a problem only for ``on``."""
    status = detect(settings.CLAUDE_SANDBOX)
    problem = unavailable_problem(settings.CLAUDE_SANDBOX, status)
    return status, [problem] if problem else []


def check_claude_version(binary: str, timeout: float = 30.0) -> tuple[str | None, str]:
    """Run `CLAUDE_BIN --version`; return (version line, problem)."""
    try:
        done = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"CLAUDE_BIN: {binary} --version failed: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return None, f"CLAUDE_BIN: {binary} --version exited {done.returncode}: {tail[0]}"
    return done.stdout.strip(), ""


def run_checks(settings: Settings) -> list[str]:
    """Everything `feishu-bot check` verifies; prints the CLI version as it goes."""
    problems = check_environment(settings)
    binary = resolve_claude_bin(settings.CLAUDE_BIN)
    if binary is not None:
        version, problem = check_claude_version(binary)
        if version:
            print(f"claude: {binary} ({version})")
        else:
            problems.append(problem)
    status, sandbox_problems = check_sandbox(settings)
    print(f"sandbox: {status.text}")
    return problems + sandbox_problems


# -- `feishu-bot check --online` ---------------------------------------------------------------

_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
_BOT_INFO_PATH = "/open-apis/bot/v3/info"
_WS_ENDPOINT_PATH = "/callback/ws/endpoint"
_IS_IN_CHAT_PATH = "/open-apis/im/v1/chats/{chat_id}/members/is_in_chat"
_ONLINE_TIMEOUT_S = 15.0
# bot/v3/info `activate_status` (Feishu server docs, "获取机器人信息").
_ACTIVATE_STATUS = {
    0: "not installed in the tenant yet",
    1: "stopped by the tenant",
    2: "enabled",
    3: "installed, waiting to be enabled",
    4: "upgraded, waiting to be enabled",
    5: "licence expired",
    6: "plan expired or downgraded",
}


async def _post_json(session: Any, url: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    async with session.post(url, json=body, **kw) as resp:
        return _json_body(await resp.read(), resp.status)


async def _get_json(session: Any, url: str, **kw: Any) -> dict[str, Any]:
    async with session.get(url, **kw) as resp:
        return _json_body(await resp.read(), resp.status)


def _json_body(raw: bytes, status: int) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"code": -1, "msg": f"HTTP {status}, not a JSON answer"}
    return data


def _refusal(data: dict[str, Any]) -> str:
    return f"code {data.get('code')}: {str(data.get('msg') or '').strip() or 'no message'}"


async def online_checks(settings: Settings) -> list[tuple[bool, str]]:
    """Ask Feishu what works for this app: one (ok, line) per aspect, in a fixed order.

    Credentials (a tenant token), the bot's identity (GET bot/v3/info: the Bot capability is
    on and the app is enabled), the long connection's endpoint discovery (what
    ``lark_oapi.ws.Client`` does first), and, when FEISHU_ADMIN_CHAT is set, where alerts go
    (a chat the bot is in, or an open_id), without posting anything. The websocket URL carries
    a ticket and is never shown.
    """
    import aiohttp

    domain = settings.FEISHU_DOMAIN
    app_id = settings.FEISHU_APP_ID
    secret = settings.FEISHU_APP_SECRET.get_secret_value()
    results: list[tuple[bool, str]] = []
    timeout = aiohttp.ClientTimeout(total=_ONLINE_TIMEOUT_S)
    # trust_env: go through the same proxy the SDK's `requests` would use.
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
        token = ""
        try:
            data = await _post_json(
                session, domain + _TOKEN_PATH, {"app_id": app_id, "app_secret": secret}
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            results.append((False, f"credentials: cannot reach {domain} ({exc!r})"))
        else:
            token = str(data.get("tenant_access_token") or "") if data.get("code") == 0 else ""
            if token:
                results.append((True, "credentials: ok (tenant access token issued)"))
            else:
                results.append(
                    (
                        False,
                        f"credentials: refused by Feishu ({_refusal(data)}); check "
                        "FEISHU_APP_ID, FEISHU_APP_SECRET and FEISHU_DOMAIN",
                    )
                )
        results.append(await _bot_check(session, domain, token))
        results.append(await _ws_check(session, domain, app_id, secret))
        if settings.FEISHU_ADMIN_CHAT:
            admin = settings.FEISHU_ADMIN_CHAT
            results.append(await _admin_chat_check(session, domain, token, admin))
    return results


async def _bot_check(session: Any, domain: str, token: str) -> tuple[bool, str]:
    import aiohttp

    if not token:
        return False, "bot capability: not checked (no tenant token)"
    try:
        data = await _get_json(
            session, domain + _BOT_INFO_PATH, headers={"Authorization": f"Bearer {token}"}
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"bot capability: cannot ask ({exc!r})"
    bot = data.get("bot") if data.get("code") == 0 else None
    if not isinstance(bot, dict):
        return False, (
            f"bot capability: off ({_refusal(data)}); add the Bot capability "
            "(添加应用能力 → 机器人) and publish a version"
        )
    status = bot.get("activate_status")
    name = f"{bot.get('app_name', '?')} ({bot.get('open_id', '?')})"
    if status not in (None, 2):
        meaning = _ACTIVATE_STATUS.get(status, "unknown state")
        return False, f"bot capability: on, but the app is not enabled: {meaning} ({name})"
    return True, f"bot capability: on, {name}"


async def _ws_check(session: Any, domain: str, app_id: str, secret: str) -> tuple[bool, str]:
    import aiohttp

    try:
        data = await _post_json(
            session,
            domain + _WS_ENDPOINT_PATH,
            {"AppID": app_id, "AppSecret": secret},
            headers={"locale": "zh"},
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"long connection: cannot ask ({exc!r})"
    inner = data.get("data")
    if data.get("code") == 0 and isinstance(inner, dict) and inner.get("URL"):
        return True, (
            "long connection: available (events arrive once 事件与回调 uses the long connection "
            "and a version with im.message.receive_v1 is published)"
        )
    return False, f"long connection: not available ({_refusal(data)})"


async def _admin_chat_check(
    session: Any, domain: str, token: str, target: str
) -> tuple[bool, str]:
    import aiohttp

    if target.startswith("ou_"):
        # Nothing short of posting tells whether a user can receive the bot's messages.
        return True, (
            f"admin chat: the open_id {target}: alerts go to the bot's private chat with that "
            "user (not checked: the user must be in the app's availability range)"
        )
    if not token:
        return False, "admin chat: not checked (no tenant token)"
    try:
        data = await _get_json(
            session,
            domain + _IS_IN_CHAT_PATH.format(chat_id=target),
            headers={"Authorization": f"Bearer {token}"},
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"admin chat: cannot ask ({exc!r})"
    inner = data.get("data")
    if data.get("code") != 0 or not isinstance(inner, dict):
        return False, (
            f"admin chat: cannot check {target} ({_refusal(data)}); the check needs the scope "
            "im:chat:readonly, and FEISHU_ADMIN_CHAT must be a chat of this tenant"
        )
    if inner.get("is_in_chat") is True:
        return True, f"admin chat: {target} (the bot is in it)"
    return False, (
        f"admin chat: the bot is not in {target}: add it to that chat, or fix FEISHU_ADMIN_CHAT"
    )


def run_online_checks(settings: Settings) -> int:
    """Print one line per online check; 0 when all passed, 1 otherwise."""
    import asyncio

    results = asyncio.run(online_checks(settings))
    for ok, line in results:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if all(ok for ok, _ in results) else 1
