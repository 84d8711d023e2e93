"""What an approval card shows, and what "Always allow" grants: pure functions, no I/O.

Display rules (safe controls #3), because the card is where a person decides:
- A command is shown whole, in monospace. A long one (over `LONG_CHARS` characters or
  `LONG_LINES` lines) shows its beginning and its end with "… N characters not shown …"
  between: the end is never cut, since that is where `; curl … | sh` hides.
- Runs of whitespace and invisible characters are made visible (`⟨560 spaces⟩`, `⟨U+202E⟩`),
  so padding cannot push part of a command out of sight.
- Claude's own `description` is shown apart, labelled as Claude's words; the record kept after
  a decision names the command, not the description.
- Write/Edit show the path, the size of the change and its first and last lines.
- Text that comes from Claude has Feishu mention tags made inert (`literal_mentions`).

Grant scope (safe controls #4): "Always allow" grants a Claude Code permission rule that the
CLI matches itself (the bot never matches commands by string): for Bash the CLI's own prefix
suggestion when it offers one (measured: for a plain `touch x` it suggests only the exact
command), else the command's first word(s) as `Bash(<prefix>:*)`; for other tools the tool
name.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from feishu_bot.feishu.render import literal_mentions

__all__ = [
    "LONG_CHARS",
    "LONG_LINES",
    "NETWORK_TOOL",
    "GrantScope",
    "command_line",
    "grant_scope",
    "record_head",
    "show_command",
    "summarize",
    "visible",
]

LONG_CHARS = 500
LONG_LINES = 10
_EDGE_CHARS = 200  # shown at each end of a long command
_EDGE_LINES = 4
_RECORD_CHARS = 120
_EDIT_EDGE_LINES = 3
_DESCRIPTION_CHARS = 300
_WHITESPACE_RUN = re.compile(r"[ \t\u00a0\u3000]{4,}")
_BLANK_LINES = re.compile(r"\n{4,}")
# Commands whose second word names what runs (`npm test`, `git status`): the grant keeps it.
_TWO_WORD = frozenset(
    {"npm", "pnpm", "yarn", "npx", "git", "cargo", "go", "pip", "pip3", "uv", "poetry",
     "docker", "kubectl", "make", "bun", "deno", "gh", "dotnet", "mvn", "gradle"}
)
_SAFE_WORD = re.compile(r"[A-Za-z0-9_./@+-]+")
# How the CLI's sandbox asks to reach a host that is not allowed (FACTS, "own sandbox").
NETWORK_TOOL = "SandboxNetworkAccess"


def visible(text: str) -> str:
    """`text` with long whitespace runs and invisible characters spelled out."""
    out = []
    for ch in text:
        if ch in "\n\t ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn"):
            out.append(f"⟨U+{ord(ch):04X}⟩")
        else:
            out.append(ch)
    shown = "".join(out)
    shown = _WHITESPACE_RUN.sub(lambda m: f" ⟨{len(m.group())} {_blank_kind(m.group())}⟩ ", shown)
    return _BLANK_LINES.sub(lambda m: f"\n⟨{len(m.group()) - 1} blank lines⟩\n", shown)


def _blank_kind(run: str) -> str:
    return "tabs" if set(run) == {"\t"} else "spaces" if set(run) == {" "} else "blanks"


def _shorten(text: str) -> str:
    """Beginning and end of a long text, with how much is left out between (never the end)."""
    lines = text.split("\n")
    if len(text) <= LONG_CHARS and len(lines) <= LONG_LINES:
        return text
    head = "\n".join(lines[:_EDGE_LINES])[:_EDGE_CHARS]
    tail = "\n".join(lines[-_EDGE_LINES:])[-_EDGE_CHARS:]
    hidden = len(text) - len(head) - len(tail)
    return f"{head}\n… {hidden} characters not shown …\n{tail}"


def _fence(text: str, lang: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def show_command(command: str) -> str:
    """The command as a monospace block: whole, or its beginning and end (see the module)."""
    return _fence(_shorten(visible(literal_mentions(command))), "bash")


def command_line(command: str, limit: int = _RECORD_CHARS) -> str:
    """The command on one line for a record: whitespace squeezed, beginning … end."""
    line = " ".join(visible(command).split())
    if len(line) > limit:
        half = (limit - 3) // 2
        line = f"{line[:half]} … {line[-half:]}"
    return "`" + literal_mentions(line).replace("`", "ˋ") + "`"


def _edit_view(tool: str, data: dict[str, Any], path: str) -> str:
    edits = data.get("edits") if isinstance(data.get("edits"), list) else None
    if edits:
        old = "\n".join(str((e or {}).get("old_string", "")) for e in edits if isinstance(e, dict))
        new = "\n".join(str((e or {}).get("new_string", "")) for e in edits if isinstance(e, dict))
        what = f"{len(edits)} edits"
    else:
        old = str(data.get("old_string") or "")
        new = str(data.get("new_string") or data.get("content") or data.get("new_source") or "")
        what = "writes" if tool == "Write" else "edit"
    new_lines = new.split("\n") if new else []
    if old:
        size = (
            f"{what}: replaces {_count(old.count(chr(10)) + 1, 'line')} with "
            f"{_count(len(new_lines), 'line')} ({len(new) - len(old):+d} characters)"
        )
    else:
        size = f"{what} {_count(len(new_lines), 'line')} ({len(new)} characters)"
    if len(new_lines) > _EDIT_EDGE_LINES * 2:
        hidden = len(new_lines) - _EDIT_EDGE_LINES * 2
        shown = [*new_lines[:_EDIT_EDGE_LINES], f"… {_count(hidden, 'line')} not shown …",
                 *new_lines[-_EDIT_EDGE_LINES:]]
    else:
        shown = new_lines
    body = _fence(visible(literal_mentions("\n".join(shown)))) if shown else ""
    return f"`{literal_mentions(path)}` — {size}" + (f"\n{body}" if body else "")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summarize(tool: str, data: dict[str, Any]) -> str:
    """The markdown body of an approval block for `tool` called with `data`."""
    data = data if isinstance(data, dict) else {}
    path = data.get("file_path") or data.get("notebook_path") or data.get("path")
    if tool == "Bash" and isinstance(data.get("command"), str):
        out = show_command(data["command"])
        description = data.get("description")
        if isinstance(description, str) and description.strip():
            said = literal_mentions(" ".join(description.split())[:_DESCRIPTION_CHARS])
            out += f"\n*Claude's description (its own words, not checked):* {said}"
        return out
    if isinstance(path, str) and tool in ("Write", "Edit", "MultiEdit", "NotebookEdit"):
        return _edit_view(tool, data, path)
    if isinstance(path, str):
        return f"`{literal_mentions(path)}`"
    for key in ("url", "host", "pattern", "query"):
        if isinstance(data.get(key), str):
            return command_line(data[key], 300)
    if not data:
        return ""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return _fence(_shorten(visible(literal_mentions(text))), "json")


def record_head(tool: str, data: dict[str, Any]) -> str:
    """What the record after a decision names: the tool and its command, path or target."""
    data = data if isinstance(data, dict) else {}
    target = data.get("command") or data.get("file_path") or data.get("notebook_path")
    target = target or data.get("path") or data.get("url") or data.get("host")
    return f"**{tool}** {command_line(target)}" if isinstance(target, str) else f"**{tool}**"


@dataclass(frozen=True, slots=True)
class GrantScope:
    """What "Always allow" grants. `kind` and `rule` are stored ("tool", "Bash(npm test:*)";
    "host", "example.com"); `label` is how buttons and records say it; `update` is the
    `updatedPermissions` entry that gives it to the running CLI — session only, never a
    settings file."""

    kind: str
    rule: str
    label: str
    update: dict[str, Any]


def _tool_scope(tool: str, content: str | None) -> GrantScope:
    rule: dict[str, Any] = {"toolName": tool}
    if content:
        rule["ruleContent"] = content
        shown = content.removesuffix(":*").removesuffix(" *")
        label = f"{tool} commands starting with `{shown}`" if shown != content else (
            f"the {tool} command `{content}`"
        )
    else:
        label = f"every use of {tool}"
    update = {"type": "addRules", "rules": [rule], "behavior": "allow", "destination": "session"}
    return GrantScope("tool", f"{tool}({content})" if content else tool, label, update)


def grant_scope(
    tool: str, data: dict[str, Any], suggestions: tuple[dict[str, Any], ...]
) -> GrantScope:
    """The narrowest useful rule for "Always allow" of this request (see the module)."""
    if tool == NETWORK_TOOL:
        host = str(data.get("host") or "")
        update = next(
            (
                {**s, "destination": "session"}
                for s in suggestions
                if s.get("type") == "addRules" and s.get("behavior", "allow") == "allow"
            ),
            {
                "type": "addRules",
                "rules": [{"toolName": NETWORK_TOOL, "ruleContent": host}],
                "behavior": "allow",
                "destination": "session",
            },
        )
        return GrantScope("host", host, f"connections to {host}", update)
    if tool != "Bash":
        return _tool_scope(tool, None)
    for suggestion in suggestions:
        if suggestion.get("type") != "addRules" or suggestion.get("behavior", "allow") != "allow":
            continue
        for rule in suggestion.get("rules") or []:
            content = rule.get("ruleContent") if isinstance(rule, dict) else None
            # Only a prefix rule: for a plain command the CLI suggests that exact command,
            # which would never match again.
            if (
                rule.get("toolName") == "Bash"
                and isinstance(content, str)
                and content.strip().endswith((":*", " *"))
            ):
                return _tool_scope("Bash", content.strip())
    command = data.get("command") if isinstance(data.get("command"), str) else ""
    return _tool_scope("Bash", _prefix_rule(command))


def _prefix_rule(command: str) -> str | None:
    """`first[ second]:*` from a command's leading words, or None if it has no plain word
    (then the grant is the exact command)."""
    words = command.strip().split()
    if not words or not _SAFE_WORD.fullmatch(words[0]) or "=" in words[0]:
        return command.strip() or None
    prefix = words[0]
    if (
        words[0] in _TWO_WORD
        and len(words) > 1
        and _SAFE_WORD.fullmatch(words[1])
        and not words[1].startswith("-")
    ):
        prefix += " " + words[1]
    return f"{prefix}:*"
