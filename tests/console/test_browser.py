"""The console in a real headless Chromium (Debian's, driven by Playwright) against the running
platform: sign in, theme, streamed chat, live job status, models, batches, keys and tenancy. Every
test leaves a screenshot under the test output (CONSOLE_SCREENSHOTS=DIR keeps them somewhere else)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import EMBEDDING_MODEL, IMAGE_MODEL, TEXT_MODEL
from tests.console.conftest import PullSource, User
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


def test_pulling_a_model_shows_its_progress_live(page: Page, platform: Platform, pull_source: PullSource) -> None:
    name = f"console-pull-{uuid.uuid4().hex[:6]}"
    admin_in(page, platform)
    page.get_by_role("link", name="Models").click()
    page.get_by_label("Source (empty: a catalog model)").fill(pull_source.url)
    page.get_by_label("Name", exact=True).fill(name)
    pick(page, "pull-task", "embedding")
    # every status and progress text the pull shows, as the page shows them (pushed by the event stream, no reload)
    page.evaluate(
        """() => {
            window.pullTexts = []
            window.pullStatuses = []
            new MutationObserver(() => {
                const line = document.querySelector('[data-testid=pull-detail]')
                if (line && line.textContent !== window.pullTexts.at(-1)) window.pullTexts.push(line.textContent)
                const tag = document.querySelector('[data-pull] [data-status]')
                const status = tag && tag.getAttribute('data-status')
                if (status && status !== window.pullStatuses.at(-1)) window.pullStatuses.push(status)
            }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true })
        }"""
    )
    page.get_by_role("button", name="Pull").click()
    pull = page.locator("[data-pull]").first
    try:
        pull.locator('[data-status="completed"]').wait_for(timeout=WAIT_MS)
        page.get_by_test_id("models-table").get_by_role("cell", name=name, exact=True).wait_for()
        texts: list[str] = page.evaluate("window.pullTexts")
        statuses: list[str] = page.evaluate("window.pullStatuses")
        # live: the pull was shown unfinished and the page moved it on by itself (the pool worker takes a
        # queued download within its poll, so a state before `completed` is always on the page first)
        assert len(statuses) >= 2 and statuses[-1] == "completed", statuses
        # how many progress steps between 0% and 100% the page catches depends on how fast this machine
        # copies 96 MB against the event stream's looks (a fast disk: none); those it shows go forward and
        # say what was done of what
        percents = [int(m.group(1)) for t in texts if (m := re.search(r"(\d+)%$", t))]
        assert percents == sorted(percents), texts
        phases = "fetching|verifying and installing"
        line = re.compile(rf"^({phases}) · [\d.]+ [KMG]?B of 96\.0 MB · \d of 4 files · \d+%$")
        assert all(line.match(t) for t in texts[:-1] if t), texts
        assert texts[-1] == "installed · 96.0 MB of 96.0 MB · 4 of 4 files · 100%", texts
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


def test_an_image_jobs_detail_shows_its_images_without_a_key_in_the_page(page: Page, platform: Platform) -> None:
    accepted = platform.client().post(
        "/api/v1/tasks", json={"type": "image", "params": {"prompt": "a kite", "width": 64, "height": 64, "seed": 9}}
    )
    assert accepted.status_code == 202, accepted.text
    admin_in(page, platform)
    page.goto(f"/ui/jobs/{accepted.json()['id']}")
    image = page.get_by_role("img", name=re.compile(r"^Image 1 of job "))
    image.wait_for(timeout=WAIT_MS)  # the page reads the job again as its live events arrive
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    src = image.get_attribute("src") or ""
    assert src.startswith("/api/v1/results/signed/jobs/admin/") and "sig=" in src
    assert platform.admin_key not in page.content()


# -- accounts: roles and usage per day


def test_an_admin_changes_a_role_and_reads_usage_per_user_and_key(
    page: Page, browser: Browser, platform: Platform, users: dict[str, User]
) -> None:
    admin = platform.client()
    name = f"role-{uuid.uuid4().hex[:6]}"
    assert admin.post("/api/v1/users", json={"username": name}).status_code == 201
    key = admin.post("/api/v1/auth/keys", json={"username": name, "name": "daily"}).json()["key"]
    body = {"model": TEXT_MODEL, "prompt": "Hi", "max_tokens": 2}
    for who in (key, users["alice"].key):
        assert platform.client(key=who).post("/v1/completions", json=body).status_code == 200
    admin_in(page, platform)
    page.get_by_role("link", name="Keys & usage").click()
    role = page.get_by_role("combobox", name=f"Role of {name}")
    role.click()
    page.get_by_role("option", name="admin", exact=True).click()
    page.get_by_text(f"{name} is now an admin").wait_for()
    assert {u["username"]: u["role"] for u in admin.get("/api/v1/users").json()}[name] == "admin"
    role.click()
    page.get_by_role("option", name="user", exact=True).click()
    page.get_by_text(f"{name} is now a user").wait_for()

    daily = page.get_by_test_id("daily-usage")
    daily.get_by_role("cell", name="daily (", exact=False).wait_for()  # the key's own row, by its name
    users_shown = set(daily.locator("tbody tr td:nth-child(2)").all_inner_texts())
    assert {name, users["alice"].username} <= users_shown  # an admin sees everyone's

    context = browser.new_context(base_url=platform.gateway, viewport={"width": 1366, "height": 768})
    tab = context.new_page()
    try:
        sign_in_with_key(tab, users["alice"].key)
        tab.get_by_role("link", name="Keys & usage").click()
        mine = tab.get_by_test_id("daily-usage")
        mine.locator("tbody tr td:nth-child(2)").first.wait_for()
        assert set(mine.locator("tbody tr td:nth-child(2)").all_inner_texts()) == {users["alice"].username}
        assert tab.get_by_role("combobox", name=re.compile("^Role of ")).count() == 0  # no roles for a user
    finally:
        context.close()


# -- sessions that end while the console is open


def test_a_revoked_key_lands_on_sign_in_with_a_readable_message(
    page: Page, platform: Platform, users: dict[str, User]
) -> None:
    admin = platform.client()
    made = admin.post("/api/v1/auth/keys", json={"username": users["alice"].username, "name": "to-revoke"}).json()
    sign_in_with_key(page, made["key"])
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("status").filter(has_text="live").wait_for()
    assert admin.delete(f"/api/v1/auth/keys/{made['id']}").status_code == 200
    # no click needed: the live stream re-checks the key (every 10 s) and says goodbye
    page.wait_for_url(re.compile(r"/ui/login\?next=(/|%2F)jobs"), timeout=40_000)
    notice = page.get_by_test_id("session-notice")
    assert notice.inner_text().startswith("Your session has ended: it expired, or its key was revoked")
    page.wait_for_function("el => getComputedStyle(el).opacity === '1'", arg=notice.element_handle())  # shown
    assert "{" not in page.locator("body").inner_text()  # no raw JSON


def test_an_expired_login_lands_on_sign_in_and_back_where_it_was(page: Page, platform: Platform) -> None:
    from bitinglip.auth.credentials import issue_token

    # a login token as the gateway issues them (its own secret), with a life of seconds, not minutes
    token = issue_token("admin", "admin", platform.settings.secret("jwt_secret"), ttl_s=6)
    page.goto("/ui/login")
    page.evaluate("token => sessionStorage.setItem('bitinglip.credential', token)", token)
    page.goto("/ui/batches")
    page.get_by_role("heading", name="Batches", exact=True).wait_for()
    page.wait_for_url(re.compile(r"/ui/login\?next=(/|%2F)batches"), timeout=20_000)
    notice = page.get_by_test_id("session-notice").inner_text()
    assert re.fullmatch(r"Your session expired at .+\. Sign in again\.", notice), notice
    assert "{" not in page.locator("body").inner_text()
    page.get_by_role("button", name="API key", exact=True).click()
    page.get_by_role("textbox", name="API key", exact=True).fill(platform.admin_key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/ui/batches$"))
    page.get_by_role("heading", name="Batches", exact=True).wait_for()


# -- a laptop screen and a keyboard


def test_keyboard_only_sign_in(page: Page, platform: Platform) -> None:
    """Tab to the key mode, Enter, type, Enter: no mouse. Then on to a page by keyboard too."""
    page.goto("/ui/login")
    # the sign-in form, not the app's frame that shows while the console checks for a session: tabbing
    # through that frame's links before it gives way is not what a keyboard user meets
    page.get_by_role("button", name="API key").wait_for()
    page.get_by_role("link", name="Dashboard").wait_for(state="detached")
    names = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.innerText || document.activeElement.getAttribute('aria-label')")
        names.append(focused)
        if focused == "API key":
            break
    else:
        raise AssertionError(f"Tab never reached the API key button; focus went {names}")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "api-key"  # the cursor is in the key's field
    page.keyboard.type(platform.admin_key)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Dashboard").wait_for()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Jobs":
            break
    else:
        raise AssertionError("Tab never reached the Jobs link")
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()


LAPTOP = {"width": 1024, "height": 640}
MAIN_PAGES = ("Dashboard", "Playground", "Jobs", "Batches", "Models", "Workers", "Keys & usage")

UNLABELLED = """() => {
    const shown = el => el.getClientRects().length > 0 && !el.closest('[aria-hidden=true]')
    const text = id => (document.getElementById(id)?.textContent ?? '').trim()
    const named = el =>
        (el.getAttribute('aria-label') ?? '').trim() ||
        (el.getAttribute('aria-labelledby') ?? '').split(/\\s+/).map(text).join('').trim() ||
        [...(el.labels ?? [])].map(l => l.textContent.trim()).join('') ||
        (el.getAttribute('title') ?? '').trim() ||
        (['BUTTON', 'A'].includes(el.tagName) || el.getAttribute('role') === 'button' ? el.textContent.trim() : '')
    const controls = [
        'input:not([type=hidden])', 'select', 'textarea', 'button', 'a[href]',
        '[role=combobox]', '[role=button]', '[role=checkbox]', '[role=switch]',
    ].join(', ')
    return [...document.querySelectorAll(controls)].filter(shown).filter(el => !named(el))
        .map(el => el.outerHTML.slice(0, 160))
}"""

LAYOUT = """() => {
    const view = { width: window.innerWidth, height: window.innerHeight }
    const box = el => el.getBoundingClientRect()
    const shown = el => el.getClientRects().length > 0 && !el.closest('[aria-hidden=true]')
    const label = el => (el.getAttribute('aria-label') || el.textContent).trim().slice(0, 60)
    const nav = document.querySelector('nav[aria-label=Main]')
    const main = document.querySelector('main')
    const offScreen = [...nav.querySelectorAll('a'), ...document.querySelectorAll('header button')]
        .filter(el => { const b = box(el); return b.left < 0 || b.right > view.width || b.width === 0 })
        .map(label)
    // cut off: a control or a table cell past the screen's edge or outside a box that clips it
    const cut = el => {
        const b = box(el)
        if (b.left < -1 || b.right > view.width + 1) return true
        for (let p = el.parentElement; p && p !== main; p = p.parentElement) {
            if (getComputedStyle(p).overflowX === 'visible') continue
            const c = box(p)
            if (b.left < c.left - 1 || b.right > c.right + 1) return true
        }
        return false
    }
    const parts = 'button, a[href], input:not([type=hidden]), [role=combobox], td, th'
    const clipped = [...main.querySelectorAll(parts)].filter(shown).filter(cut).map(label)
    const n = box(nav), m = box(main)
    const overlap = !(n.right <= m.left + 1 || n.bottom <= m.top + 1)
    return { pageScrollsSideways: document.documentElement.scrollWidth > view.width, offScreen, clipped, overlap }
}"""


def test_a_laptop_screen_keeps_navigation_and_pages_usable(page: Page, platform: Platform, shots: Path) -> None:
    """At 1024x640: every page fits the width (wide tables scroll inside their panel), the navigation
    and the top bar stay on screen beside the content, and every control has a name."""
    page.set_viewport_size(LAPTOP)
    # something in the tables: a job (with its cancel button while it waits)
    job = {"params": {"model": TEXT_MODEL, "prompt": "Write a long story.", "max_tokens": 64}}
    assert platform.client().post("/api/v1/tasks", json=job).status_code == 202
    admin_in(page, platform)
    for title in MAIN_PAGES:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=title).click()
        heading = page.get_by_role("heading", name="Dashboard" if title == "Dashboard" else title, exact=True)
        heading.first.wait_for()
        page.wait_for_timeout(1000)  # its lists arrive (no network-idle moment: the live stream stays open)
        layout = page.evaluate(LAYOUT)
        assert layout == {"pageScrollsSideways": False, "offScreen": [], "clipped": [], "overlap": False}, (
            title,
            layout,
        )
        assert page.evaluate(UNLABELLED) == [], title
        page.screenshot(path=str(shots / f"laptop-{title.split()[0].lower()}.png"))
