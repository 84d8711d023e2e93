"""Entry point: `feishu-bot [run|check|playground]`, `feishu-bot --version`, `python -m …`.

Exit codes: 0 clean stop; 1 a failure a restart may cure (the supervisor restarts the bot);
2 what a restart cannot fix, so pm2 (`stop_exit_codes`) and systemd (`RestartPreventExitStatus`)
leave it stopped: bad configuration or environment, credentials Feishu refuses, a database file
that is corrupt or newer than the code (see `feishu_bot.startup`). Feishu being unreachable at
start is not an exit at all: the bot waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from feishu_bot import __version__
from feishu_bot.config import Settings, export_env_file, load_settings
from feishu_bot.errors import ConfigError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feishu-bot", description="Use the Claude Code CLI from Feishu/Lark chats."
    )
    parser.add_argument("--version", action="version", version=f"feishu-bot {__version__}")
    parser.add_argument(
        "--env-file", default=".env", help="dotenv file to read (environment wins; default .env)"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot in the foreground (default)")
    check = sub.add_parser("check", help="validate configuration and environment, print it masked")
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask Feishu: credentials, bot capability, long connection (exit 1 if not ok)",
    )
    _playground_parser(sub)
    return parser


def _playground_parser(sub: argparse._SubParsersAction) -> None:
    play = sub.add_parser(
        "playground",
        help="chat with the bot in a browser, through a local Feishu simulator (no app needed)",
    )
    mode = play.add_mutually_exclusive_group()
    mode.add_argument(
        "--offline",
        action="store_const",
        const=True,
        dest="offline",
        default=False,
        help="answer with a local demo model instead of Claude (no credentials needed)",
    )
    mode.add_argument(
        "--auto-offline",
        action="store_const",
        const=None,
        dest="offline",
        help="use the offline demo only when no Claude credentials are found",
    )
    play.add_argument("--port", type=int, default=None, help="page port (default PLAYGROUND_PORT)")
    play.add_argument(
        "--data-dir", default="./playground-data", help="the playground's own database and logs"
    )


def _load(env_file: str) -> Settings | None:
    export_env_file(env_file or None)
    try:
        return load_settings(env_file or None)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return None


def _check(settings: Settings) -> int:
    from feishu_bot.checks import run_checks

    print(f"feishu-bot {__version__}: effective configuration")
    for name, value in settings.masked().items():
        print(f"  {name}={value}")
    problems = run_checks(settings)
    for problem in problems:
        print(f"check failed: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print("all checks passed")
    return EXIT_OK


def _run(settings: Settings) -> int:
    from feishu_bot.app import run_app
    from feishu_bot.checks import check_environment, check_sandbox
    from feishu_bot.log import configure_logging

    problems = check_environment(settings)
    sandbox, sandbox_problems = check_sandbox(settings)
    problems += sandbox_problems
    if problems:
        for problem in problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(
        level=settings.LOG_LEVEL,
        log_dir=settings.LOG_DIR or None,
        json_lines=settings.LOG_JSON,
        secrets=[settings.FEISHU_APP_SECRET.get_secret_value()],
    )
    try:
        return asyncio.run(run_app(settings, sandbox=sandbox))
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "playground":
        from feishu_bot.playground import run_playground

        export_env_file(args.env_file or None)
        return run_playground(
            offline=args.offline,
            port=args.port,
            env_file=args.env_file or None,
            data_dir=args.data_dir,
        )
    settings = _load(args.env_file)
    if settings is None:
        return EXIT_CONFIG
    if args.command == "check":
        code = _check(settings)
        if args.online:
            from feishu_bot.checks import run_online_checks

            online = run_online_checks(settings)
            code = code or online  # bad configuration (2) wins over a failed online check (1)
        return code
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
