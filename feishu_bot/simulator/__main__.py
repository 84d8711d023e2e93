"""Playground: ``python -m feishu_bot.simulator --port 9000``.

Starts the simulator, prints the domain and credentials to point the bot at, then sends every
line typed on stdin as a user message and prints what the bot sends back (new messages and
card updates). Ctrl-D or Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from .records import message_text
from .server import FeishuSimulator


async def _print_bot_output(sim: FeishuSimulator) -> None:
    shown: dict[str, int] = {}  # message_id -> versions already printed
    while True:
        revision = sim.revision
        for msg in sim.messages:
            seen = shown.get(msg.message_id, 0)
            if len(msg.versions) > seen:
                label = "bot" if seen == 0 else "bot (updated)"
                print(f"\n[{label} {msg.msg_type}] {message_text(msg)}\n> ", end="", flush=True)
                shown[msg.message_id] = len(msg.versions)
        await sim.wait_for(lambda rev=revision: sim.revision != rev, timeout=3600 * 24)


async def _main(args: argparse.Namespace) -> None:
    async with FeishuSimulator(host=args.host, port=args.port) as sim:
        opts = sim.options
        print(f"Feishu simulator at {sim.base_url}")
        print(f"  domain={sim.base_url} app_id={opts.app_id} app_secret={opts.app_secret}")
        print(f"  bot open_id={opts.bot_open_id}; chat {args.chat_id} ({args.chat_type})")
        print("Type a message and press Enter (Ctrl-D to quit).")
        printer = asyncio.create_task(_print_bot_output(sim))
        try:
            while True:
                print("> ", end="", flush=True)
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    break
                text = line.rstrip("\n")
                if not text:
                    continue
                await sim.push_message(
                    chat_id=args.chat_id,
                    chat_type=args.chat_type,
                    text=text,
                    mention_bot=args.chat_type == "group",
                )
                if sim.connections == 0:
                    print("(no bot connected yet: the message waits for the next connection)")
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m feishu_bot.simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chat-type", choices=("p2p", "group"), default="p2p")
    parser.add_argument("--chat-id", default=None)
    args = parser.parse_args()
    args.chat_id = args.chat_id or ("oc_sim_p2p" if args.chat_type == "p2p" else "oc_sim_group")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
