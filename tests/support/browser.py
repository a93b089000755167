"""Debian's Chromium, headless, driven by Playwright (never a browser download), for tier-3 tests."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

from layerfusion_dev import bootstrap

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def chromium_page(viewport: tuple[int, int] = (2200, 1400)) -> Iterator[tuple[object, list[str]]]:
    """A fresh headless Chromium page (new profile) and the list its console errors collect into."""
    from playwright.sync_api import sync_playwright

    executable = bootstrap.chromium_path()
    if executable is None:
        raise RuntimeError(bootstrap.chromium_hint())
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="layerfusion-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = context.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
            yield page, errors
        finally:
            context.close()
