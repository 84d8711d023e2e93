"""The sandbox's detection and the settings every CLI gets (no CLI runs here; see
test_sandbox_cli.py for what they contain with the real CLI and bubblewrap)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from feishu_bot.claude.sandbox import (
    DENIED_HOSTS,
    SandboxPolicy,
    SandboxStatus,
    SandboxUnavailable,
    bot_directories,
    detect,
    off_warning,
    probe_bwrap,
    startup_policy,
    unavailable_problem,
)
from feishu_bot.config import Settings


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "FEISHU_APP_ID": "cli_t",
        "FEISHU_APP_SECRET": "s",
        "CLAUDE_WORKDIR": tmp_path / "bot" / "workspace",
        "DATABASE_PATH": tmp_path / "bot" / "data" / "bot.db",
        "LOG_DIR": str(tmp_path / "logs"),
    }
    values.update(overrides)
    if "FEISHU_APP_SECRET_FILE" in values:
        del values["FEISHU_APP_SECRET"]
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_off_by_setting_probes_nothing() -> None:
    def fail(_: str) -> str:
        raise AssertionError("probed")

    status = detect("off", which=lambda _: "/usr/bin/x", probe=fail)
    assert status == SandboxStatus(False, "CLAUDE_SANDBOX=off")
    assert status.text == "off (CLAUDE_SANDBOX=off)"


@pytest.mark.parametrize(
    ("present", "reason"),
    [
        ({"socat"}, "bubblewrap missing"),
        ({"bwrap"}, "socat missing"),
        (set(), "bubblewrap and socat missing"),
    ],
)
def test_missing_packages_are_named(present: set[str], reason: str) -> None:
    status = detect("auto", which=lambda b: f"/usr/bin/{b}" if b in present else None)
    assert status.text == f"off ({reason})"
    assert unavailable_problem("on", status).startswith(f"CLAUDE_SANDBOX: on, but the sandbox "
                                                        f"cannot run: {reason}")
    assert "apt-get install -y bubblewrap socat" in unavailable_problem("on", status)
    assert unavailable_problem("auto", status) == ""
    assert "bubblewrap socat" in off_warning(status) and "API key" in off_warning(status)


def test_a_bwrap_that_cannot_create_namespaces_means_off(tmp_path: Path) -> None:
    """`auto` means it works: a bwrap that exists but fails (an unprivileged container) is
    found by running one command through it."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    assert probe_bwrap(str(fake)) == "bwrap: No permissions to creating new namespace"
    status = detect("auto", which=lambda b: str(fake) if b == "bwrap" else "/usr/bin/socat")
    assert status.text == (
        "off (bubblewrap cannot create namespaces here: bwrap: No permissions to creating new "
        "namespace)"
    )


def test_the_real_bubblewrap_passes_the_probe() -> None:
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is part of the test environment (scripts/test.sh installs it)"
    assert probe_bwrap(bwrap) == ""
    assert detect("auto") == SandboxStatus(True)


def test_the_probe_passes_no_secret_to_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    seen = tmp_path / "env.txt"
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!/bin/sh\nenv > {seen}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-never-in-the-probe")
    assert probe_bwrap(str(fake)) == ""
    assert "sk-never-in-the-probe" not in seen.read_text()


def test_startup_policy_refuses_on_without_the_sandbox(tmp_path: Path) -> None:
    missing = SandboxStatus(False, "bubblewrap missing")
    with pytest.raises(SandboxUnavailable) as info:
        startup_policy(settings(tmp_path, CLAUDE_SANDBOX="on"), missing)
    assert info.value.line.startswith("CLAUDE_SANDBOX: on, but the sandbox cannot run")
    policy = startup_policy(settings(tmp_path), missing)  # auto: off, with a warning
    assert not policy.enabled and policy.cli_args("memory") == []
    assert policy.child_env(tmp_path, tmp_path, {}) == {}


