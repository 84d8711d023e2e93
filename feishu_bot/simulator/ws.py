"""The long-connection side: endpoint discovery, the websocket, event pushes and acks.

Protocol as lark_oapi 1.7.5 speaks it (lark_oapi/ws/client.py):

* ``POST /callback/ws/endpoint`` with ``{"AppID", "AppSecret"}`` answers the websocket URL
  (``device_id``, ``service_id``, ``access_key``, ``ticket`` in the query) and a ClientConfig.
  A code other than 0, 1 (busy) or 1000040343 (internal) is fatal for the SDK: it stops
  reconnecting for good (``_get_conn_url`` raises ClientException).
* The client sends a ping control frame every PingInterval; the server answers a pong whose
  payload is the ClientConfig JSON (all four fields: the SDK overwrites all of them).
* Events are data frames (method 1) with headers type=event, message_id (per push, shared by
  the fragments), trace_id, sum, seq. The client answers with the same frame plus a
  ``biz_rt`` header and payload ``{"code": 200}`` (500 if its handler raised).
* A bad ticket is refused at the handshake with ``handshake-status``/``handshake-msg``
  headers (514 = auth failed, retried by the SDK; 514 with ``handshake-autherrcode``
  1000040350 = too many connections, fatal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .envelopes import new_id
from .frames import (
    HEADER_BIZ_RT,
    HEADER_MESSAGE_ID,
    HEADER_TYPE,
    METHOD_CONTROL,
    METHOD_DATA,
    FrameDecodeError,
    decode_frame,
    encode_frame,
    event_frames,
    pong_frame,
)
from .options import SimOptions
from .records import AckRecord, ConnectionRecord, Delivery, Records

__all__ = ["ENDPOINT_PATH", "WS_PATH", "WsHub"]

log = logging.getLogger(__name__)

ENDPOINT_PATH = "/callback/ws/endpoint"
WS_PATH = "/ws"
FATAL_CREDENTIALS_CODE = 403  # "Forbidden" in lark_oapi/ws/const.py: fatal for the SDK
AUTH_FAILED = 514
EXCEED_CONN_LIMIT = 1000040350
TICKET_TTL_S = 300


@dataclass(slots=True)
class _Ticket:
    conn_id: str
    service_id: int
    access_key: str
    issued_at: float
    used: bool = False


class _Conn:
    """One live websocket; writes are serialized because pushes and pongs interleave."""

    def __init__(self, record: ConnectionRecord, ws: web.WebSocketResponse, transport) -> None:
        self.record = record
        self.ws = ws
        self.transport = transport
        self.lock = asyncio.Lock()

    @property
    def conn_id(self) -> str:
        return self.record.conn_id

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.ws.send_bytes(data)


class WsHub:
    """Owns tickets, live connections, deliveries and acks."""

    def __init__(self, opts: SimOptions, records: Records) -> None:
        self.opts = opts
        self.records = records
        self.base_ws_url = ""  # set by the server once its port is known
        self.client_config: dict[str, Any] = {
            "ReconnectCount": opts.reconnect_count,
            "ReconnectInterval": opts.reconnect_interval,
            "ReconnectNonce": opts.reconnect_nonce,
            "PingInterval": opts.ping_interval,
        }
        self._tickets: dict[str, _Ticket] = {}
        self._conns: dict[str, _Conn] = {}
        self._pending: list[Delivery] = []
        self._by_frame: dict[str, Delivery] = {}
        self._seq = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.post(ENDPOINT_PATH, self.endpoint), web.get(WS_PATH, self.websocket)]

    @property
    def live(self) -> list[_Conn]:
        return list(self._conns.values())

    # -- discovery and handshake ------------------------------------------------------------

    async def endpoint(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or body.get("AppID") != self.opts.app_id
            or body.get("AppSecret") != self.opts.app_secret
        ):
            return web.json_response(
                {"code": FATAL_CREDENTIALS_CODE, "msg": "invalid app_id or app_secret"}
            )
        ticket = secrets.token_hex(16)
        t = _Ticket(
            conn_id=str(secrets.randbits(62)),
            service_id=secrets.randbelow(2**31 - 1) + 1,  # Frame.service is an int32
            access_key=secrets.token_hex(16),
            issued_at=time.monotonic(),
        )
        self._tickets[ticket] = t
        url = (
            f"{self.base_ws_url}{WS_PATH}?device_id={t.conn_id}&service_id={t.service_id}"
            f"&access_key={t.access_key}&ticket={ticket}"
        )
        return web.json_response(
            {"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": self.client_config}}
        )

    def _refuse(self, status: int, msg: str, autherrcode: int | None = None) -> web.Response:
        headers = {"handshake-status": str(status), "handshake-msg": msg}
        if autherrcode is not None:
            headers["handshake-autherrcode"] = str(autherrcode)
        return web.Response(status=403, text=msg, headers=headers)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        ticket = self._tickets.get(q.get("ticket", ""))
        if (
            ticket is None
            or ticket.used
            or time.monotonic() - ticket.issued_at > TICKET_TTL_S
            or q.get("device_id") != ticket.conn_id
            or q.get("service_id") != str(ticket.service_id)
            or q.get("access_key") != ticket.access_key
        ):
            return self._refuse(AUTH_FAILED, "invalid or expired ticket", 1000040347)
        if len(self._conns) >= self.opts.max_connections:
            return self._refuse(AUTH_FAILED, "exceed connection limit", EXCEED_CONN_LIMIT)
        ticket.used = True

        # timeout bounds close(): how long stop() waits for a client's close reply.
        ws = web.WebSocketResponse(timeout=2.0, autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        record = ConnectionRecord(conn_id=ticket.conn_id, service_id=ticket.service_id)
        conn = _Conn(record, ws, request.transport)
        self._conns[conn.conn_id] = conn
        self.records.connections.append(record)
        log.debug("simulator: connection %s opened", conn.conn_id)
        await self.records.changed()
        try:
            await self._flush_pending(conn)
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._conns.pop(conn.conn_id, None)
            if record.closed_at is None:
                record.closed_at = time.time()
            log.debug("simulator: connection %s closed", conn.conn_id)
            await self.records.changed()
        return ws

    # -- frames from the client -------------------------------------------------------------

    async def _on_frame(self, conn: _Conn, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except FrameDecodeError:
            log.warning("simulator: undecodable frame on %s", conn.conn_id)
            return
        kind = frame.header(HEADER_TYPE)
        if frame.method == METHOD_CONTROL and kind == "ping":
            conn.record.pings += 1
            self.records.pings += 1
            if not conn.record.stalled:
                pong = pong_frame(frame.service or conn.record.service_id, self.client_config)
                try:
                    await conn.send(encode_frame(pong))
                except ConnectionResetError:  # aiohttp's ClientConnectionResetError included
                    log.debug("simulator: pong to a closing connection dropped")
                conn.record.pongs += 1
            await self.records.changed()
        elif frame.method == METHOD_DATA:
            await self._on_ack(conn, frame)

    async def _on_ack(self, conn: _Conn, frame) -> None:
        now = time.monotonic()
        frame_id = frame.header(HEADER_MESSAGE_ID) or ""
        delivery = self._by_frame.get(frame_id)
        try:
            payload = json.loads(frame.payload or b"null")
        except ValueError:
            payload = frame.payload
        code = payload.get("code") if isinstance(payload, dict) else None
        biz_rt = frame.header(HEADER_BIZ_RT)
        sent_at = delivery.sent_at if delivery and delivery.sent_at is not None else now
        if delivery is not None:
            delivery.acked = True
        self.records.acks.append(
            AckRecord(
                event_id=delivery.event_id if delivery else "",
                code=code,
                latency_s=max(0.0, now - sent_at),
                frame_message_id=frame_id,
                conn_id=conn.conn_id,
                biz_rt_ms=int(biz_rt) if biz_rt and biz_rt.isdigit() else None,
                payload=payload,
            )
        )
        await self.records.changed()

    # -- pushes -----------------------------------------------------------------------------

    def _target(self) -> _Conn | None:
        """Feishu gives each event to one connection; here: the newest one not stalled."""
        for conn in reversed(list(self._conns.values())):
            if not conn.record.stalled and not conn.ws.closed:
                return conn
        return None

    async def push(self, envelope: dict[str, Any], fragments: int = 1) -> Delivery:
        """Send one envelope as a new delivery (a fresh frame message id every time).

        With no usable connection the delivery waits and goes out on the next connection,
        as Feishu keeps undelivered events. Returns once the frames are written; the ack is
        recorded later (`Records.acks`).
        """
        delivery = Delivery(
            event_id=envelope["header"]["event_id"],
            frame_message_id=new_id("sim_frame_", 8),
            envelope=envelope,
            fragments=max(1, fragments),
        )
        self._by_frame[delivery.frame_message_id] = delivery
        self.records.deliveries.append(delivery)
        conn = self._target()
        if conn is None:
            self._pending.append(delivery)
        else:
            await self._send_or_queue(conn, delivery)
        await self.records.changed()
        return delivery

    async def push_raw(self, payload: bytes, fragments: int = 1) -> Delivery:
        """Send `payload` as an event data frame whatever it holds (fuzzing: truncated JSON,
        JSON that is no envelope, bytes that are not UTF-8). Needs a live connection; the
        Delivery has an empty envelope and a made-up event_id, and cannot be redelivered."""
        conn = self._target()
        if conn is None:
            raise RuntimeError("push_raw needs a live connection")
        delivery = Delivery(
            event_id=new_id("sim_raw_", 8),
            frame_message_id=new_id("sim_frame_", 8),
            envelope={},
            fragments=max(1, fragments),
            conn_id=conn.conn_id,
        )
        self._by_frame[delivery.frame_message_id] = delivery
        self.records.deliveries.append(delivery)
        frames = event_frames(
            payload,
            service=conn.record.service_id,
            frame_message_id=delivery.frame_message_id,
            trace_id=new_id(nbytes=8),
            seq_id=self._next_seq(delivery.fragments),
            fragments=delivery.fragments,
        )
        for i, frame in enumerate(frames):
            if i == len(frames) - 1:
                delivery.sent_at = time.monotonic()  # before the write, as in `_send`
            await conn.send(encode_frame(frame))
        await self.records.changed()
        return delivery

    async def _flush_pending(self, conn: _Conn) -> None:
        pending, self._pending = self._pending, []
        for delivery in pending:
            await self._send_or_queue(conn, delivery)
        if pending:
            await self.records.changed()

    async def _send_or_queue(self, conn: _Conn, delivery: Delivery) -> None:
        """Send; if the socket died meanwhile, keep the delivery for the next connection."""
        try:
            await self._send(conn, delivery)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("simulator: push on %s failed (%s); queued", conn.conn_id, exc)
            delivery.conn_id = None
            delivery.sent_at = None
            self._pending.append(delivery)

    async def _send(self, conn: _Conn, delivery: Delivery) -> None:
        payload = json.dumps(delivery.envelope, ensure_ascii=False).encode()
        frames = event_frames(
            payload,
            service=conn.record.service_id,
            frame_message_id=delivery.frame_message_id,
            trace_id=new_id(nbytes=8),
            seq_id=self._next_seq(delivery.fragments),
            fragments=delivery.fragments,
        )
        delivery.conn_id = conn.conn_id
        for i, frame in enumerate(frames):
            if i == len(frames) - 1:
                # Set before the write: the ack can be read before this coroutine resumes.
                delivery.sent_at = time.monotonic()
            await conn.send(encode_frame(frame))

    def _next_seq(self, n: int) -> int:
        first = self._seq + 1
        self._seq += n
        return first

    # -- connection faults ------------------------------------------------------------------

    async def drop_connections(self) -> int:
        """Abort every live connection's TCP transport (no close frame), as a network cut."""
        conns = self.live
        for conn in conns:
            conn.record.dropped = True
            conn.record.closed_at = time.time()
            self._conns.pop(conn.conn_id, None)
            if conn.transport is not None:
                conn.transport.abort()
        await self.records.changed()
        return len(conns)

    async def stall_connections(self) -> int:
        """Keep every live connection open but stop answering its pings and pushing to it.

        The websocket layer still answers protocol pings (aiohttp autoping), so the SDK's
        transport keepalive sees a healthy peer: only application-level supervision notices.
        """
        conns = self.live
        for conn in conns:
            conn.record.stalled = True
        await self.records.changed()
        return len(conns)

    async def close_all(self) -> None:
        for conn in self.live:
            await conn.ws.close()
