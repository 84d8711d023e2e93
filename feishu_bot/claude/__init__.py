"""Claude Code CLI: the launcher (the only owner of CLI processes) and the stream-json parser.

Import from the submodules (``feishu_bot.claude.launcher``, ``feishu_bot.claude.protocol``);
this package module itself imports nothing, so importing it has no side effects.
"""

__all__: list[str] = []
