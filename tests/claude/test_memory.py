"""The memory files the bot reads for a sandboxed CLI (which no longer loads them itself)."""

from __future__ import annotations

import os
from pathlib import Path

from feishu_bot.claude.memory import read_memory


def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "workspace"
    work = root / "p2p-oc_1" / "sub"
    work.mkdir(parents=True)
    return root, work


def test_memory_from_the_workspace_root_down_to_the_directory(tmp_path: Path) -> None:
    root, work = tree(tmp_path)
    (root / "CLAUDE.md").write_text("operator rules")
    (work.parent / "CLAUDE.md").write_text("conversation rules")
    (work / ".claude").mkdir()
    (work / ".claude" / "CLAUDE.md").write_text("nested rules")
    (work / "CLAUDE.local.md").write_text("local rules")
    (tmp_path / "CLAUDE.md").write_text("above the workspace: the bot's own checkout")
    text = read_memory(work, root)
    order = [text.index(t) for t in ("operator rules", "conversation rules", "nested rules",
                                     "local rules")]
    assert order == sorted(order)
    assert f"Contents of {work / 'CLAUDE.local.md'} (private project instructions)" in text
    assert "above the workspace" not in text
    assert text.startswith("Codebase and user instructions are shown below")


def test_no_memory_no_prompt(tmp_path: Path) -> None:
    root, work = tree(tmp_path)
    (work / "CLAUDE.md").write_text("   \n")
    assert read_memory(work, root) == ""


def test_symlinks_never_carry_the_bots_files_into_the_prompt(tmp_path: Path) -> None:
    """The conversation writes its CLAUDE.md, the bot reads it outside the sandbox: a link to
    the bot's .env must not hand the secret to the model."""
    root, work = tree(tmp_path)
    secret = tmp_path / ".env"
    secret.write_text("FEISHU_APP_SECRET=leaked-if-followed")
    (work / "CLAUDE.md").symlink_to(secret)
    (work / ".claude").symlink_to(tmp_path)  # .claude/CLAUDE.md through a linked directory
    (tmp_path / "CLAUDE.md").write_text("leaked-if-followed too")
    linked = root / "linked"
    linked.symlink_to(tmp_path)
    assert read_memory(work, root) == ""
    assert read_memory(linked, root) == ""


def test_a_fifo_or_a_huge_file_does_not_hang_or_flood(tmp_path: Path) -> None:
    root, work = tree(tmp_path)
    os.mkfifo(work / "CLAUDE.md")
    (work / "CLAUDE.local.md").write_text("x" * 500_000)
    text = read_memory(work, root)
    assert len(text) < 25_000 and text.endswith("[… cut here by the bot]")


def test_a_directory_outside_the_workspace_reads_only_itself(tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "CLAUDE.md").write_text("just this")
    assert "just this" in read_memory(other, root)
