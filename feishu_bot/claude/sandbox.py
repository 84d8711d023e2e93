"""Claude Code's own sandbox around a conversation: can it run here, and with which settings.

With the sandbox on, every Bash command of a CLI runs under bubblewrap (own PID and network
namespace, read-only root, the working directory writable) and reaches the network only through
the CLI's proxy (measured on 2.1.329, FACTS "Claude Code's own sandbox"). The bot passes the
settings on the command line (``--settings <json>``), never into the user's directory, and starts
the CLI with ``--setting-sources user --strict-mcp-config`` and ``disableAllHooks``: measured, a
``.claude/settings.json`` written by a sandboxed command into a subdirectory and reached with
``/cd`` ran its hooks unsandboxed, a planted ``.mcp.json`` started its server unsandboxed, and a
planted ``env.ANTHROPIC_BASE_URL`` sent the API key elsewhere; these options stop all three. They
also stop the directory's ``CLAUDE.md`` from loading, so the bot reads it (``memory.py``).

``detect()`` decides once at start whether the sandbox can run (``CLAUDE_SANDBOX``: ``auto``,
``on``, ``off``); ``SandboxPolicy`` is what every CLI of the bot is started with.

What it does not do: start CLI processes (the launcher does) or answer network requests
(``netguard.py`` refuses private hosts; people answer the rest).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from feishu_bot.config import Settings

__all__ = [
    "DENIED_HOSTS",
    "DENY_ENV",
    "PACKAGES",
    "SandboxPolicy",
    "SandboxStatus",
    "SandboxUnavailable",
    "bot_directories",
    "detect",
    "off_warning",
    "probe_bwrap",
    "scratch_root",
    "startup_policy",
    "sweep_scratch",
    "unavailable_problem",
]

PACKAGES = "bubblewrap socat"
# Sandboxed commands never see these; the CLI itself keeps them.
DENY_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
# Refused by the CLI's proxy without asking (and for WebFetch). Matching is by exact host name
# after the client normalised it (curl sends 127.1 as 127.0.0.1): measured, an entry
# "127.0.0.0/8" does not refuse the literal 127.9.9.9, so the other addresses of these ranges
# are refused by netguard before anyone is asked.
DENIED_HOSTS = (
    "localhost",
    "*.localhost",
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "::",
    "169.254.169.254",
    "metadata.google.internal",
)
# In deniedDomains the CLI also uses IP ranges to refuse a permitted *name* that resolves into
# them (its own check already covers loopback, link-local and this host's addresses).
DENIED_RANGES = (
    "127.0.0.0/8",
    "0.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)
_BASH_DEFAULT_MS = 120_000  # the CLI's defaults (FACTS)
_BASH_MAX_MS = 600_000
_BASH_SLACK_S = 60.0  # a network request waiting for its card must end before the command
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """Whether the CLI's sandbox is used, and why not: what /status and health show."""

    enabled: bool
    reason: str = ""

    @property
    def text(self) -> str:
        return "on" if self.enabled else f"off ({self.reason})"


