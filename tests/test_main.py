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


def _path_with(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH of one directory holding only ``tools`` (name → shell script body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return f"{bin_dir}:/nonexistent"


def _sandbox_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FEISHU_APP_ID": "a",
        "FEISHU_APP_SECRET": "b-secret",
        "CLAUDE_BIN": str(FAKE_CLAUDE),
        "DATABASE_PATH": str(tmp_path / "d" / "bot.db"),
        "CLAUDE_WORKDIR": str(tmp_path / "ws"),
        "LOG_DIR": "",
        **extra,
    }


def test_check_says_whether_the_sandbox_is_on(tmp_path: Path) -> None:
    done = run_bot(["check"], _sandbox_env(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sandbox: on\n" in done.stdout  # bubblewrap and socat are installed here
    done = run_bot(["check"], _sandbox_env(tmp_path, CLAUDE_SANDBOX="off"), tmp_path)
    assert "sandbox: off (CLAUDE_SANDBOX=off)" in done.stdout and done.returncode == 0


def test_sandbox_on_without_bubblewrap_exits_2_naming_the_variable(tmp_path: Path) -> None:
    path = _path_with(tmp_path, {"python3": f'exec {sys.executable} "$@"'})
    env = _sandbox_env(tmp_path, CLAUDE_SANDBOX="on", PATH=path)
    for command in ("check", "run"):
        done = run_bot([command], env, tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert "CLAUDE_SANDBOX: on, but the sandbox cannot run: bubblewrap and socat missing" in (
            done.stderr
        )
    done = run_bot(["check"], {**env, "CLAUDE_SANDBOX": "auto"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sandbox: off (bubblewrap and socat missing)" in done.stdout


def test_a_bubblewrap_that_cannot_run_turns_auto_off(tmp_path: Path) -> None:
    path = _path_with(tmp_path, {
        "python3": f'exec {sys.executable} "$@"',
        "bwrap": "echo 'bwrap: No permissions to creating new namespace' >&2; exit 1",
        "socat": "exit 0",
    })
    done = run_bot(["check"], _sandbox_env(tmp_path, PATH=path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sandbox: off (bubblewrap cannot create namespaces here: bwrap: No permissions" in (
        done.stdout
    )
    done = run_bot(["check"], _sandbox_env(tmp_path, PATH=path, CLAUDE_SANDBOX="on"), tmp_path)
    assert done.returncode == 2 and "CLAUDE_SANDBOX: on" in done.stderr


def test_check_with_the_secret_in_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("secret-from-a-file-31\n")
    env = _sandbox_env(tmp_path, FEISHU_APP_SECRET_FILE=str(secret_file))
    del env["FEISHU_APP_SECRET"]
    done = run_bot(["check"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "secret-from-a-file-31" not in done.stdout + done.stderr
    env["FEISHU_APP_SECRET_FILE"] = str(tmp_path / "missing")
    done = run_bot(["check"], env, tmp_path)
    assert done.returncode == 2 and "FEISHU_APP_SECRET_FILE: cannot read" in done.stderr
