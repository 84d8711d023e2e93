from pathlib import Path

import pytest

from feishu_bot.config import load_settings
from feishu_bot.errors import ConfigError

BASE = {"FEISHU_APP_ID": "cli_test", "FEISHU_APP_SECRET": "s3cret-value-123"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(
            ("FEISHU_", "CLAUDE_", "LOG_", "HEALTH_", "DATABASE_", "SESSION_", "ALERT_", "CRON_")
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    s = load_settings(None)
    assert s.FEISHU_DOMAIN == "https://open.feishu.cn"
    assert s.FEISHU_ALLOWED_USERS == [] and s.FEISHU_ALLOW_ALL is False
    assert (s.CLAUDE_BIN, s.CLAUDE_MAX_CONCURRENT, s.CLAUDE_QUEUE_MAX) == ("claude", 5, 20)
    assert (s.CLAUDE_TIMEOUT, s.CLAUDE_MAX_RETRIES, s.CLAUDE_RETRY_DELAY) == (600.0, 2, 2.0)
    assert s.CLAUDE_WORKDIR == Path("./workspace")
    assert s.CLAUDE_PERMISSION_MODE == "acceptEdits"
    assert s.DATABASE_PATH == Path("./data/feishu_bot.db")
    assert (s.SESSION_STALE_HOURS, s.HEALTH_INTERVAL, s.HEALTH_PORT) == (24.0, 30.0, 0)
    assert (s.SHUTDOWN_GRACE, s.LOG_LEVEL, s.LOG_DIR, s.LOG_JSON) == (20.0, "INFO", "./logs", False)
    assert s.FEISHU_ADMIN_CHAT == ""  # alerts only logged
    assert (s.ALERT_WS_DOWN_S, s.ALERT_QUEUE_FULL_S, s.ALERT_DISK_MIN_MB) == (60.0, 300.0, 1024.0)
    assert (s.CLAUDE_SANDBOX, s.CLAUDE_SANDBOX_AUTO_ALLOW, s.CLAUDE_SANDBOX_DENY_ENV) == (
        "auto", True, []
    )
    assert s.CLAUDE_SANDBOX_DOMAINS == [
        "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com",
        "codeload.github.com", "objects.githubusercontent.com", "raw.githubusercontent.com",
    ]
    assert s.FEISHU_APP_SECRET_FILE is None
    assert (s.CLAUDE_USER_DAILY_USD, s.CLAUDE_DAILY_USD) == (0.0, 0.0)  # no limits
    assert s.CLAUDE_ALLOWED_MODES == ["default", "acceptEdits", "plan"]
    assert (s.CRON_TZ, s.CRON_MAX_PER_CONVERSATION) == ("", 10)  # the server's zone


def test_missing_credentials_name_both_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    text = "\n".join(info.value.problems)
    assert "FEISHU_APP_ID" in text and "FEISHU_APP_SECRET" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLAUDE_TIMEOUT", "-1"),
        ("CLAUDE_TIMEOUT", "soon"),
        ("CLAUDE_MAX_CONCURRENT", "0"),
        ("CLAUDE_PERMISSION_MODE", "yolo"),
        ("HEALTH_INTERVAL", "abc"),
        ("CLAUDE_RETRY_DELAY", "-0.5"),
        ("FEISHU_DOMAIN", "open.feishu.cn"),
        ("LOG_LEVEL", "LOUD"),
        ("FEISHU_ADMIN_CHAT", "the-admins"),
        ("ALERT_WS_DOWN_S", "0"),
        ("ALERT_QUEUE_FULL_S", "-1"),
        ("ALERT_DISK_MIN_MB", "lots"),
        ("CLAUDE_SANDBOX", "maybe"),
        ("CLAUDE_SANDBOX_DOMAINS", "pypi.org,https://evil.example/x"),
        ("CLAUDE_SANDBOX_DENY_ENV", "GOOD_NAME,bad-name"),
        ("CLAUDE_SANDBOX_AUTO_ALLOW", "perhaps"),
        ("CLAUDE_USER_DAILY_USD", "-1"),
        ("CLAUDE_DAILY_USD", "ten"),
        ("CLAUDE_ALLOWED_MODES", "plan,yolo"),
        ("CRON_TZ", "Mars/Olympus_Mons"),
        ("CRON_TZ", "../etc/passwd"),
        ("CRON_MAX_PER_CONVERSATION", "-2"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for key, val in BASE.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(name)


def test_lists_env_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "FEISHU_APP_ID=from_file\nFEISHU_APP_SECRET=file-secret-1\nCLAUDE_TIMEOUT=30\n"
    )
    monkeypatch.setenv("FEISHU_APP_ID", "from_env")
    monkeypatch.setenv("FEISHU_ALLOWED_USERS", " ou_a, ou_b ,,")
    s = load_settings(".env")
    assert s.FEISHU_APP_ID == "from_env"
    assert s.CLAUDE_TIMEOUT == 30.0
    assert s.FEISHU_ALLOWED_USERS == ["ou_a", "ou_b"]


def test_secret_is_masked_and_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, val in BASE.items():
        monkeypatch.setenv(key, val)
    shown = load_settings(None).masked()
    assert BASE["FEISHU_APP_SECRET"] not in str(shown)
    assert shown["FEISHU_APP_SECRET"].startswith("****")


def test_env_file_is_exported_for_the_claude_child_without_overriding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    from feishu_bot.config import export_env_file

    (tmp_path / ".env").write_text("ANTHROPIC_API_KEY=sk-from-file\nSOME_TOOL_VAR=from-file\n")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("SOME_TOOL_VAR", "from-env")
    export_env_file(tmp_path / ".env")
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-from-file"
    assert os.environ["SOME_TOOL_VAR"] == "from-env"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    export_env_file(tmp_path / "missing.env")  # no file: nothing happens


@pytest.mark.parametrize("value", ["oc_0123abcd", "ou_0123abcd", " oc_x "])
def test_the_admin_chat_is_a_chat_id_or_an_open_id(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    for key, val in BASE.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv("FEISHU_ADMIN_CHAT", value)
    assert load_settings(None).FEISHU_ADMIN_CHAT == value.strip()


def test_sandbox_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, val in BASE.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv("CLAUDE_SANDBOX", " ON ")
    monkeypatch.setenv("CLAUDE_SANDBOX_DOMAINS", "PyPI.org, *.example.com ,proxy.corp:8443,")
    monkeypatch.setenv("CLAUDE_SANDBOX_DENY_ENV", "GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY")
    s = load_settings(None)
    assert s.CLAUDE_SANDBOX == "on"
    assert s.CLAUDE_SANDBOX_DOMAINS == ["pypi.org", "*.example.com", "proxy.corp:8443"]
    assert s.CLAUDE_SANDBOX_DENY_ENV == ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("CLAUDE_SANDBOX_DOMAINS", "")
    assert load_settings(None).CLAUDE_SANDBOX_DOMAINS == []


def test_app_secret_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """systemd LoadCredential= / a file readable by the bot only: the secret is in no
    environment, read once, trailing newline dropped, masked like the variable."""
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("from-the-file-77\n")
    monkeypatch.setenv("FEISHU_APP_ID", "cli_test")
    monkeypatch.setenv("FEISHU_APP_SECRET_FILE", str(secret_file))
    s = load_settings(None)
    assert s.FEISHU_APP_SECRET.get_secret_value() == "from-the-file-77"
    shown = s.masked()
    assert "from-the-file-77" not in str(shown)
    assert shown["FEISHU_APP_SECRET_FILE"] == str(secret_file)


@pytest.mark.parametrize(
    ("content", "also_variable", "expected"),
    [
        ("s3cret\n", True, "FEISHU_APP_SECRET and FEISHU_APP_SECRET_FILE are both set"),
        ("  \n", False, "FEISHU_APP_SECRET_FILE: "),
        (None, False, "FEISHU_APP_SECRET_FILE: cannot read"),
    ],
)
def test_app_secret_file_problems_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, also_variable: bool,
    expected: str,
) -> None:
    secret_file = tmp_path / "app_secret"
    if content is not None:
        secret_file.write_text(content)
    monkeypatch.setenv("FEISHU_APP_ID", "cli_test")
    monkeypatch.setenv("FEISHU_APP_SECRET_FILE", str(secret_file))
    if also_variable:
        monkeypatch.setenv("FEISHU_APP_SECRET", "s3cret")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(expected)
    assert "s3cret" not in info.value.problems[0]


def test_env_file_export_leaves_the_bots_own_settings_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exported, FEISHU_APP_SECRET would reach every subprocess the bot or a library starts
    with the default environment; load_settings reads `.env` itself."""
    import os

    from feishu_bot.config import export_env_file

    (tmp_path / ".env").write_text(
        "FEISHU_APP_ID=cli_x\nFEISHU_APP_SECRET=never-exported-9\nTOOL_SETTING=exported\n"
    )
    monkeypatch.delenv("TOOL_SETTING", raising=False)
    export_env_file(tmp_path / ".env")
    assert os.environ["TOOL_SETTING"] == "exported"
    monkeypatch.delenv("TOOL_SETTING")
    assert "FEISHU_APP_SECRET" not in os.environ and "FEISHU_APP_ID" not in os.environ
    assert load_settings(tmp_path / ".env").FEISHU_APP_SECRET.get_secret_value() == (
        "never-exported-9"
    )


def test_allowed_modes_and_cron_tz_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLAUDE_ALLOWED_MODES", " plan , bypassPermissions ")
    monkeypatch.setenv("CRON_TZ", "Asia/Shanghai")
    s = load_settings(None)
    assert s.CLAUDE_ALLOWED_MODES == ["plan", "bypassPermissions"]
    assert s.CRON_TZ == "Asia/Shanghai"
