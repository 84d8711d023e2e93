"""The `feishu-bot` command as an operator runs it: a real subprocess."""

import os
import subprocess
import sys
from pathlib import Path

from feishu_bot import __version__

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLAUDE = ROOT / "tests" / "fakes" / "fake_claude.py"


def run_bot(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "feishu_bot", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version(tmp_path: Path) -> None:
    done = run_bot(["--version"], {}, tmp_path)
    assert done.returncode == 0
    assert __version__ in done.stdout


def test_check_with_empty_environment_exits_2_naming_credentials(tmp_path: Path) -> None:
    done = run_bot(["check"], {}, tmp_path)
    assert done.returncode == 2
    assert "FEISHU_APP_ID" in done.stderr and "FEISHU_APP_SECRET" in done.stderr


def test_run_with_bad_value_exits_2_before_connecting(tmp_path: Path) -> None:
    env = {"FEISHU_APP_ID": "a", "FEISHU_APP_SECRET": "b-secret", "CLAUDE_MAX_CONCURRENT": "0"}
    done = run_bot(["run"], env, tmp_path)
    assert done.returncode == 2
    assert "CLAUDE_MAX_CONCURRENT" in done.stderr


def test_run_with_missing_cli_exits_2(tmp_path: Path) -> None:
    env = {
        "FEISHU_APP_ID": "a",
        "FEISHU_APP_SECRET": "b-secret",
        "CLAUDE_BIN": str(tmp_path / "no-such-claude"),
        "LOG_DIR": "",
    }
    done = run_bot([], env, tmp_path)
    assert done.returncode == 2
    assert "CLAUDE_BIN" in done.stderr


def test_check_passes_and_masks_secret(tmp_path: Path) -> None:
    secret = "very-secret-value-42"
    env = {
        "FEISHU_APP_ID": "cli_check",
        "FEISHU_APP_SECRET": secret,
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "DATABASE_PATH": str(tmp_path / "d" / "bot.db"),
        "CLAUDE_WORKDIR": str(tmp_path / "ws"),
        "LOG_DIR": "",
    }
    done = run_bot(["check"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "FEISHU_APP_ID=cli_check" in done.stdout
    assert secret not in done.stdout + done.stderr
    assert "all checks passed" in done.stdout


def test_check_fails_when_cli_cannot_answer_version(tmp_path: Path) -> None:
    broken = tmp_path / "claude"
    broken.write_text("#!/bin/sh\necho 'broken install' >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {
        "FEISHU_APP_ID": "a",
        "FEISHU_APP_SECRET": "b-secret",
        "CLAUDE_BIN": str(broken),
        "DATABASE_PATH": str(tmp_path / "bot.db"),
        "CLAUDE_WORKDIR": str(tmp_path / "ws"),
        "LOG_DIR": "",
    }
    done = run_bot(["check"], env, tmp_path)
    assert done.returncode == 2
    assert "CLAUDE_BIN" in done.stderr and "exited 3" in done.stderr


def test_check_reports_unwritable_database_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {
        "FEISHU_APP_ID": "a",
        "FEISHU_APP_SECRET": "b-secret",
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "DATABASE_PATH": str(blocker / "sub" / "bot.db"),
        "CLAUDE_WORKDIR": str(tmp_path / "ws"),
        "LOG_DIR": "",
    }
    done = run_bot(["check"], env, tmp_path)
    assert done.returncode == 2
    assert "DATABASE_PATH" in done.stderr
