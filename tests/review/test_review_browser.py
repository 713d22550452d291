"""End to end in headless Chromium: a reviewer opens their link, judges with mouse and keyboard,
undoes, reloads and resumes; then the export has the right folders."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import pytest
from review_helpers import make_study

from clinalign.cli import main
from clinalign.review.db import Store
from clinalign.review.ingest import add_concept
from clinalign.review.serverproc import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--no-first-run",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    if os.environ.get("CLINALIGN_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"CLINALIGN_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def progress(page) -> str:
    return page.locator("#progresscount").inner_text()


def wait_progress(page, done: int, total: int) -> None:
    page.wait_for_function(
        "([d, t]) => document.getElementById('progresscount').textContent === `${d} / ${t} judged`",
        arg=[done, total],
    )


def wait_ready(page) -> None:
    page.locator("button.verdict.plausible:enabled").wait_for()


def test_reviewer_session_in_chromium(tmp_path):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    study = make_study(store, tmp_path, per_image=1, reviewers=("alice",), n=3)
    add_concept(store, "b1", "neutrophil-band", "neutrophil")
    store.dispose()
    ARTIFACTS.mkdir(exist_ok=True)

    with ServerProcess(db, log_path=tmp_path / "server.log") as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            context.set_default_timeout(15000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))

            # The private link signs in, then lands on a token-free address.
            page.goto(f"{server.base_url}/r/{study.tokens['alice']}")
            page.wait_for_url(f"{server.base_url}/")
            assert study.tokens["alice"] not in page.url
            cookie = next(c for c in context.cookies() if c["name"] == "clinalign_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            wait_ready(page)
            wait_progress(page, 0, 6)
            assert page.locator("#who").inner_text() == "Reviewer: alice"
            assert page.locator("#reflist img").count() == 6
            assert page.locator("#sample").evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
            # The 32 px image is scaled up by a whole number to fill the stage.
            width = page.locator("#sample").evaluate("e => e.getBoundingClientRect().width")
            assert width >= 32 * 8 and width % 32 == 0

            # Mouse: a reason tag, then Plausible.
            first = page.locator("#sample").get_attribute("src")
            page.locator("#reasonchips label", has_text="granules").click()
            page.get_by_role("button", name=re.compile("^Plausible")).click()
            wait_progress(page, 1, 6)
            wait_ready(page)
            assert page.locator("#sample").get_attribute("src") != first
            assert page.locator('input[name="reason"]:checked').count() == 0  # tags reset per image

            # Keyboard: 2 = implausible, U = unsure.
            page.keyboard.press("2")
            wait_progress(page, 2, 6)
            wait_ready(page)
            third = page.locator("#sample").get_attribute("src")
            page.keyboard.press("u")
            wait_progress(page, 3, 6)
            wait_ready(page)

            # Undo (Z) brings the last image back.
            page.keyboard.press("z")
            wait_progress(page, 2, 6)
            wait_ready(page)
            assert page.locator("#sample").get_attribute("src") == third
            assert "Undone" in page.locator("#status").inner_text()
            page.keyboard.press("i")
            wait_progress(page, 3, 6)
            wait_ready(page)

            # Reload: the server-side queue resumes on the same image with progress intact.
            current = page.locator("#sample").get_attribute("src")
            page.reload()
            wait_ready(page)
            wait_progress(page, 3, 6)
            assert page.locator("#sample").get_attribute("src") == current

            # A pleasant, representative screenshot: reason picked, reference opened for comparison.
            page.locator("#reasonchips label", has_text="nucleus shape").click()
            page.locator("#reflist button").first.click()
            page.locator("#comparefig:not([hidden])").wait_for()
            page.screenshot(path=str(ARTIFACTS / "review_page.png"))
            page.locator("#reflist button").first.click()

            # Finish the queue, picking the concept on neutrophils.
            for _ in range(3):
                wait_ready(page)
                if page.locator("#declared").text_content() == "neutrophil":
                    page.locator("#conceptchips label", has_text="neutrophil-band").click()
                page.keyboard.press("1")
                page.wait_for_timeout(50)
            wait_progress(page, 6, 6)
            page.get_by_text("All done, thank you!").wait_for()
            assert page.locator("button.verdict.plausible").is_disabled()

            # The admin dashboard renders too.
            admin = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            admin.goto(f"{server.base_url}/r/{study.admin_token}")
            admin.wait_for_url(f"{server.base_url}/admin")
            admin.locator("#t-rev tr", has_text="alice").wait_for()
            assert admin.locator("#k-done").inner_text() == "6 / 6"
            admin.screenshot(path=str(ARTIFACTS / "review_admin.png"), full_page=True)
            # The API docs render offline from /openapi.json.
            admin.goto(f"{server.base_url}/docs")
            admin.locator(".op h3", has_text="/api/verdicts").first.wait_for()
            assert not errors, errors
        finally:
            browser.close()

    out = tmp_path / "feedback"
    assert main(["review", "export", "--db", db, "--out", str(out)]) == 0
    exported = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    rows = list(csv.DictReader(open(out / "votes.csv")))
    assert len(rows) == 6
    verdicts = {r["ID"]: r for r in rows}
    assert sum(r["verdict"] == "unsure" for r in rows) == 0  # the unsure was undone
    expected = set()
    for name, r in verdicts.items():
        folder = {"plausible": "align", "implausible": "notalign"}[r["verdict"]]
        label = r["concept"] or r["class"]
        expected.add(f"{label}/{folder}/{name}")
    assert set(exported) == expected and len(exported) == 6
    assert any(r["reasons"] == "granules" for r in rows)
    assert any(r["concept"] == "neutrophil-band" for r in rows)
    assert (ARTIFACTS / "review_page.png").stat().st_size > 10_000


PHONE = {"width": 390, "height": 844}


def assert_fits_the_screen(page, *selectors: str) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for sel in selectors:
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (sel, box)


def test_phone_width_roles_and_a_link_from_another_site(tmp_path):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    study = make_study(store, tmp_path, per_image=1, reviewers=("Dr Adaline Longname-Smith",), n=2)
    store.dispose()
    token = study.tokens["Dr Adaline Longname-Smith"]
    with ServerProcess(db, log_path=tmp_path / "server.log") as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport=PHONE)
            context.set_default_timeout(15000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # The private link, clicked on another site's page (a webmail): asks first.
            page.route(
                "http://mail.example/**",
                lambda route: route.fulfill(
                    content_type="text/html", body=f'<a id="link" href="{server.base_url}/r/{token}">your link</a>'
                ),
            )
            page.goto("http://mail.example/inbox")
            page.click("#link")
            confirm = page.get_by_role("button", name="Continue as Dr Adaline Longname-Smith")
            confirm.wait_for()
            assert not [c for c in context.cookies() if c["name"] == "clinalign_session"]
            confirm.click()
            page.wait_for_url(f"{server.base_url}/")
            wait_ready(page)

            # At 390 px the top bar wraps: the whole name and the progress stay on screen.
            assert_fits_the_screen(page, "#who", "#progresscount")
            assert page.locator("#who").inner_text() == "Reviewer: Dr Adaline Longname-Smith"
            page.locator("#comment").fill("<i>two</i> nuclei")
            page.get_by_role("button", name=re.compile("^Implausible")).click()
            wait_progress(page, 1, 4)

            # A reviewer who opens /admin is sent to their own page.
            page.goto(f"{server.base_url}/admin")
            page.wait_for_url(f"{server.base_url}/")
            wait_ready(page)

            # The admin, on a phone too, sees the comment (as text) without sideways scrolling.
            admin = browser.new_context(viewport=PHONE).new_page()
            admin.goto(f"{server.base_url}/r/{study.admin_token}")
            admin.wait_for_url(f"{server.base_url}/admin")
            admin.locator("#t-comments td.comment", has_text="<i>two</i> nuclei").wait_for()
            assert admin.locator("#t-comments i").count() == 0
            assert_fits_the_screen(admin, "#who")
            admin.screenshot(path=str(ARTIFACTS / "review_admin_phone.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
