"""Start-up checks of the environment, shared by `feishu-bot check` and `feishu-bot run`.

Each check returns problem lines naming the variable to fix; nothing here connects to Feishu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from feishu_bot.config import Settings

__all__ = ["check_claude_version", "check_environment", "resolve_claude_bin", "run_checks"]


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
    return problems
