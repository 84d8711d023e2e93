"""feishu-claude-bot: use the Claude Code CLI from Feishu/Lark chats."""

__version__ = "0.1.0"
__all__ = ["__version__"]
