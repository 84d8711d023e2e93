"""No import-time side effects: every module imports alone in a fresh interpreter, quickly,
without starting threads, creating event loops or adding log sinks."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    names = []
    for package in ("feishu_bot", "database"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts))
    return names


PROBE = """
import sys, threading, importlib
before = threading.active_count()
importlib.import_module(sys.argv[1])
assert threading.active_count() == before, "a thread was started at import"
assert "lark_oapi" not in sys.modules, "lark_oapi imported at import time"
from loguru import logger
handlers = logger._core.handlers
assert len(handlers) == 1, f"log sinks added at import: {handlers}"
"""


@pytest.mark.parametrize("module", _modules())
def test_module_imports_alone_without_side_effects(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
