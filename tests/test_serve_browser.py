"""`gpt2sql serve` in a real browser: Playwright (sync API) driving Debian's chromium.

The page loads with no console errors, a panel shows the numbers its SQL returns, clicking a
token moves the selection in every view. With GPT2SQL_SCREENSHOTS=DIR each view is saved as
DIR/serve-<view>.png (docs/serve-*.png come from this, on a random-weight model)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

import synthetic
from gpt2sql import db
from gpt2sql.serve import app as serve_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MODEL = "random-tiny"
VIEWS = ["tokenizer", "attention", "lens", "next", "scores", "whatif", "learning", "models"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def url(dsn, runner, tmp_path_factory):
    import uvicorn

    directory = synthetic.write_checkpoint(tmp_path_factory.mktemp("browser"), **synthetic.CONFIGS["tiny"], seed=5)
    assert runner(["load", str(directory), "--name", MODEL]).exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(serve_app.create_app(db.resolve_dsn(dsn), model=MODEL),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    page.goto(url)
    page.wait_for_selector(".tok")
    yield page
    assert errors == [], f"console errors: {errors}"
    page.close()


def show(page, view):
    page.click(f'nav button[data-view="{view}"]')
    page.wait_for_selector(f'main[data-view="{view}"] section.panel')
    page.wait_for_load_state("networkidle")


def test_page_loads_labelled_random(page):
    assert page.is_visible("#random-label")
    assert page.input_value("#model") == MODEL


def test_shown_numbers_equal_the_sql_rows(page, conn):
    show(page, "next")
    sql = page.inner_text("main .sql pre")
    shown = [float(x) for x in page.locator("main section.panel").first.locator("tbody tr td:nth-child(5)").all_inner_texts()]
    # the displayed SQL is psql text (\set lines, then the query): run its query with the same parameters
    body = page.evaluate("""async () => {
        const r = await fetch('/api/panel/next-token?' + new URLSearchParams({prompt: document.getElementById('prompt').value,
            model: document.getElementById('model').value, temperature: 1, top_k: 0, top_p: 1, rows: 20}));
        return r.json(); }""")
    assert "gpt2.distribution" in sql and ":'prompt'" in sql
    with conn.transaction(force_rollback=True):
        rows = conn.execute(body["sql"], body["params"]).fetchall()
    assert len(shown) == len(rows)
    assert shown == pytest.approx([r[4] for r in rows], abs=1e-4)   # shown with 4 decimals


def test_clicking_a_token_moves_the_selection(page):
    show(page, "attention")
    page.click('.tok[data-pos="2"]')
    assert page.get_attribute(".tok.selected", "data-pos") == "2"
    assert "(2:" in page.inner_text("main section.panel:nth-of-type(2) .help")
    show(page, "scores")
    assert page.get_attribute(".scored span.selected", "data-pos") == "2"
    page.click('.scored span[data-pos="4"]')
    assert page.get_attribute(".tok.selected", "data-pos") == "4"


def test_bad_input_shows_a_message(page):
    page.fill("#prompt", "")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "empty" in page.inner_text("#error")
    # the browser logs the expected 400 itself; nothing else may be there
    assert [e for e in page.console_errors if "status of 400" in e] != []
    page.console_errors[:] = [e for e in page.console_errors if "status of 400" not in e]


def test_every_view_renders(page):
    out = os.environ.get("GPT2SQL_SCREENSHOTS")
    for view in VIEWS:
        show(page, view)
        if view == "whatif":
            page.fill('input[name="clean"]', "The cat sat")
            page.fill('input[name="corrupted"]', "The dog sat")
            page.fill('input[name="answer"]', " on")
            page.fill('input[name="wrong"]', " in")
            page.click("button:text-is(\"sweep\")")
            page.wait_for_selector("main canvas")
        if view == "next":
            page.click("button:text-is(\"generate\")")
            page.wait_for_selector('button:text-is("generate"):not([disabled])', timeout=60_000)
            assert page.locator(".generated .new").count() >= 1
        assert page.locator("main section.panel").count() >= 1
        if out:
            page.screenshot(path=str(Path(out) / f"serve-{view}.png"), full_page=False)
