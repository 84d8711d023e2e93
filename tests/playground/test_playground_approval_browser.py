"""A tool approval answered in the page, in a real headless Chromium.

The offline demo model asks for ``Bash`` (``run: python3 -c "print(6*7)"``, which the default
permission mode does not allow by itself; the sandbox is off here, or the command would run in
it without asking); the bot's card shows the approval buttons; a click on
"Allow once" goes back to the bot as a real ``card.action.trigger``; the tool really runs and its
output comes back through the real CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feishu_bot.playground import Playground
from tests.playground.cdp import Browser, find_chromium
from tests.playground.conftest import StartPlayground
from tests.playground.test_playground_browser import replies_text_js, send

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

COMMAND = 'run: python3 -c "print(6*7)"'


@pytest.fixture
async def playground(start_playground: StartPlayground) -> Playground:
    return await start_playground(CLAUDE_SANDBOX="off")


async def test_allow_once_from_the_page(playground: Playground, tmp_path: Path) -> None:
    chromium = find_chromium()
    assert chromium, "Debian chromium is not installed (scripts/test.sh installs it)"
    async with Browser(chromium, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(playground.url)
        await page.wait_for("document.getElementById('conn').dataset.state === 'up'")
        await send(page, COMMAND)
        await page.wait_for(
            """(() => {
                const b = [...document.querySelectorAll('.msg.from-bot .card-btn')]
                    .find((x) => /allow once/i.test(x.innerText) && !x.disabled);
                if (b) b.id = 'allow-once';
                return !!b;
            })()"""
        )
        await page.click("#allow-once")
        await page.wait_for("document.querySelector('#toasts .toast') !== null")
        text = await page.wait_for(
            f"(() => {{ const t = {replies_text_js('print(6*7)')};"
            " return t && /The command printed:[\\s\\S]*42/.test(t) ? t : null; })()",
            60,
        )
    assert "42" in text
    clicks = [a for a in playground.sim.card_actions if a.operator_open_id == "ou_playground_user"]
    assert clicks and clicks[-1].error is None
