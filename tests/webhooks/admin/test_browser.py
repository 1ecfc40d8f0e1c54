"""The console in a real headless Chromium: log in, simulate a message, watch it answered.

Chromium is Debian's package (`make test` installs it when missing and it can); Playwright for
Python drives it. The console talks to the live stack: a real worker answers with the tiny model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bot.core.settings import Settings
from bot.core.store import connect
from tests.bot.channels.wecom.ws_live import answer, live_connector
from tests.conftest import Stack, serve
from tests.helpers import ADMIN_TOKEN, unique

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium through Playwright (never Playwright's own browser download)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser: {CHROMIUM} is missing and could not be installed "
            "(`apt-get install chromium` as root; `make test` tries it)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def keep(shot: Path) -> None:
    """Copy a screenshot to $MIMOCHAT_ARTIFACTS (e.g. artifacts/) when asked."""
    target = os.environ.get("MIMOCHAT_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def test_login_simulate_and_watch_the_answer(
    browser: object, admin_on_stack: tuple[str, Settings], tmp_path: Path
) -> None:
    base, _ = admin_on_stack
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"{base}/admin/simulator")
        assert "/admin/login" in page.url
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").inner_text() == "That is not the admin token."
        page.fill("#token", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin/simulator")

        user = unique("o_browser")
        page.fill("#sim-user", user)
        page.fill("#sim-text", "What is the capital of France?")
        page.click("#sim-send")
        entry = page.locator(".exchange").first
        entry.locator(".verdict").filter(has_text="acknowledged").wait_for()
        page.locator(".exchange.done").first.wait_for(timeout=90_000)

        answer = entry.locator(".replies .bubble.bot").first.inner_text()
        assert answer.strip()
        stages = entry.locator(".timeline tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.stage)"
        )
        for stage in ("webhook", "received", "started", "generated", "delivered"):
            assert stage in stages, stages
        # Stages stamped by different processes' clocks never read as "-0.02" seconds.
        times = entry.locator(".timeline tbody td:nth-child(2)").all_inner_texts()
        assert not [t for t in times if t.startswith("-")], times
        delivered = entry.locator('.timeline tr[data-stage="delivered"]').inner_text()
        assert "customer-service API" in delivered  # the sandbox saw the user write first
        details = entry.locator("details.reasoning")
        if details.get_attribute("data-has"):
            details.locator("summary").click()
            assert details.locator("pre").is_visible()
        desktop = tmp_path / "admin-simulator-desktop.png"
        page.screenshot(path=str(desktop), full_page=True)

        page.set_viewport_size(PHONE)
        phone = tmp_path / "admin-simulator-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        # Nothing wider than the phone's screen: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        page.goto(f"{base}/admin/setup")
        page.locator('[data-check="workers: gpu"] .tag').filter(has_text="ok").wait_for(
            timeout=30_000
        )
        setup = tmp_path / "admin-setup-phone.png"
        page.screenshot(path=str(setup), full_page=True)
        page.goto(f"{base}/admin/")
        page.locator("#stats-at").filter(has_text="updated").wait_for()
        assert int(page.inner_text("#rate").split(".")[0]) >= 0
        live = tmp_path / "admin-live-phone.png"
        page.screenshot(path=str(live), full_page=True)
        page.goto(f"{base}/admin/conversations?user={user}")
        # On a phone: each row's id on one line (not broken mid-word), its stage still shown.
        row = page.locator("table.convs tbody tr").filter(has_text=user)
        link = row.locator("td.who a")
        line = float(link.evaluate("a => parseFloat(getComputedStyle(a).lineHeight) || 20"))
        assert link.bounding_box()["height"] < 1.6 * line  # type: ignore[index]
        assert row.locator("td.stage").is_visible() and row.locator("td.stage").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.click(f"text={user}")
        assert "What is the capital of France?" in page.inner_text("#opened")
        convo = tmp_path / "admin-conversation-phone.png"
        page.screenshot(path=str(convo), full_page=True)
        for shot in (desktop, phone, setup, live, convo):
            assert shot.stat().st_size > 10_000
            keep(shot)

        page.click("text=Log out")
        page.wait_for_url(f"{base}/admin/login")
        assert ADMIN_TOKEN not in page.content()
    finally:
        context.close()


def test_wecom_group_streams_the_answer(
    browser: object, admin_on_stack: tuple[str, Settings], stack: Stack, tmp_path: Path
) -> None:
    """Pick the WeCom group channel: the page shows the robot's stream, then the final answer.

    Injected: 1.5 s of generation delay (the sandbox's engine switch), so the stream is seen
    unfinished ("Thinking…", dashed) before it finishes.
    """
    base, _ = admin_on_stack
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(15_000)
    requests.post(f"{stack.url}/sandbox/wechat/engine", json={"delay": 1.5}, timeout=5)
    try:
        page.goto(f"{base}/admin/login")
        page.fill("#token", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin/")
        page.goto(f"{base}/admin/simulator")
        assert not page.is_visible("#sim-group")  # no group id for an Official Account
        assert "long connection" in page.locator('option[value="wecom_ws"]').inner_text()
        page.select_option("#sim-channel", "wecom_group")
        assert page.is_visible("#sim-group")
        assert page.input_value("#sim-url") == f"{base}/wecom"
        user, group = unique("zhang"), unique("team")
        page.fill("#sim-user", user)
        page.fill("#sim-group", group)
        page.fill("#sim-text", "What is 2+2?")
        page.click("#sim-send")
        entry = page.locator(".exchange").first
        entry.locator(".verdict").filter(has_text="stream started").wait_for()
        streaming = entry.locator(".bubble.stream.streaming")
        streaming.wait_for()
        assert f"@{user}: What is 2+2?" in streaming.locator(".quote").inner_text()
        # The group saw the robot's @mention in the question.
        assert entry.locator(".bubble.user").inner_text() == "@MiMo What is 2+2?"
        mid = tmp_path / "admin-simulator-wecom-streaming.png"
        page.screenshot(path=str(mid), full_page=True)
        entry.locator(".bubble.stream.final").wait_for(timeout=60_000)
        page.locator(".exchange.done").first.wait_for(timeout=30_000)

        final = entry.locator(".bubble.stream.final")
        assert final.locator(".answer").inner_text().strip()
        assert "finished by the stream" in entry.locator(".progress").inner_text()
        stages = entry.locator(".timeline tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.stage)"
        )
        for stage in ("webhook", "received", "started", "generated", "delivered", "stream end"):
            assert stage in stages, stages
        assert "stream refresh" in entry.locator('tr[data-stage="delivered"]').inner_text()
        details = entry.locator("details.reasoning")
        if details.get_attribute("data-has"):
            details.locator("summary").click()
            assert details.locator("pre").is_visible()
        desktop = tmp_path / "admin-simulator-wecom-desktop.png"
        page.screenshot(path=str(desktop), full_page=True)
        page.set_viewport_size(PHONE)
        phone = tmp_path / "admin-simulator-wecom-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        for shot in (mid, desktop, phone):
            assert shot.stat().st_size > 10_000
            keep(shot)
    finally:
        requests.post(f"{stack.url}/sandbox/wechat/engine", json={"delay": 0}, timeout=5)
        context.close()


def test_long_connection_channel_shows_the_pushed_frames(
    browser: object, admin_settings: Settings, tmp_path: Path
) -> None:
    """The "WeCom robot — long connection" channel against a real fake WeCom and connector
    (the test plays the worker): the group's stream grows, then finishes."""
    redis_client = connect(admin_settings.redis_url)
    with live_connector(admin_settings, redis_client) as live, serve(live.settings) as base:
        context = browser.new_context(viewport=DESKTOP)  # type: ignore[attr-defined]
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(f"{base}/admin/login")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/admin/")
            page.goto(f"{base}/admin/simulator")
            page.select_option("#sim-channel", "wecom_ws")
            assert page.is_visible("#sim-group") and page.is_visible("#sim-note-ws")
            assert not page.is_visible("#sim-url")  # no webhook: the WebSocket carries it
            user = unique("zhang")
            page.fill("#sim-user", user)
            page.fill("#sim-text", "What is 2+2?")
            page.click("#sim-send")
            entry = page.locator(".exchange").first
            entry.locator(".verdict").filter(has_text="aibot_msg_callback").wait_for()
            entry.locator(".bubble.stream.streaming").wait_for()
            assert entry.locator(".bubble.user").inner_text() == "@MiMo What is 2+2?"
            answer(redis_client, live.job(), "Two and two make four.")
            page.locator(".exchange.done").first.wait_for()
            final = entry.locator(".bubble.stream.final")
            assert final.locator(".answer").inner_text().strip() == "Two and two make four."
            assert f"@{user}: What is 2+2?" in final.locator(".quote").inner_text()
            assert "stream frames" in entry.locator(".progress").inner_text()
            assert entry.locator('tr[data-stage="stream frame 1"]').count() == 1
            shot = tmp_path / "admin-simulator-wecom-ws.png"
            page.screenshot(path=str(shot), full_page=True)
            keep(shot)
        finally:
            context.close()


# Draws one character on a canvas in the console's own font and returns its pixels.
GLYPH_JS = """([chars, font]) => chars.map((c) => {
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 64;
  const ctx = canvas.getContext("2d");
  ctx.font = font; ctx.fillStyle = "#000"; ctx.textBaseline = "top";
  ctx.fillText(c, 8, 8);
  return Array.from(ctx.getImageData(0, 0, 64, 64).data.filter((_, i) => i % 4 === 3)).join(",");
})"""


def test_chinese_renders_as_glyphs_not_boxes(
    browser: object, live_admin: tuple[str, Settings], tmp_path: Path
) -> None:
    """Fails (never skips) where the browser has no CJK font: every Chinese character would be
    drawn as the same empty box, like a character no font has. `make browser` installs
    fonts-noto-cjk with Chromium."""
    base, _ = live_admin
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(f"{base}/admin/login")
        page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p id=zh>你好，中文</p>')")
        font = page.evaluate("getComputedStyle(document.getElementById('zh')).font")
        chinese = ["中", "文", "你", "好"]
        missing = "\U0010fffd"  # private use: no font has it, so it shows the "no glyph" box
        drawn = page.evaluate(GLYPH_JS, [[*chinese, missing], font])
        shot = tmp_path / "admin-chinese.png"
        page.locator("#zh").screenshot(path=str(shot))
        keep(shot)
        glyphs, box = drawn[:-1], drawn[-1]
        blank = ",".join(["0"] * 64 * 64)
        assert blank not in glyphs, f"Chinese draws nothing in {font!r}: install fonts-noto-cjk"
        assert len(set(glyphs)) == len(glyphs) and box not in glyphs, (
            f"Chinese renders as boxes in {font!r}: install fonts-noto-cjk (`make browser`)"
        )
    finally:
        context.close()
