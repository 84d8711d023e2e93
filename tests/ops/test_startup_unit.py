"""feishu_bot.startup without processes: which start-up failures wait and which exit."""

from __future__ import annotations

from typing import Any

import pytest

from feishu_bot.errors import FeishuApiError, FeishuTransientError, GatewayError
from feishu_bot.startup import credentials_refused, gateway_refused, wait_for_bot_info


class Script:
    """bot_info() answers from a list: an exception is raised, anything else returned."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def bot_info(self) -> dict[str, Any]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_transient_and_unexpected_failures_are_waited_out() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    script = Script(
        FeishuTransientError("bot_info: ClientConnectorError"),
        FeishuTransientError("bot_info: HTTP 503", status=503),
        FeishuApiError("bot_info: no bot ability", status=400, code=99991672),
        *[FeishuTransientError("timeout")] * 5,
        {"open_id": "ou_bot", "app_name": "Claude"},
    )
    info = await wait_for_bot_info(script, first_delay=1, max_delay=8, sleep=sleep)
    assert info["open_id"] == "ou_bot"
    assert waits == [1, 2, 4, 8, 8, 8, 8, 8]


@pytest.mark.parametrize("code", [10003, 10014])
async def test_refused_credentials_raise_at_once(code: int) -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("no waiting for refused credentials")

    script = Script(FeishuApiError("tenant_token: HTTP 400", status=400, code=code))
    with pytest.raises(FeishuApiError) as caught:
        await wait_for_bot_info(script, sleep=sleep)
    assert credentials_refused(caught.value) and script.calls == 1


def test_which_gateway_refusals_exit_2() -> None:
    assert gateway_refused(GatewayError("refused", code=403))
    assert not gateway_refused(GatewayError("too many connections", code=514))
    assert not gateway_refused(GatewayError("timeout"))
