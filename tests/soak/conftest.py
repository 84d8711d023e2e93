"""The soak test runs the whole bot like the end-to-end tests: reuse their fixtures as they are."""

from tests.e2e.conftest import anthropic, start_bot

__all__ = ["anthropic", "start_bot"]
