import io
import json
import logging

import pytest
from loguru import logger

from feishu_bot.log import Redactor, configure_logging

SECRET = "sim_secret_0123456789"


@pytest.fixture
def sink() -> io.StringIO:
    buf = io.StringIO()
    configure_logging(level="DEBUG", log_dir=None, secrets=[SECRET], stderr=buf)
    yield buf
    logger.remove()


def test_websocket_ticket_and_access_key_are_masked(sink: io.StringIO) -> None:
    logger.info("connected to wss://h/ws?device_id=7&access_key=AK123&ticket=TK-456&service_id=1")
    out = sink.getvalue()
    assert "AK123" not in out and "TK-456" not in out
    assert "device_id=7" in out and "access_key=***" in out


def test_tokens_secret_and_bearer_are_masked(sink: io.StringIO) -> None:
    logger.info('resp {"tenant_access_token": "t-g104abcdefghijklmnopqrstu", "expire": 7200}')
    logger.info("header Authorization: Bearer t-g104abcdefghijklmnopqrstu")
    logger.info("secret is {}", SECRET)
    out = sink.getvalue()
    assert "t-g104abcdefghijklmnopqrstu" not in out
    assert SECRET not in out
    assert "7200" in out


def test_exceptions_are_redacted_too(sink: io.StringIO) -> None:
    try:
        raise RuntimeError(f"login failed with {SECRET}")
    except RuntimeError:
        logger.exception("boom")
    out = sink.getvalue()
    assert SECRET not in out and "RuntimeError" in out


def test_stdlib_and_lark_logger_are_routed_and_redacted(
    sink: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    lark = logging.getLogger("Lark")
    # what lark_oapi.core.log does at import time: its own stdout handler
    lark.addHandler(logging.StreamHandler())
    lark.setLevel(logging.INFO)
    lark.info("connected to wss://x/ws?access_key=ak9&ticket=tk9")
    logging.getLogger("some.lib").warning("plain stdlib record")
    out = sink.getvalue()
    assert "access_key=***" in out and "tk9" not in out
    assert "plain stdlib record" in out
    captured = capsys.readouterr()
    assert "tk9" not in captured.out and "tk9" not in captured.err


def test_json_lines(tmp_path) -> None:
    buf = io.StringIO()
    configure_logging(
        level="INFO", log_dir=tmp_path / "logs", json_lines=True, secrets=[SECRET], stderr=buf
    )
    try:
        with logger.contextualize(conversation="p2p:oc_1", message_id="om_1"):
            logger.info("hello {}", SECRET)
    finally:
        logger.remove()
    text = (tmp_path / "logs" / "feishu_bot.log").read_text()
    line = json.loads(text.strip().splitlines()[-1])
    assert line["message"] == "hello ***" and line["conversation"] == "p2p:oc_1"
    assert SECRET not in text


def test_log_dir_doubles_every_line_on_stderr(tmp_path) -> None:
    """With LOG_DIR, stderr (captured by pm2, never rotated) keeps warnings and errors only."""
    buf = io.StringIO()
    configure_logging(level="DEBUG", log_dir=tmp_path / "logs", stderr=buf)
    try:
        logger.debug("debug line")
        logger.info("health: active 0/5")
        logger.warning("a warning")
        logger.error("an error")
    finally:
        logger.remove()
    file_text = (tmp_path / "logs" / "feishu_bot.log").read_text()
    for line in ("debug line", "health: active 0/5", "a warning", "an error"):
        assert line in file_text
    assert "health" not in buf.getvalue() and "debug line" not in buf.getvalue()
    assert "a warning" in buf.getvalue() and "an error" in buf.getvalue()


def test_without_log_dir_stderr_gets_everything() -> None:
    buf = io.StringIO()
    configure_logging(level="INFO", log_dir=None, stderr=buf)
    try:
        logger.info("health: active 0/5")
    finally:
        logger.remove()
    assert "health: active 0/5" in buf.getvalue()


def test_redactor_leaves_ordinary_text_alone() -> None:
    r = Redactor(["abcdef"])
    assert r("the quick brown fox, 42 items") == "the quick brown fox, 42 items"
    assert r("key abcdef here") == "key *** here"
