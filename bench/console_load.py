"""Console first load on localhost, in Debian's headless Chromium with an empty cache each run: the
bytes of HTML + JS + CSS it fetches (and their gzip size, what a compressing proxy would send) and
the time until the sign-in form can be used. Baseline in the same run: the gateway's own Swagger UI
(/docs) until its "Authorize" button shows. Reported: medians and the console/docs ratio."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable

from playwright.sync_api import Page, Response, sync_playwright

from bench.harness import median, running_platform

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
RUNS, WARMUP = 10, 2


def first_load(page: Page, url: str, ready: Callable[[Page], None]) -> tuple[float, int, int]:
    """(ms from navigation start to usable, bytes, gzip bytes) of HTML, scripts and styles."""
    bodies: list[bytes] = []

    def keep(response: Response) -> None:
        if response.request.resource_type in ("document", "script", "stylesheet") and response.status == 200:
            bodies.append(response.body())

    page.on("response", keep)
    page.goto(url)
    ready(page)
    elapsed = float(page.evaluate("performance.now()"))
    page.wait_for_load_state("networkidle")
    return elapsed, sum(len(b) for b in bodies), sum(len(gzip.compress(b)) for b in bodies)


def main() -> None:
    with running_platform() as platform, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        results: dict[str, list[tuple[float, int, int]]] = {"console": [], "docs": []}
        cases: dict[str, tuple[str, Callable[[Page], None]]] = {
            "console": ("/ui/", lambda page: page.get_by_role("button", name="Sign in").wait_for()),
            "docs": ("/docs", lambda page: page.get_by_role("button", name="Authorize").wait_for()),
        }
        for i in range(WARMUP + RUNS):
            for name, (path, ready) in cases.items():  # alternate, so drift hits both alike
                context = browser.new_context(base_url=platform.gateway)  # empty cache
                measured = first_load(context.new_page(), path, ready)
                context.close()
                if i >= WARMUP:
                    results[name].append(measured)
        browser.close()
    summary = {}
    for name, rows in results.items():
        ms, size, packed = (median([r[k] for r in rows]) for k in range(3))
        summary[name] = ms
        print(f"{name:8s} usable after {ms:7.1f} ms median; {size / 1024:7.1f} KiB (gzip {packed / 1024:6.1f} KiB)")
    print(f"console / docs time to usable: {summary['console'] / summary['docs']:.2f}")


if __name__ == "__main__":
    main()