def probe_bwrap(bwrap: str, *, timeout: float = _PROBE_TIMEOUT_S) -> str:
    """Run ``true`` in namespaces like the CLI's (new session, own network and PID namespace,
    fresh /proc). Returns "" when that worked, else the reason.

    A ``bwrap`` that exists but cannot create namespaces (an unprivileged container) would fail
    every command while the bot says "on". The child gets only PATH: no secret reaches it.
    """
    argv = [
        bwrap, "--new-session", "--die-with-parent", "--unshare-net", "--unshare-pid",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--", "true",
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return ""


def detect(
    mode: str,
    *,
    which: Callable[[str], str | None] = shutil.which,
    probe: Callable[[str], str] = probe_bwrap,
) -> SandboxStatus:
    """Whether the sandbox can be used for ``mode`` (CLAUDE_SANDBOX); blocking (a ~10 ms probe).

    The caller decides what "off" means: a warning for ``auto``, exit 2 for ``on``.
    """
    if mode == "off":
        return SandboxStatus(False, "CLAUDE_SANDBOX=off")
    missing = [pkg for pkg, binary in (("bubblewrap", "bwrap"), ("socat", "socat"))
               if which(binary) is None]
    if missing:
        return SandboxStatus(False, f"{' and '.join(missing)} missing")
    bwrap = which("bwrap")
    assert bwrap is not None
    problem = probe(bwrap)
    if problem:
        return SandboxStatus(False, f"bubblewrap cannot create namespaces here: {problem}")
    return SandboxStatus(True)


def unavailable_problem(mode: str, status: SandboxStatus) -> str:
    """The exit-2 line when CLAUDE_SANDBOX=on cannot be honoured, else ""."""
    if mode != "on" or status.enabled:
        return ""
    return (
        f"CLAUDE_SANDBOX: on, but the sandbox cannot run: {status.reason} "
        f"(install the Debian packages {PACKAGES}: apt-get install -y {PACKAGES})"
    )


def off_warning(status: SandboxStatus) -> str:
    """The one start-up WARNING when ``auto`` found no usable sandbox."""
    return (
        f"sandbox {status.text}: Claude's Bash commands run unconfined, so every chat user can "
        "read the bot's files and database, other conversations and every transcript, and the "
        "CLI's API key, reach local services, and leave processes running; install the Debian "
        f"packages {PACKAGES} (apt-get install -y {PACKAGES}) and restart"
    )


def bot_directories(cwd: Path | None = None) -> list[Path]:
    """The bot's own directories: where it runs (``.env``) and its source checkout (code,
    ``.venv``, ``node_modules``); an installed package's site-packages is left alone."""
    dirs = [(cwd or Path.cwd()).resolve()]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "feishu_bot").is_dir():
        dirs.append(checkout)
    return dirs


