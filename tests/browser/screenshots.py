"""Full-page screenshots of the demo in English and Simplified Chinese (`make screenshots`).

    python -m tests.browser.screenshots --url http://127.0.0.1:8000 --username admin --password P
    python -m tests.browser.screenshots        # starts its own `make run` in a temp dir

Saves home, job, deployment and device pages as `<out>/<lang>-<page>.png`. The
language is switched with the header's language menu, as a user does. Without
--url it waits until the demo rollout completed, shoots, and stops the run.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.demo import DemoRun, load_scale, log_in, wait_for

LANGUAGES = ("en", "zh-hans")
# page -> (how to find its URL: a list page and the first link in it, what shows it is drawn)
PAGES = {
    "home": (None, "#overview canvas[data-chart=by_version][data-ready]"),
    "job": (("/models/jobs/", "#jobs tbody a"), "#pareto-chart[data-ready]"),
    "deployment": (("/deployments/", "#deployments tbody a"), "#latency-chart[data-ready]"),
    "device": (("/devices/list/", "#device-table tbody a"), "#charts:not([data-points='0'])"),
}
# an htmx partial still showing its "Loading…" placeholder
LOADING = "[hx-trigger=load] > span.muted:only-child:has-text('…')"


def page_urls(page, base: str) -> dict[str, str]:
    urls = {}
    for name, (where, _ready) in PAGES.items():
        if where is None:
            urls[name] = base + "/"
            continue
        page.goto(base + where[0])
        urls[name] = base + page.locator(where[1]).first.get_attribute("href")
    return urls


def switch_language(page, code: str) -> None:
    """The header's language menu (a form that submits on change)."""
    if page.locator("html").get_attribute("lang") == code:
        return
    with page.expect_navigation():
        page.select_option("#lang-form select", code)
    assert page.locator("html").get_attribute("lang") == code


def shoot(page, base: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    urls = page_urls(page, base)
    saved = []
    for lang in LANGUAGES:
        page.goto(base + "/")
        switch_language(page, lang)
        for name, url in urls.items():
            page.goto(url)
            page.wait_for_selector(PAGES[name][1], state="attached")
            wait_for(lambda: page.locator(LOADING).count() == 0, 30, f"{name} to load")
            path = out / f"{lang}-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
    switch_language(page, "en")
    return saved


def _own_demo(var: Path) -> DemoRun:
    demo = DemoRun(var)
    demo.start()
    demo.wait_ready(600 * load_scale())
    return demo


def _completed(page, demo: DemoRun) -> bool:
    page.goto(demo.url + "/deployments/")
    status = page.locator("#deployments tbody .badge")  # none before the demo rollout starts
    return status.count() > 0 and status.first.inner_text().strip() == "Completed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running EdgeFleet (default: start `make run` in a temp dir)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password")
    p.add_argument("--out", type=Path, default=Path("/tmp/shots"))
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    demo = None
    with tempfile.TemporaryDirectory(prefix="edgefleet-shots-") as tmp:
        try:
            if args.url is None:
                demo = _own_demo(Path(tmp) / "var")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(60_000)
                if demo is not None:
                    demo.log_in(page)
                    wait_for(lambda: _completed(page, demo), 900 * load_scale(), "the rollout")
                    base = demo.url
                else:
                    base = args.url.rstrip("/")
                    log_in(page, base, args.username, args.password)
                for path in shoot(page, base, args.out):
                    print(path)
                browser.close()
        finally:
            if demo is not None:
                demo.stop(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
