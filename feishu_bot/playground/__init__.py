"""`feishu-bot playground`: the bot answering in a browser before any Feishu app exists.

See `runner.Playground` for what runs, `web` for the page's API, `offline_api` for the demo
model used by ``--offline``. Nothing here runs at import time.
"""

from __future__ import annotations

from pathlib import Path

from .runner import Playground, PlaygroundConfig

__all__ = ["Playground", "PlaygroundConfig", "run_playground"]


def run_playground(
    *,
    offline: bool | None,
    port: int | None,
    env_file: str | None,
    data_dir: str = "./playground-data",
) -> int:
    """Run until Ctrl-C; returns the exit code. `offline=None`: offline if no credentials."""
    from .cli import serve

    return serve(
        PlaygroundConfig(
            data_dir=Path(data_dir),
            port=port,
            offline=offline,
            env_file=env_file,
        )
    )
