"""The working directory's memory files (CLAUDE.md), read by the bot for a sandboxed CLI.

A sandboxed CLI is started with ``--setting-sources user`` so that nothing a conversation
writes can change its settings; measured on 2.1.329, that also stops the project's ``CLAUDE.md``
from loading (the user's ``~/.claude/CLAUDE.md`` still loads). The bot reads the project's
memory itself when it starts a process and passes it with ``--append-system-prompt``.

The files are written by the conversation, but the bot reads them outside the sandbox: a
symlink ``CLAUDE.md -> <bot dir>/.env`` would hand the bot's secrets to the model. So a file is
read only when neither it nor any directory between it and the workspace root is a symbolic
link, and only when it is a regular file. ``@path`` imports are not followed.

What it does not do: load ``.claude/rules/`` or user memory (the CLI loads the latter).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MEMORY_FILES", "read_memory"]

# Per directory, in the order the CLI reads them; directories from the workspace root down.
MEMORY_FILES = ("CLAUDE.md", ".claude/CLAUDE.md", "CLAUDE.local.md")
_FILE_MAX = 20_000  # characters per file, and 40 000 in all: argv strings stop at 128 KiB
_TOTAL_MAX = 40_000
_HEADER = (
    "Codebase and user instructions are shown below (the project's memory files, read by the "
    "bot). Be sure to adhere to these instructions. IMPORTANT: These instructions OVERRIDE any "
    "default behavior and you MUST follow them exactly as written."
)


def _directories(workdir: Path, root: Path | None) -> list[Path]:
    """The directories whose memory applies, outermost first: root .. workdir (only workdir
    when it is not under root)."""
    if root is None or (workdir != root and root not in workdir.parents):
        return [workdir]
    dirs = [workdir]
    while dirs[-1] != root:
        dirs.append(dirs[-1].parent)
    return dirs[::-1]


def _read_plain(path: Path, limit: int) -> str | None:
    """The text of ``path`` if it is a regular file reached without symlinks, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit * 4)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    return text[:limit] + "\n[… cut here by the bot]" if len(text) > limit else text


def _no_symlinks(directory: Path, root: Path) -> bool:
    """True when no directory from ``root`` (exclusive) down to ``directory`` is a symlink."""
    current = directory
    while current != root and root in current.parents:
        if current.is_symlink():
            return False
        current = current.parent
    return True


def read_memory(workdir: Path, root: Path | None) -> str:
    """The memory of ``workdir`` as one system-prompt text ("" when there is none). Blocking:
    call it in a thread."""
    workdir = Path(os.path.abspath(workdir))
    root = Path(os.path.abspath(root)) if root is not None else None
    parts: list[str] = []
    budget = _TOTAL_MAX
    for directory in _directories(workdir, root):
        if root is not None and not _no_symlinks(directory, root):
            continue
        for name in MEMORY_FILES:
            path = directory / name
            if budget <= 0 or (name.startswith(".claude/") and path.parent.is_symlink()):
                continue
            text = _read_plain(path, min(_FILE_MAX, budget))
            if text is None or not text.strip():
                continue
            budget -= len(text)
            kind = "private project instructions" if name == "CLAUDE.local.md" else (
                "project instructions, checked into the codebase"
            )
            parts.append(f"Contents of {path} ({kind}):\n\n{text.strip()}")
    return "\n\n".join([_HEADER, *parts]) if parts else ""
