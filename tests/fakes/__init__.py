"""Test doubles shared by every test suite.

- ``fake_claude.py``: an executable fake ``claude`` CLI (stream-json, modes by env var).
- ``fake_anthropic.FakeAnthropic``: a fake Anthropic Messages API for the real CLI.
- ``claude_env``: the environment that keeps a CLI offline and quiet in tests.
"""
