"""The playground page in a real headless Chromium, driven over the DevTools protocol.

Against the playground in offline mode (real long connection, real CLI, demo model): a p2p
message and its answer, an @mention in the group (and a message without one that gets no
answer), an image chosen in the page, and a slow answer streamed and stopped with Stop.
Chromium is the Debian package (scripts/test.sh installs it); without it this test fails, it
does not skip.

Set PLAYGROUND_SCREENSHOT=docs/playground.png to refresh the README's screenshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feishu_bot.playground import Playground
from feishu_bot.simulator.media import sample_png
from tests.playground.cdp import Browser, Page, find_chromium

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


def _js(value: str) -> str:
    return json.dumps(value)


def bot_text_js(needle: str) -> str:
    """JS: the text of the bot's message in the open chat that contains `needle`, or null."""
    return f"""[...document.querySelectorAll('.msg.from-bot')]
        .map((m) => m.innerText).find((t) => t.includes({_js(needle)})) || null"""


def user_msg_js(needle: str) -> str:
    return f"""[...document.querySelectorAll('.msg.from-user')]
        .find((m) => m.innerText.includes({_js(needle)}))"""


def replies_text_js(needle: str) -> str:
    """JS: the text of the bot's replies to the user's message containing `needle`."""
    return f"""(() => {{
        const u = {user_msg_js(needle)};
        if (!u) return null;
        return [...document.querySelectorAll('.msg.from-bot')]
            .filter((m) => m.dataset.replyTo === u.dataset.id)
            .map((m) => m.innerText).join('\\n') || null;
    }})()"""


# Watches the conversation pane from now on; `window.pgRedrawn()` then says what was touched
# besides new rows and rows whose item changed.
WATCH_REDRAWS_JS = """(() => {
    const box = document.getElementById('messages');
    const before = new Map([...box.children].map((row) => [row, row.dataset.sig]));
    const records = [];
    const obs = new MutationObserver((found) => records.push(...found));
    obs.observe(document.querySelector('.conversation'),
                {subtree: true, childList: true, attributes: true, characterData: true});
    window.pgRedrawn = () => {
        records.push(...obs.takeRecords());
        obs.disconnect();
        const outside = [];
        const needless = [];
        for (const m of records) {
            if (m.target !== box) {
                const old = [...before.keys()].find((row) => row.contains(m.target));
                if (!box.contains(m.target) || old) outside.push(m.target.id || m.target.nodeName);
                continue;
            }
            for (const row of m.removedNodes) {
                if (!before.has(row)) continue;
                const now = box.querySelector(`[data-id="${row.dataset.id}"]`);
                if (!now || now.dataset.sig === before.get(row)) needless.push(row.dataset.id);
            }
        }
        return {outside, needless, kept: [...before.keys()].filter((r) => r.isConnected).length,
                shown: before.size};
    };
    return before.size;
})()"""


async def send(page: Page, text: str) -> None:
    await page.type_text("#input", text)
    await page.press_enter()
    await page.wait_for(f"!!({user_msg_js(text)})")