def test_deny_read_covers_the_bot_home_and_every_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "creds" / "app_secret"
    secret.parent.mkdir()
    secret.write_text("x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "run-creds"))
    s = settings(tmp_path, FEISHU_APP_SECRET_FILE=secret)
    home = tmp_path / "home"
    policy = SandboxPolicy.from_settings(
        s, SandboxStatus(True), home=str(home), bot_dirs=[tmp_path / "bot", Path("/")]
    )
    denied = set(policy.deny_read)
    # the bot's directory holds the workspace and the database: one entry covers them
    assert str(tmp_path / "bot") in denied
    assert str(tmp_path / "bot" / "workspace") not in denied
    assert {str(tmp_path / "logs"), str(tmp_path / "creds"), str(tmp_path / "run-creds"),
            str(home)} <= denied
    assert "/" not in denied and "/tmp" not in denied
    assert any(p.startswith("/tmp/feishu-bot-claude-") for p in denied)  # scratch root


def test_home_in_a_system_directory_still_hides_the_cli_credentials(tmp_path: Path) -> None:
    policy = SandboxPolicy.from_settings(settings(tmp_path), SandboxStatus(True), home="/")
    assert {"/.claude", "/.claude.json"} <= set(policy.deny_read)
    assert "/" not in policy.deny_read


def test_settings_on_the_command_line(tmp_path: Path) -> None:
    s = settings(tmp_path, CLAUDE_SANDBOX_DENY_ENV="GITHUB_TOKEN", CLAUDE_SANDBOX_AUTO_ALLOW=False)
    policy = SandboxPolicy.from_settings(s, SandboxStatus(True), home=str(tmp_path / "h"))
    args = policy.cli_args("the memory")
    assert args[2:] == [
        "--setting-sources", "user", "--strict-mcp-config",
        "--append-system-prompt", "the memory",
    ]
    assert args[0] == "--settings"
    sent = json.loads(args[1])
    box = sent["sandbox"]
    assert box["enabled"] is True and box["failIfUnavailable"] is True
    assert box["allowUnsandboxedCommands"] is False
    assert box["autoAllowBashIfSandboxed"] is False
    assert box["filesystem"]["denyRead"] == list(policy.deny_read)
    assert [e["name"] for e in box["credentials"]["envVars"]] == [
        "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "GITHUB_TOKEN",
    ]
    assert {e["mode"] for e in box["credentials"]["envVars"]} == {"deny"}
    assert box["network"]["allowedDomains"][0] == "pypi.org"
    assert {"127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.0/8"} <= set(
        box["network"]["deniedDomains"]
    )
    perms = sent["permissions"]
    assert perms["blockReadsOutsideWorkingDirectories"] is True
    assert perms["blockWritesOutsideWorkingDirectories"] is True
    assert perms["deny"] == [f"WebFetch(domain:{h})" for h in DENIED_HOSTS]
    assert sent["disableAllHooks"] is True
    assert policy.cli_args("")[-1] == "--strict-mcp-config"  # no memory, no prompt


def test_bash_timeouts_outlast_the_approval_timeout(tmp_path: Path) -> None:
    policy = SandboxPolicy(SandboxStatus(True), approval_timeout=600.0)
    env = policy.child_env(tmp_path / "w", tmp_path / "t", {})
    assert int(env["BASH_DEFAULT_TIMEOUT_MS"]) == 660_000
    assert int(env["BASH_MAX_TIMEOUT_MS"]) == 660_000
    short = SandboxPolicy(SandboxStatus(True), approval_timeout=5.0)
    env = short.child_env(tmp_path / "w", tmp_path / "t", {"BASH_MAX_TIMEOUT_MS": "900000"})
    assert (env["BASH_DEFAULT_TIMEOUT_MS"], env["BASH_MAX_TIMEOUT_MS"]) == ("120000", "900000")
    assert env["TMPDIR"] == env["CLAUDE_CODE_TMPDIR"] == str(tmp_path / "t")
    assert env["npm_config_cache"] == str(tmp_path / "w" / ".cache" / "npm")
    assert env["PIP_CACHE_DIR"] == str(tmp_path / "w" / ".cache" / "pip")
    assert "XDG_CACHE_HOME" not in env  # the CLI keeps its own logs and update staging there


def test_scratch_directories_are_private_and_short(tmp_path: Path) -> None:
    policy = SandboxPolicy(SandboxStatus(True), scratch=tmp_path / "root")
    made = policy.make_scratch("0123456789abcdef")
    assert made == tmp_path / "root" / "0123456789abcdef" and made.is_dir()
    assert (made.stat().st_mode & 0o777) == 0o700
    assert (made.parent.stat().st_mode & 0o777) == 0o700
    real = SandboxPolicy(SandboxStatus(True)).scratch
    # the CLI binds "<TMPDIR>/claude-http-<16 hex>.sock": a unix socket path stops at 107 bytes
    assert len(f"{real}/0123456789abcdef/claude-http-0123456789abcdef.sock") < 100


def test_a_scratch_root_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(PermissionError):
        SandboxPolicy(SandboxStatus(True), scratch=root).make_scratch("abc")


def test_bot_directories_are_the_checkout_and_the_working_directory(tmp_path: Path) -> None:
    dirs = bot_directories(tmp_path)
    assert dirs[0] == tmp_path.resolve()
    assert (dirs[1] / "pyproject.toml").is_file() and (dirs[1] / "feishu_bot").is_dir()


async def test_a_scratch_root_that_is_not_ours_fails_the_turn_plainly(
    make_launcher: object, tmp_path: Path
) -> None:
    from feishu_bot.errors import PermanentCliError
    from tests.claude.support import request

    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 65534, 65534)
    policy = SandboxPolicy(SandboxStatus(True), scratch=root)
    launcher = make_launcher(sandbox=policy)  # type: ignore[operator]
    workdir = tmp_path / "w"
    workdir.mkdir()
    with pytest.raises(PermanentCliError, match="cannot create a temporary directory"):
        await launcher.run(request(workdir, "hello"))
    assert launcher.stats().active == 0 and launcher.stats().cold_starts == 0


async def test_sweep_removes_only_directories_no_live_process_uses(tmp_path: Path) -> None:
    """A bot killed by SIGKILL leaves its CLIs' temporary directories; the next start removes
    them, but never one a live CLI (of this bot or another) still uses, or one just made."""
    import asyncio
    import time

    from feishu_bot.claude.process import TAG_VAR
    from feishu_bot.claude.sandbox import sweep_scratch

    root = tmp_path / "root"
    for name in ("gone", "in-use", "new"):
        (root / name / "claude-0").mkdir(parents=True)
    old = time.time() - 3600
    for name in ("gone", "in-use"):
        os.utime(root / name, (old, old))
    user = await asyncio.create_subprocess_exec(
        "sleep", "30", env={"PATH": os.environ["PATH"], TAG_VAR: "in-use"}
    )
    try:
        assert await asyncio.to_thread(sweep_scratch, root) == 1
    finally:
        user.kill()
        await user.wait()
    assert sorted(p.name for p in root.iterdir()) == ["in-use", "new"]
