"""Typed configuration from the environment and `.env`.

`load_settings()` validates once; the resulting `Settings` is passed down explicitly and never
read from a global. Variable names and defaults are a public contract (see README).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from feishu_bot.errors import ConfigError

__all__ = [
    "DEFAULT_SANDBOX_DOMAINS",
    "PERMISSION_MODES",
    "SANDBOX_MODES",
    "Settings",
    "export_env_file",
    "load_settings",
]

PERMISSION_MODES = (
    "default",
    "manual",
    "acceptEdits",
    "plan",
    "bypassPermissions",
    "dontAsk",
    "auto",
)
SANDBOX_MODES = ("auto", "on", "off")
# What a developer's commands need without asking: PyPI, the npm registry, GitHub (clones,
# archives, release downloads, raw files). Anything else is asked for.
DEFAULT_SANDBOX_DOMAINS = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
)
# A host pattern of sandbox.network.allowedDomains: a name, or "*." and a name, optional port.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?")
_FROM_FILE = "\x00from FEISHU_APP_SECRET_FILE\x00"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of the bot; field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        frozen=True,
    )

    FEISHU_APP_ID: str = Field(min_length=1)
    # Required, directly or as FEISHU_APP_SECRET_FILE (read once at start; see _secret_file).
    FEISHU_APP_SECRET: SecretStr
    FEISHU_APP_SECRET_FILE: Path | None = None
    FEISHU_DOMAIN: str = "https://open.feishu.cn"
    FEISHU_ALLOWED_USERS: Annotated[list[str], NoDecode] = []
    FEISHU_ALLOWED_CHATS: Annotated[list[str], NoDecode] = []
    FEISHU_ALLOW_ALL: bool = False
    FEISHU_APPROVERS: Annotated[list[str], NoDecode] = []
    FEISHU_CARDKIT: str = "auto"
    FEISHU_MAX_DOWNLOAD_MB: float = Field(20.0, gt=0)
    # Where alert cards go: a chat_id (oc_…) or an open_id (ou_…, a private chat); empty = off.
    FEISHU_ADMIN_CHAT: str = ""

    CLAUDE_BIN: str = "claude"
    CLAUDE_MAX_CONCURRENT: int = Field(5, ge=1)
    CLAUDE_QUEUE_MAX: int = Field(20, ge=0)
    CLAUDE_TIMEOUT: float = Field(600.0, gt=0)
    CLAUDE_MAX_RETRIES: int = Field(2, ge=0)
    CLAUDE_RETRY_DELAY: float = Field(2.0, ge=0)
    CLAUDE_WORKDIR: Path = Path("./workspace")
    CLAUDE_PERMISSION_MODE: str = "acceptEdits"
    CLAUDE_ALLOWED_TOOLS: str = ""
    CLAUDE_MODEL: str = ""
    CLAUDE_WARM: bool = True
    CLAUDE_IDLE_TIMEOUT: float = Field(1800.0, gt=0)
    CLAUDE_MAX_PER_USER: int = Field(0, ge=0)
    CLAUDE_CONVERSATION_QUEUE_MAX: int = Field(5, ge=0)
    CLAUDE_USER_QUEUE_MAX: int = Field(5, ge=0)
    CLAUDE_APPROVAL_TIMEOUT: float = Field(600.0, gt=0)
    CLAUDE_SHARED_WORKDIR: bool = False
    CLAUDE_SANDBOX: str = "auto"
    CLAUDE_SANDBOX_DOMAINS: Annotated[list[str], NoDecode] = list(DEFAULT_SANDBOX_DOMAINS)
    CLAUDE_SANDBOX_DENY_ENV: Annotated[list[str], NoDecode] = []
    CLAUDE_SANDBOX_AUTO_ALLOW: bool = True
    # Spending limits per calendar day in CRON_TZ (USD, 0 = no limit): one user's turns, and
    # the whole bot's.
    CLAUDE_USER_DAILY_USD: float = Field(0.0, ge=0)
    CLAUDE_DAILY_USD: float = Field(0.0, ge=0)
    # The permission modes /mode may choose (bypassPermissions only if the operator lists it).
    CLAUDE_ALLOWED_MODES: Annotated[list[str], NoDecode] = ["default", "acceptEdits", "plan"]

    # Scheduled prompts (/cron): the zone their times are in ("" = the server's) and how many
    # jobs one conversation may have.
    CRON_TZ: str = ""
    CRON_MAX_PER_CONVERSATION: int = Field(10, ge=0)

    DATABASE_PATH: Path = Path("./data/feishu_bot.db")
    SESSION_STALE_HOURS: float = Field(24.0, gt=0)

    HEALTH_INTERVAL: float = Field(30.0, gt=0)
    HEALTH_PORT: int = Field(0, ge=0, le=65535)
    HEALTH_HOST: str = "127.0.0.1"
    SHUTDOWN_GRACE: float = Field(20.0, ge=0)

    ALERT_WS_DOWN_S: float = Field(60.0, gt=0)
    ALERT_QUEUE_FULL_S: float = Field(300.0, gt=0)
    ALERT_DISK_MIN_MB: float = Field(1024.0, ge=0)

    LOG_LEVEL: str = "INFO"
    LOG_DIR: str = "./logs"
    LOG_JSON: bool = False

    PLAYGROUND_PORT: int = Field(8780, ge=0, le=65535)

    @field_validator(
        "FEISHU_ALLOWED_USERS",
        "FEISHU_ALLOWED_CHATS",
        "FEISHU_APPROVERS",
        "CLAUDE_SANDBOX_DOMAINS",
        "CLAUDE_SANDBOX_DENY_ENV",
        "CLAUDE_ALLOWED_MODES",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("FEISHU_APP_SECRET")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("FEISHU_APP_SECRET_FILE", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        # A placeholder stands in for a secret given as a file, so that "neither is set" is
        # reported like any missing variable (next to the others) and "both" can be told apart.
        if isinstance(data, dict) and data.get("FEISHU_APP_SECRET_FILE"):
            data = dict(data)
            data.setdefault("FEISHU_APP_SECRET", _FROM_FILE)
        return data

    @model_validator(mode="after")
    def _secret_file(self) -> Settings:
        # The file form keeps the secret out of every process environment (systemd
        # LoadCredential=): it is read here, once, and lives only in this object.
        path = self.FEISHU_APP_SECRET_FILE
        if path is None:
            return self
        if self.FEISHU_APP_SECRET.get_secret_value() != _FROM_FILE:
            raise ValueError("FEISHU_APP_SECRET and FEISHU_APP_SECRET_FILE are both set: keep one")
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"FEISHU_APP_SECRET_FILE: cannot read {path}: {reason}") from None
        if not secret:
            raise ValueError(f"FEISHU_APP_SECRET_FILE: {path} is empty")
        object.__setattr__(self, "FEISHU_APP_SECRET", SecretStr(secret))
        return self

    @field_validator("CLAUDE_SANDBOX")
    @classmethod
    def _sandbox(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in SANDBOX_MODES:
            raise ValueError(f"must be one of {', '.join(SANDBOX_MODES)}")
        return value

    @field_validator("CLAUDE_SANDBOX_DOMAINS")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if not _DOMAIN.fullmatch(d)]
        if bad:
            raise ValueError(f"not a host name or *.name pattern: {', '.join(bad)}")
        return [d.lower() for d in value]

    @field_validator("CLAUDE_SANDBOX_DENY_ENV")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not _ENV_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"not an environment variable name: {', '.join(bad)}")
        return value

    @field_validator("FEISHU_DOMAIN")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("FEISHU_CARDKIT")
    @classmethod
    def _cardkit(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("auto", "off"):
            raise ValueError("must be auto or off")
        return value

    @field_validator("FEISHU_ADMIN_CHAT")
    @classmethod
    def _admin_chat(cls, value: str) -> str:
        value = value.strip()
        # The prefix decides the receive_id_type of every alert card, so it must be one of the
        # two Feishu id kinds a message can be sent to.
        if value and not value.startswith(("oc_", "ou_")):
            raise ValueError("must be a chat_id (oc_…) or an open_id (ou_…), or empty")
        return value

    @field_validator("CLAUDE_PERMISSION_MODE")
    @classmethod
    def _permission_mode(cls, value: str) -> str:
        if value not in PERMISSION_MODES:
            raise ValueError(f"must be one of {', '.join(PERMISSION_MODES)}")
        return value

    @field_validator("CLAUDE_ALLOWED_MODES")
    @classmethod
    def _allowed_modes(cls, value: list[str]) -> list[str]:
        unknown = [mode for mode in value if mode not in PERMISSION_MODES]
        if unknown:
            raise ValueError(
                f"unknown mode {', '.join(unknown)}; each must be one of "
                f"{', '.join(PERMISSION_MODES)}"
            )
        return value

    @field_validator("CRON_TZ")
    @classmethod
    def _cron_tz(cls, value: str) -> str:
        value = value.strip()
        if value:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("not a known time zone (e.g. Asia/Shanghai, UTC)") from None
        return value

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @property
    def allowed_tools(self) -> list[str]:
        return _split_csv(self.CLAUDE_ALLOWED_TOOLS)

    def masked(self) -> dict[str, str]:
        """The effective configuration for display, with secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                text = "**** (set)" if raw else ""
            elif isinstance(value, list):
                text = ",".join(value)
            elif value is None:
                text = ""
            else:
                text = str(value)
            shown[name] = text
        return shown


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Validate the configuration once; raise ConfigError with one line per bad variable."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"])
            if not name:  # a model-level rule: its message names the variables itself
                problems.append(str(err["msg"]).removeprefix("Value error, "))
            elif err["type"] == "missing":
                problems.append(f"{name}: required but not set")
            elif "SECRET" in name:
                problems.append(f"{name}: {err['msg']}")  # never echo a secret value
            else:
                problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(problems) from None


def export_env_file(env_file: str | Path | None) -> None:
    """Copy the `.env` entries into the process environment, without overriding it, except
    the bot's own FEISHU_* settings (its app secret above all).

    The `claude` children inherit the bot's environment, so credentials such as
    ANTHROPIC_API_KEY written only in `.env` must be exported for them to see them. The FEISHU_*
    values are read from `.env` by `load_settings` itself: exported, every subprocess the bot or
    a library starts would inherit them.
    """
    if not env_file or not Path(env_file).is_file():
        return
    import os

    from dotenv import dotenv_values

    for name, value in dotenv_values(env_file).items():
        if value is not None and not name.startswith("FEISHU_") and name not in os.environ:
            os.environ[name] = value