async def test_chat_in_a_real_browser(playground: Playground, tmp_path: Path) -> None:
    chromium = find_chromium()
    assert chromium, (
        "Debian chromium is not installed (scripts/test.sh installs it: apt-get install -y "
        "chromium); the browser test cannot run"
    )
    async with Browser(chromium, tmp_path / "chromium-profile") as browser:
        page = await browser.new_page()
        await page.goto(playground.url)
        await page.wait_for("document.getElementById('conn').dataset.state === 'up'")
        await page.wait_for("document.getElementById('mode').classList.contains('offline')")

        # p2p: the answer arrives as a card labelled as the offline demo.
        await send(page, "hello from chromium")
        text = await page.wait_for(bot_text_js("You said: hello from chromium"))
        assert "offline demo — replies are not from Claude" in text
        await page.wait_for(
            f"!({user_msg_js('hello from chromium')}).querySelector('.reaction.live')"
        )
        assert await page.evaluate(
            "document.querySelector('.msg.from-bot .offline-label') !== null"
        )

        # Only what changed is drawn again: while the next answer streams in, the rows already
        # shown stay the same nodes, and the chat header and composer are not rewritten.
        assert await page.evaluate(WATCH_REDRAWS_JS) >= 2
        await send(page, "and one more")
        await page.wait_for(bot_text_js("You said: and one more"))
        await page.wait_for(f"!({user_msg_js('and one more')}).querySelector('.reaction.live')")
        redrawn = await page.evaluate("window.pgRedrawn()")
        assert redrawn["outside"] == [] and redrawn["needless"] == [], redrawn
        assert redrawn["kept"] == redrawn["shown"], redrawn

        # group: without the @mention nobody answers; with it the bot does.
        await page.click('.chat-tab[data-chat="group"]')
        await page.wait_for("!document.getElementById('mention').hidden")
        assert (
            await page.evaluate("document.getElementById('mention').getAttribute('aria-pressed')")
            == "true"
        )
        await page.click("#mention")  # off
        await page.wait_for(
            "document.getElementById('mention').getAttribute('aria-pressed') === 'false'"
        )
        await send(page, "people only")
        await page.click("#mention")  # on again
        await send(page, "hello group")
        await page.wait_for(bot_text_js("You said: hello group"))
        await page.wait_for(f"!({user_msg_js('hello group')}).querySelector('.reaction.live')")
        assert await page.evaluate(bot_text_js("people only")) is None
        ignored = next(
            m for m in playground.sim.user_messages.values() if "people only" in str(m.content)
        )
        assert playground.sim.replies_to(ignored.message_id) == []

        # an image in the p2p chat: chosen in the page, uploaded into the simulator, shown,
        # answered.
        await page.click('.chat-tab[data-chat="p2p"]')
        await page.wait_for("document.getElementById('mention').hidden")
        image = tmp_path / "screenshot.png"
        image.write_bytes(sample_png(32, 32, seed=3))
        await page.wait_for("!document.getElementById('attach').hidden")
        await page.set_files("#file", [image])
        await page.wait_for(
            """[...document.querySelectorAll('.msg.from-user img.msg-img')]
                .some((img) => img.complete && img.naturalWidth === 32)"""
        )
        uploaded = next(m for m in playground.sim.user_messages.values() if m.msg_type == "image")
        await page.wait_for(
            f"""[...document.querySelectorAll('.msg.from-bot')]
                .some((m) => m.dataset.replyTo === {_js(uploaded.message_id)})"""
        )

        # slow answer, streamed while the turn runs, then Stop.
        await send(page, "tell me something slow")
        await page.wait_for(
            f"""(() => {{
                const t = {bot_text_js("A slow answer")};
                const u = {user_msg_js("tell me something slow")};
                return t && t.includes('word1') && u && u.querySelector('.reaction.live');
            }})()"""
        )
        # Still running, the card has grown: the answer streams into it.
        await page.wait_for(
            f"""(() => {{
                const t = {bot_text_js("A slow answer")};
                const u = {user_msg_js("tell me something slow")};
                return t && t.includes('word4') && u && u.querySelector('.reaction.live');
            }})()"""
        )
        # The screenshot for the README: an answer streaming into its card.
        shot = os.environ.get("PLAYGROUND_SCREENSHOT")
        path = Path(shot) if shot else tmp_path / "playground.png"
        await page.screenshot(path)
        assert path.stat().st_size > 10_000

        stop_button = await page.evaluate(
            """(() => {
                const b = [...document.querySelectorAll('.msg.from-bot .card-btn')]
                    .filter((x) => /stop/i.test(x.innerText)).pop();
                if (b) { b.id = 'card-stop'; return true; }
                return false;
            })()"""
        )
        await page.click("#card-stop" if stop_button else "#stop")
        await page.wait_for(
            f"!({user_msg_js('tell me something slow')}).querySelector('.reaction.live')", 60
        )
        stopped = await page.wait_for(
            f"(() => {{ const t = {replies_text_js('tell me something slow')};"
            " return t && /stopped/i.test(t) ? t : null; })()"
        )
        assert "word120" not in stopped, "the slow answer ran to its end instead of stopping"