def scratch_root() -> Path:
    """Where each CLI process gets a temporary directory of its own (``TMPDIR``).

    Short on purpose: the CLI binds unix sockets under its TMPDIR, and a socket path over 107
    bytes makes every sandboxed command fail ("Failed to create bridge sockets", measured with
    a 79-byte TMPDIR: 113-byte socket paths). One root per user, denied to every sandbox as a
    whole, so a process sees its own directory only.
    """
    return Path("/tmp") / f"feishu-bot-claude-{os.getuid()}"


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """The containment every CLI of the bot gets while ``status.enabled``.

    ``deny_read``: absolute paths hidden from sandboxed commands (a denied directory holding the
    working directory hides everything in it but the working directory: FACTS).
    ``workspace``: CLAUDE_WORKDIR, up to which the bot reads CLAUDE.md files.
    """

    status: SandboxStatus
    deny_read: tuple[str, ...] = ()
    allowed_domains: tuple[str, ...] = ()
    deny_env: tuple[str, ...] = DENY_ENV
    auto_allow: bool = True
    approval_timeout: float = 600.0
    workspace: Path | None = None
    scratch: Path = field(default_factory=scratch_root)

    @property
    def enabled(self) -> bool:
        return self.status.enabled

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        status: SandboxStatus,
        *,
        home: str | None,
        bot_dirs: Iterable[Path] = (),
    ) -> SandboxPolicy:
        """The policy for ``settings``; ``home`` is the CLI's HOME (its ``.claude`` and
        ``.claude.json`` hold credentials and every transcript), ``bot_dirs`` the bot's own
        code and working directories."""
        workspace = Path(settings.CLAUDE_WORKDIR).expanduser().resolve()
        paths: list[Path] = [workspace, *bot_dirs, scratch_root()]
        paths.append(Path(settings.DATABASE_PATH).expanduser().resolve().parent)
        if settings.LOG_DIR:
            paths.append(Path(settings.LOG_DIR).expanduser().resolve())
        if settings.FEISHU_APP_SECRET_FILE is not None:
            paths.append(Path(settings.FEISHU_APP_SECRET_FILE).expanduser().resolve().parent)
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            paths.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
        if home:
            # All of HOME (~/.ssh, ~/.netrc, ~/.config hold credentials too), and its
            # .claude and .claude.json by name in case HOME is a system directory.
            home_dir = Path(home).expanduser().resolve()
            paths += [home_dir, home_dir / ".claude", home_dir / ".claude.json"]
        return cls(
            status=status,
            deny_read=_deniable(paths),
            allowed_domains=tuple(settings.CLAUDE_SANDBOX_DOMAINS),
            deny_env=tuple(dict.fromkeys((*DENY_ENV, *settings.CLAUDE_SANDBOX_DENY_ENV))),
            auto_allow=settings.CLAUDE_SANDBOX_AUTO_ALLOW,
            approval_timeout=settings.CLAUDE_APPROVAL_TIMEOUT,
            workspace=workspace,
        )

    def settings(
        self, scratch: Path | None = None, hosts: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The ``--settings`` object of the CLI whose temporary directory is ``scratch`` (the
        CLI merges it over the user's settings); ``hosts`` are the conversation's network
        grants ("Always allow" of a host), allowed on top of CLAUDE_SANDBOX_DOMAINS."""
        denied = [*DENIED_HOSTS, *DENIED_RANGES]
        filesystem: dict[str, list[str]] = {"denyRead": list(self.deny_read)}
        if scratch is not None:
            # The scratch root is denied, so the CLI's own directory in it must be allowed
            # again: measured, the proxy's socket there is unreachable otherwise and every
            # network request of a command gets an empty reply.
            filesystem["allowRead"] = [str(scratch)]
        return {
            "sandbox": {
                "enabled": True,
                "autoAllowBashIfSandboxed": self.auto_allow,
                "allowUnsandboxedCommands": False,
                # Refuse rather than run a command unsandboxed if bubblewrap breaks later.
                "failIfUnavailable": True,
                "filesystem": filesystem,
                "credentials": {
                    "envVars": [{"name": name, "mode": "deny"} for name in self.deny_env]
                },
                "network": {
                    "allowedDomains": list(dict.fromkeys((*self.allowed_domains, *hosts))),
                    "deniedDomains": denied,
                },
            },
            "permissions": {
                # File tools run in the CLI, outside bubblewrap: keep them in the directory.
                "blockReadsOutsideWorkingDirectories": True,
                "blockWritesOutsideWorkingDirectories": True,
                # WebFetch runs in the CLI too, outside the proxy's deny list.
                "deny": [f"WebFetch(domain:{host})" for host in DENIED_HOSTS],
            },
            "disableAllHooks": True,
        }

    def cli_args(
        self, memory: str = "", scratch: Path | None = None, hosts: tuple[str, ...] = ()
    ) -> list[str]:
        """Arguments added to ``claude`` (nothing when the sandbox is off)."""
        if not self.enabled:
            return []
        args = [
            "--settings", json.dumps(self.settings(scratch, hosts), separators=(",", ":")),
            "--setting-sources", "user",
            "--strict-mcp-config",
        ]
        if memory:
            args += ["--append-system-prompt", memory]
        return args

    def child_env(
        self, workdir: Path, scratch: Path, base: Mapping[str, str]
    ) -> dict[str, str]:
        """Variables added to one CLI's environment (``base`` is what it would get anyway)."""
        if not self.enabled:
            return {}
        needed = int((self.approval_timeout + _BASH_SLACK_S) * 1000)
        default_ms = max(_int(base.get("BASH_DEFAULT_TIMEOUT_MS"), _BASH_DEFAULT_MS), needed)
        max_ms = max(_int(base.get("BASH_MAX_TIMEOUT_MS"), _BASH_MAX_MS), default_ms)
        cache = workdir / ".cache"
        return {
            # A command waiting for a network card must outlive the card's timeout (FACTS).
            "BASH_DEFAULT_TIMEOUT_MS": str(default_ms),
            "BASH_MAX_TIMEOUT_MS": str(max_ms),
            "TMPDIR": str(scratch),
            "CLAUDE_CODE_TMPDIR": str(scratch),
            # HOME is read-only inside: package managers cache in the working directory.
            # Not XDG_CACHE_HOME: the CLI itself keeps logs and update staging there, and a
            # directory commands can write must hold nothing the unsandboxed CLI reads.
            "npm_config_cache": str(cache / "npm"),
            "PIP_CACHE_DIR": str(cache / "pip"),
            "UV_CACHE_DIR": str(cache / "uv"),
        }

    def make_scratch(self, tag: str) -> Path:
        """Create the temporary directory of the CLI process tagged ``tag`` (private, 0700)."""
        root = self.scratch
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.lstat()
        if root.is_symlink() or info.st_uid != os.getuid():
            raise PermissionError(f"{root} is not a directory of this user")
        os.chmod(root, 0o700)
        path = root / tag
        path.mkdir(mode=0o700)
        return path


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


# Never denied, whatever a setting points at: commands need them to run at all.
_SYSTEM_DIRS = frozenset(
    Path(p) for p in ("/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/dev",
                      "/proc", "/sys", "/run", "/var", "/opt", "/srv", "/tmp", "/mnt", "/media")
)


def _deniable(paths: Iterable[Path]) -> tuple[str, ...]:
    """Absolute paths to deny, without system directories, duplicates or paths inside another
    one (the CLI hides a denied directory as a whole)."""
    kept: list[Path] = []
    usable = {p for p in paths if p.is_absolute() and p not in _SYSTEM_DIRS}
    for path in sorted(usable, key=lambda p: len(p.parts)):
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return tuple(str(p) for p in kept)


class SandboxUnavailable(Exception):
    """CLAUDE_SANDBOX=on and the sandbox cannot run: ``line`` says why (exit 2)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


_STALE_SCRATCH_S = 60.0  # a directory younger than this may belong to a CLI starting now


def sweep_scratch(root: Path, *, now: float | None = None) -> int:
    """Remove temporary directories no live process uses any more (a bot killed by SIGKILL
    leaves its CLIs' behind); the root is shared by every bot of this user, so a directory
    whose tag a live process carries, or that is younger than a minute, stays. Blocking."""
    from feishu_bot.claude.process import live_tags

    if not root.is_dir() or root.is_symlink() or root.lstat().st_uid != os.getuid():
        return 0
    in_use = live_tags()
    now = time.time() if now is None else now
    removed = 0
    for path in root.iterdir():
        try:
            stale = now - path.lstat().st_mtime > _STALE_SCRATCH_S
        except OSError:
            continue
        if stale and path.name not in in_use and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def startup_policy(settings: Settings, status: SandboxStatus | None = None) -> SandboxPolicy:
    """The policy the bot runs with: detects the sandbox unless ``status`` is given (blocking),
    logs one line (a WARNING when ``auto`` found none), raises SandboxUnavailable for ``on``."""
    mode = settings.CLAUDE_SANDBOX
    status = status or detect(mode)
    problem = unavailable_problem(mode, status)
    if problem:
        raise SandboxUnavailable(problem)
    if status.enabled:
        logger.info("sandbox on: Claude's commands stay in their conversation's directory")
        swept = sweep_scratch(scratch_root())
        if swept:
            logger.info("removed {} temporary directories of claude processes now gone", swept)
    elif mode == "auto":
        logger.warning("{}", off_warning(status))
    else:
        logger.info("sandbox off (CLAUDE_SANDBOX=off)")
    return SandboxPolicy.from_settings(
        settings, status, home=os.environ.get("HOME"), bot_dirs=bot_directories()
    )
