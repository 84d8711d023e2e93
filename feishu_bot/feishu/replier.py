"""Async Feishu REST client for everything the bot sends: replies, card PATCHes, reactions.

Ownership and invariants:
- The only module besides the gateway that talks to Feishu over HTTP. It uses aiohttp on the
  app loop (never the SDK's blocking `requests` calls) so that nothing blocks the loop and the
  rate-limit headers are visible.
- The tenant token is cached until 600 s before it expires and fetched under a lock: many
  concurrent callers cause one fetch. A token Feishu rejects (99991661/99991663) is dropped
  and fetched again before the retry.
- Every request has a timeout and is retried (tenacity) on connection errors, timeouts, HTTP
  5xx (JSON or not), rate limits (HTTP 429, codes 99991400/230020; the `x-ogw-ratelimit-reset`
  seconds are honoured, capped) and rejected tokens. Any other non-zero code raises
  `FeishuApiError` at once. After the last attempt the transient error itself is raised (it
  is a `FeishuApiError` subclass).
- Message creation (send/reply) carries a `uuid` that stays the same across retries, so a
  retry after a lost response cannot post a second message (Feishu dedupes by uuid for 1 h).
- The token and the app secret are never logged or put into exception messages.
- Sends are paced (`feishu.pacing.Pacer`): replies and sends per chat (known from Feishu's
  answers or `note_chat`; until then per replied-to message), PATCHes per message, a little
  under Feishu's 5 per second, so a burst of cards waits its turn instead of drawing 429s.

It does not split or render content (see `render`), and it does not throttle updates of one
card (see `progress`).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
from loguru import logger
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from feishu_bot.errors import (
    FeishuApiError,
    FeishuRateLimited,
    FeishuTokenInvalid,
    FeishuTransientError,
)
from feishu_bot.feishu.cardkit_calls import CardKitCalls, data_str, new_uuid
from feishu_bot.feishu.pacing import Pacer
from feishu_bot.feishu.render import body_dumps, dumps, text_content
from feishu_bot.feishu.reply_shortcuts import ReplyShortcuts

__all__ = ["RATE_LIMIT_CODES", "TOKEN_INVALID_CODES", "FeishuReplier"]

TOKEN_INVALID_CODES = frozenset({99991661, 99991663})
RATE_LIMIT_CODES = frozenset({99991400, 230020})
RECALLED_CODE = 230011  # "The message is recalled."
TOKEN_REFRESH_MARGIN = 600.0  # seconds before expiry at which a cached token is replaced

_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
_CHAT_MEMORY = 4096  # message ids whose chat is remembered for pacing

Sleep = Callable[[float], Awaitable[None]]
# Builds a fresh multipart body for each attempt (an aiohttp FormData can be sent only once).
FormFactory = Callable[[], aiohttp.FormData]


class FeishuReplier(CardKitCalls, ReplyShortcuts):
    """One client per app; share it. Use `async with` or call `aclose()`."""

    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        domain: str,
        timeout: float = 10.0,
        max_attempts: int = 5,
        session: aiohttp.ClientSession | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        rate_limit_max_wait: float = 30.0,
        rate_limit_min_wait: float = 1.0,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        pacer: Pacer | None = None,
    ) -> None:
        """`pacer` spaces message sends per chat and PATCHes per message (default: a little
        under Feishu's 5 per second); `Pacer.off()` disables it."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._app_id = app_id
        self._app_secret = app_secret
        self._base = domain.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._session = session
        self._own_session = session is None
        # backoff_initial * 2**(n-1) plus up to backoff_initial of jitter, at most backoff_max.
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._rate_limit_max_wait = rate_limit_max_wait
        self._rate_limit_min_wait = rate_limit_min_wait
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None
        self._token_valid_until = 0.0
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0  # for tests and /metrics
        self._pacer = pacer if pacer is not None else Pacer()
        # message id -> chat id, learned from answers and `note_chat`, to pace replies per chat
        self._chat_of: OrderedDict[str, str] = OrderedDict()

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session if this object created it (a passed-in one is the caller's)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            if not self._own_session:
                raise RuntimeError("FeishuReplier is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    # -- public API --------------------------------------------------------------------------

    async def bot_info(self) -> dict[str, Any]:
        """The bot object of GET /open-apis/bot/v3/info (`open_id`, `app_name`, …)."""
        body = await self._call("GET", "/open-apis/bot/v3/info", op="bot_info")
        bot = body.get("bot")
        if not isinstance(bot, dict) and isinstance(body.get("data"), dict):
            bot = body["data"].get("bot")
        if not isinstance(bot, dict):
            raise FeishuApiError("bot_info: response has no bot object", status=200)
        return bot

    async def reply(
        self,
        message_id: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        in_thread: bool = False,
        uuid: str | None = None,
    ) -> str:
        """Reply to a message; returns the new message id. `uuid` dedupes across retries.
        A message recalled meanwhile (its running turn goes on) is answered in its chat."""
        await self._pacer.wait(self._send_key(message_id))
        uuid = uuid or new_uuid()
        try:
            body = await self._call(
                "POST",
                f"/open-apis/im/v1/messages/{message_id}/reply",
                json={
                    "msg_type": msg_type,
                    "content": dumps(content),
                    "reply_in_thread": in_thread,
                    "uuid": uuid,
                },
                op="reply",
            )
        except FeishuApiError as exc:
            chat_id = self._chat_of.get(message_id)
            if exc.code != RECALLED_CODE or chat_id is None:
                raise
            return await self.send(chat_id, msg_type, content, uuid=uuid)
        new_id = data_str(body, "message_id", "reply")
        self._learn_chat(body, message_id, new_id)
        return new_id

    async def send(
        self,
        chat_id: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        uuid: str | None = None,
        receive_id_type: str = "chat_id",
    ) -> str:
        """Send a new message to a chat; returns its id. With ``receive_id_type="open_id"``
        ``chat_id`` is a user's open_id and the message goes to the bot's private chat with
        them (Feishu's answer names that chat, and is remembered for pacing)."""
        by_chat = receive_id_type == "chat_id"
        await self._pacer.wait(f"chat:{chat_id}" if by_chat else f"{receive_id_type}:{chat_id}")
        body = await self._call(
            "POST",
            "/open-apis/im/v1/messages",
            params={"receive_id_type": receive_id_type},
            json={
                "receive_id": chat_id,
                "msg_type": msg_type,
                "content": dumps(content),
                "uuid": uuid or new_uuid(),
            },
            op="send",
        )
        new_id = data_str(body, "message_id", "send")
        if by_chat:
            self.note_chat(new_id, chat_id)
        else:
            self._learn_chat(body, new_id)
        return new_id

    async def patch(self, message_id: str, content: dict[str, Any]) -> None:
        """Replace the content of a card sent with `update_multi: true`."""
        await self._pacer.wait(f"patch:{message_id}")  # Feishu limits PATCHes per message
        await self._call(
            "PATCH",
            f"/open-apis/im/v1/messages/{message_id}",
            json={"content": dumps(content)},
            op="patch",
        )

    async def get_message(self, message_id: str) -> dict[str, Any]:
        """One message (`data.items[0]`: msg_type, body.content, sender, deleted, …), the
        bot's CardKit cards as their content (``card_msg_content_type=user_card_content``).
        Other users' group messages need the scope im:message.group_msg (else 230027)."""
        body = await self._call(
            "GET",
            f"/open-apis/im/v1/messages/{message_id}",
            params={"card_msg_content_type": "user_card_content"},
            op="get_message",
        )
        data = body.get("data")
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise FeishuApiError("get_message: the answer holds no message", status=200)
        return items[0]

    async def add_reaction(self, message_id: str, emoji_type: str) -> str:
        """Add an emoji reaction; returns the reaction id (needed to remove it)."""
        body = await self._call(
            "POST",
            f"/open-apis/im/v1/messages/{message_id}/reactions",
            json={"reaction_type": {"emoji_type": emoji_type}},
            op="add_reaction",
        )
        return data_str(body, "reaction_id", "add_reaction")

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None:
        await self._call(
            "DELETE",
            f"/open-apis/im/v1/messages/{message_id}/reactions/{reaction_id}",
            op="remove_reaction",
        )

    async def send_text(self, chat_id: str, text: str, *, uuid: str | None = None) -> str:
        return await self.send(chat_id, "text", text_content(text), uuid=uuid)

    async def send_card(
        self, chat_id: str, card: dict[str, Any], *, uuid: str | None = None
    ) -> str:
        return await self.send(chat_id, "interactive", card, uuid=uuid)

    # -- pacing ------------------------------------------------------------------------------

    def note_chat(self, message_id: str, chat_id: str) -> None:
        """Tell the replier which chat `message_id` is in (e.g. an inbound message), so that
        replies to it are paced with the rest of that chat from the first one on."""
        if not message_id or not chat_id:
            return
        if self._chat_of.get(message_id) != chat_id:
            # Calls keyed by the message until now count against the chat from here on.
            self._pacer.merge(f"msg:{message_id}", f"chat:{chat_id}")
        self._chat_of[message_id] = chat_id
        self._chat_of.move_to_end(message_id)
        while len(self._chat_of) > _CHAT_MEMORY:
            self._chat_of.popitem(last=False)

    def _send_key(self, message_id: str) -> str:
        chat_id = self._chat_of.get(message_id)
        return f"chat:{chat_id}" if chat_id else f"msg:{message_id}"

    def _learn_chat(self, body: dict[str, Any], *message_ids: str) -> None:
        data = body.get("data")
        chat_id = data.get("chat_id") if isinstance(data, dict) else None
        if isinstance(chat_id, str):
            for message_id in message_ids:
                self.note_chat(message_id, chat_id)

    # -- media support (feishu/media.py streams downloads and sends uploads through these) ----

    @property
    def base_url(self) -> str:
        return self._base

    def http_session(self) -> aiohttp.ClientSession:
        """The shared HTTP session (media downloads stream over it with their own timeouts)."""
        return self._http()

    async def tenant_token(self) -> str:
        """The cached tenant token (fetched if needed). Never log it."""
        return await self._tenant_token()

    def drop_token(self, token: str) -> None:
        """Forget `token` after Feishu rejected it, so the next call fetches a new one."""
        self._drop_token(token)

    async def upload(self, path: str, form: FormFactory, *, op: str) -> dict[str, Any]:
        """A multipart POST with the same token, retries and error classification as every
        other call; returns the JSON body. `form` is called once per attempt."""
        return await self._call("POST", path, op=op, form=form)

    # -- token -------------------------------------------------------------------------------

    async def _tenant_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._token_valid_until:
            return token
        async with self._token_lock:
            # Another caller may have fetched while we waited for the lock.
            if self._token is not None and self._clock() < self._token_valid_until:
                return self._token
            body = await self._request(
                "POST",
                _TOKEN_PATH,
                json={"app_id": self._app_id, "app_secret": self._app_secret},
                token=None,
                op="tenant_token",
            )
            token = body.get("tenant_access_token")
            expire = body.get("expire")
            if not isinstance(token, str) or not token:
                raise FeishuApiError("tenant_token: response has no token", status=200)
            if not isinstance(expire, int | float) or expire <= 0:
                expire = 7200
            # Replace 600 s early; for an unusually short-lived token, at half its life.
            lifetime = (
                expire - TOKEN_REFRESH_MARGIN if expire > 2 * TOKEN_REFRESH_MARGIN else (expire / 2)
            )
            self._token = token
            self._token_valid_until = self._clock() + lifetime
            self.token_fetches += 1
            logger.debug("feishu tenant token fetched, valid for {:.0f}s", lifetime)
            return token

    def _drop_token(self, token: str | None) -> None:
        # Only drop the token that failed: a concurrent caller may already hold a fresh one.
        if token is not None and self._token == token:
            self._token = None
            self._token_valid_until = 0.0

    # -- transport ---------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, FeishuTokenInvalid):
            return 0.0  # the token was dropped; the next attempt fetches a new one
        if isinstance(exc, FeishuTransientError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self._rate_limit_max_wait)
        wait = float(self._backoff(state))
        if isinstance(exc, FeishuRateLimited):
            # No reset header: Feishu's windows are per second, so a shorter wait is wasted.
            wait = max(wait, self._rate_limit_min_wait)
        return wait

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "feishu call failed (attempt {}/{}), retrying in {:.2f}s: {}",
            state.attempt_number,
            self._max_attempts,
            wait,
            exc,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        op: str,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        form: FormFactory | None = None,
    ) -> dict[str, Any]:
        """An authenticated request with retries; returns the JSON body (code == 0)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(FeishuTransientError),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                token = await self._tenant_token()
                try:
                    return await self._request(
                        method, path, params=params, json=json, token=token, op=op, form=form
                    )
                except FeishuTokenInvalid:
                    self._drop_token(token)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        token: str | None,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        form: FormFactory | None = None,
    ) -> dict[str, Any]:
        """One HTTP exchange, classified into success, transient or permanent failure."""
        # A multipart body (uploads) sets its own Content-Type with the boundary.
        headers = {} if form is not None else {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        try:
            async with self._http().request(
                method,
                self._base + path,
                params=params,
                # Serialised here (UTF-8, not ASCII-escaped) so the body is exactly what
                # render measured against Feishu's request body limit.
                data=form() if form is not None else body_dumps(json) if json is not None else None,
                headers=headers,
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                reset = resp.headers.get("x-ogw-ratelimit-reset")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FeishuTransientError(f"{op}: {type(exc).__name__}: {exc}") from exc
        elapsed_ms = (time.monotonic() - started) * 1000

        body: Any = None
        try:
            body = _json_loads(raw)
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        msg = body.get("msg", "") if isinstance(body, dict) else ""
        if not isinstance(code, int):
            code = None
        logger.debug(
            "feishu {} {} -> HTTP {} code {} in {:.0f}ms", op, method, status, code, elapsed_ms
        )

        what = f"{op}: HTTP {status}" + (f" code {code} {msg}" if code is not None else "")
        if status == 429 or code in RATE_LIMIT_CODES:
            raise FeishuRateLimited(
                what, status=status, code=code or 0, retry_after=_parse_reset(reset)
            )
        if code in TOKEN_INVALID_CODES:
            raise FeishuTokenInvalid(what, status=status, code=code or 0)
        if status >= 500:
            raise FeishuTransientError(what, status=status, code=code or 0)
        if body is None or not isinstance(body, dict):
            kind = "non-JSON" if body is None else "unexpected JSON"
            if 200 <= status < 300:
                # A 2xx that is not our JSON is a proxy or gateway hiccup; try again.
                raise FeishuTransientError(f"{op}: HTTP {status} {kind} body", status=status)
            raise FeishuApiError(f"{op}: HTTP {status} {kind} body", status=status)
        if code != 0:
            raise FeishuApiError(what, status=status, code=code or 0)
        return body


def _json_loads(raw: bytes) -> Any:
    return jsonlib.loads(raw.decode("utf-8"))


def _parse_reset(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


