"""Event-loop cost of streaming a long answer: stream-json parser + live card; asserts nothing.

    .venv/bin/python benchmarks/stream_bench.py [--deltas 4000 16000]

N text deltas of 25 characters (16 000 deltas = 400 000 characters) go through
`StreamParser.feed` and `PatchStream.update` the way the chat handler drives them (a lazy text
source per text event), against a replier that answers at once; the card flushes at most once
per second of a clock that does not move, so this measures the per-delta work alone. CPU
time (process_time), best of 3. Linear cost: 4x the deltas take about 4x the time (the parser
that re-joined the whole answer per delta took ~40x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from feishu_bot.claude.protocol import StreamParser
from feishu_bot.feishu.patch_stream import PatchStream

PIECE = "x" * 24 + "\n"


class _InstantReplier:
    async def reply_card(self, message_id: str, card: Any, **_: Any) -> str:
        return "om_card"

    async def patch(self, message_id: str, content: Any) -> None:
        return None

    async def add_reaction(self, message_id: str, emoji_type: str) -> str:
        return "r"

    async def remove_reaction(self, message_id: str, reaction_id: str) -> None:
        return None


def delta_lines(count: int) -> list[bytes]:
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    delta = {"type": "content_block_delta", "index": 0}
    delta["delta"] = {"type": "text_delta", "text": PIECE}
    head = [
        {"type": "stream_event", "event": {"type": "message_start", "message": {"id": "m"}}},
        {"type": "stream_event", "event": start},
    ]
    return [json.dumps(x).encode() for x in head] + [
        json.dumps({"type": "stream_event", "event": delta}).encode()
    ] * count


async def _one_run(lines: list[bytes]) -> float:
    parser = StreamParser()
    stream = PatchStream(_InstantReplier(), "om_user", in_thread=False, clock=lambda: 0.0)
    started = time.process_time()
    for line in lines:
        for event in parser.feed(line):
            if event.kind == "text":
                await stream.update(lambda event=event: event.text)
    await asyncio.sleep(0)  # let the card flush once
    took = time.process_time() - started
    await stream.aclose()
    assert parser.text == PIECE * (len(lines) - 2)
    return took


def stream_cost(deltas: int, rounds: int = 3) -> float:
    """CPU seconds to stream `deltas` text deltas through parser and card (best of `rounds`)."""
    lines = delta_lines(deltas)
    return min(asyncio.run(_one_run(lines)) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, nargs="+", default=[4000, 16000])
    args = parser.parse_args()
    base = None
    print("| deltas | characters | CPU | per delta | vs first |")
    print("|---|---|---|---|---|")
    for count in args.deltas:
        took = stream_cost(count)
        base = base or took / count
        print(
            f"| {count:,} | {count * len(PIECE):,} | {took * 1000:.0f} ms "
            f"| {took / count * 1e6:.1f} µs | {took / count / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
