"""Terminal side of `feishu-bot playground`: logging, the printed address, exit codes."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from typing import TextIO

from feishu_bot.errors import ConfigError

from .runner import Playground, PlaygroundConfig

__all__ = ["REAL_APP_HINT", "serve"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

REAL_APP_HINT = """\
To connect a real Feishu/Lark app instead: create a self-built app with the Bot capability
(README, "Creating the Feishu app"), then put at least these in .env and run ./scripts/run.sh:
  FEISHU_APP_ID=cli_...
  FEISHU_APP_SECRET=...
  FEISHU_ALLOWED_USERS=ou_...      (or FEISHU_ALLOWED_CHATS / FEISHU_ALLOW_ALL=true)
  ANTHROPIC_API_KEY=sk-ant-...     (or log the claude CLI in once)
Check them with: .venv/bin/feishu-bot check --online"""


def _configure_logging(pg: Playground) -> None:
    from loguru import logger

    from feishu_bot.log import configure_logging

    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    configure_logging(
        level=level,
        log_dir=str(pg.data_dir / "logs"),
        secrets=[pg.app_secret, pg.page_token],
        stderr=_Quiet(),
    )
    # The terminal shows only what needs attention; the full log is in the playground's logs.
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss} {level} {message}")


class _Quiet:
    """A sink that drops everything (configure_logging always installs a stream sink)."""

    def write(self, message: str) -> None:
        pass


def _print_banner(pg: Playground, out: TextIO) -> None:
    assert pg.sim is not None
    print(f"\nPlayground: {pg.url}\n", file=out)
    print(f"  mode:   {pg.mode_text()}", file=out)
    print("  bot:    connected over the long connection to a local Feishu simulator", file=out)
    print(f"  claude: {pg.settings.CLAUDE_BIN if pg.settings else '?'}", file=out)
    print(f"  data:   {pg.data_dir} (logs in {pg.data_dir / 'logs'})", file=out)
    if not pg.offline and not pg.credentials:
        print(
            "\nNo Claude credentials found (ANTHROPIC_API_KEY, or a logged-in claude CLI):\n"
            "answers will fail. Restart with `feishu-bot playground --offline` for the demo.",
            file=sys.stderr,
        )
    elif pg.offline and pg.config.offline is None:
        print(
            "\nNo Claude credentials found (ANTHROPIC_API_KEY, or a logged-in claude CLI), so\n"
            "the offline demo answers. Set ANTHROPIC_API_KEY in .env for real Claude.",
            file=out,
        )
    print(f"\n{REAL_APP_HINT}", file=out)
    print(f"\nOpen {pg.url} in a browser. Ctrl-C stops.", file=out)
    # The token is the only way in (see guard.py); say so where it is shown.
    print("The token in it lets a browser in: keep the address to yourself.\n", file=out)


async def _serve(config: PlaygroundConfig) -> int:
    pg = Playground(config)
    _configure_logging(pg)
    try:
        await pg.start()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"playground: port {config.port or 'PLAYGROUND_PORT'} is in use; "
                "pass --port N or set PLAYGROUND_PORT",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        raise
    except RuntimeError as exc:
        print(f"playground: {exc} (see {pg.data_dir / 'logs'})", file=sys.stderr)
        return EXIT_FAILURE
    _print_banner(pg, sys.stdout)
    assert pg.bot_task is not None
    try:
        code = await asyncio.shield(pg.bot_task)  # ends on SIGINT/SIGTERM (the bot's handlers)
    finally:
        await pg.stop()
    print("playground stopped", file=sys.stdout)
    return code


def serve(config: PlaygroundConfig) -> int:
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:  # Ctrl-C before the bot had installed its signal handlers
        return EXIT_OK
