"""ComfyUI's real frontend in headless Chromium: the pack's workflow (a) loads with no missing node
types and no console errors of its own, runs, and the extension draws its checkerboard preview,
which comes back when the frontend restores its outputs (a reload). Each test runs against the
host's own frontend and against the one current ComfyUI ships (comfyui-frontend-package 1.58.1,
through --front-end-root). The slow tier (`make test-all`): without chromium (or the second
frontend) each test fails with one line saying how to get it (`make browser`), never a skip."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from layerfusion_dev import bootstrap
from layerfusion_dev.comfy_server import ComfyServer
from layerfusion_dev.paths import current_frontend_args
from layerfusion_dev.ui_workflows import api_to_ui
from layerfusion_dev.workflows import load_api, on_tiny_model
from support.browser import chromium_page

pytestmark = pytest.mark.slow  # a browser per test, a server per frontend (and a stock one per baseline)

LIGHT, DARK = (255, 255, 255), (189, 189, 189)  # the checkerboard's two squares (#ffffff, #bdbdbd)
FRAME = 8  # px of checkerboard around each RGBA preview


def open_comfy(page, server) -> None:
    page.goto(server.url, wait_until="networkidle", timeout=180_000)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=180_000)
    page.wait_for_timeout(1500)  # let the frontend finish its start-up requests


def normalized(errors: list[str], server) -> set[str]:
    """Console errors without the port and stack traces, so two servers' pages compare."""
    return {re.sub(r"127\.0\.0\.1:\d+", "HOST", e.splitlines()[0]) for e in errors}


FRONTENDS = {"host frontend": ("server", lambda: []), "frontend 1.58.1": ("current_frontend_server", current_frontend_args)}


@pytest.fixture(params=list(FRONTENDS))
def frontend(request):
    """(the pack's server, the arguments that choose its frontend) for each frontend; (None, why)
    when this machine cannot run it (no server is started then): `ready` fails the test with why."""
    fixture, args = FRONTENDS[request.param]
    problem = bootstrap.browser_problem(frontend=fixture == "current_frontend_server")
    if problem:
        return None, problem
    return request.getfixturevalue(fixture), args()


def ready(frontend) -> tuple[ComfyServer, list[str]]:
    """The frontend fixture's server and arguments; a failure of one line (how to get chromium or
    the frontend: `make browser`) when the browser tests cannot run here. Never a skip."""
    server, extra_args = frontend
    if server is None:
        pytest.fail(extra_args, pytrace=False)
    return server, extra_args


def stock_errors(extra_args: list[str]) -> set[str]:
    """What ComfyUI's own frontend logs on this offline machine without the pack (user.css 404s,
    an unreachable release server, ...): the baseline the pack's page is held to."""
    with ComfyServer(test_nodes=False, pack=False, extra_args=extra_args) as stock, chromium_page() as (page, errors):
        open_comfy(page, stock)
        return normalized(errors, stock)


PREVIEW_LOADED = "() => { const i = document.querySelector('.layerfusion-checkerboard img'); return i && i.complete && i.naturalWidth > 0; }"


def test_workflow_a_runs_in_the_browser_and_the_rgba_preview_shows_a_checkerboard(frontend):
    server, extra_args = ready(frontend)
    baseline = stock_errors(extra_args)
    workflow = api_to_ui(on_tiny_model(load_api("layerfusion"), size=64, steps=3), server.object_info())
    with chromium_page() as (page, errors):
        open_comfy(page, server)
        assert "LayerFusion.Previews" in page.evaluate("() => window.app.extensions.map(e => e.name)")
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        types = sorted({node["type"] for node in workflow["nodes"]})
        assert page.evaluate("(types) => types.filter(t => !window.LiteGraph.registered_node_types[t])", types) == []
        assert page.evaluate("() => window.app.graph._nodes.length") == len(workflow["nodes"])
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function(PREVIEW_LOADED, timeout=600_000)
        page.evaluate("""() => {
            const node = window.app.graph._nodes.find(n => n.type === 'LayerFusionTransparentDecode');
            window.app.canvas.ds.scale = 1.5;
            window.app.canvas.centerOnNode(node);
            window.app.graph.setDirtyCanvas(true, true);
        }""")
        page.wait_for_timeout(1000)
        tile = page.locator(".layerfusion-checkerboard").first
        tile.wait_for(state="visible", timeout=30_000)
        png = tile.screenshot()
        if os.environ.get("LAYERFUSION_SCREENSHOTS"):  # for a person to look at
            page.screenshot(path=os.path.join(os.environ["LAYERFUSION_SCREENSHOTS"], "workflow_a.png"))
            with open(os.path.join(os.environ["LAYERFUSION_SCREENSHOTS"], "rgba_preview.png"), "wb") as file:
                file.write(png)
        shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

        # a reload: the page starts again, the workflow is loaded, and the frontend hands back the
        # outputs it kept (its nodeOutputs setter, which calls the extensions' onNodeOutputsUpdated)
        kept = page.evaluate("() => JSON.parse(JSON.stringify(window.app.nodeOutputs))")
        shown = [e["filename"] for output in kept.values() for e in output.get("layerfusion_rgba", [])]
        assert shown, kept
        page.reload(wait_until="networkidle", timeout=180_000)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        page.evaluate("(kept) => { window.app.nodeOutputs = kept; }", kept)
        page.wait_for_function(PREVIEW_LOADED, timeout=60_000)
        restored = page.evaluate("() => Array.from(document.querySelectorAll('.layerfusion-checkerboard img')).map(i => i.src)")
        new_errors = normalized(errors, server) - baseline
    frame = np.concatenate([shot[:FRAME].reshape(-1, 3), shot[-FRAME:].reshape(-1, 3)])
    near = lambda colour: (np.abs(frame - colour).max(axis=1) <= 12).mean()  # noqa: E731
    assert near(LIGHT) > 0.25 and near(DARK) > 0.25, (near(LIGHT), near(DARK))  # both squares of the checkerboard
    assert sorted(name for name in shown if any(name in src for src in restored)) == sorted(shown), (shown, restored)
    assert not new_errors, new_errors


HOSTILE = '"><img src=x onerror="window.__layerfusion_pwned=1"><b class="injected">x</b>'


def test_the_extension_inserts_no_html_from_execution_messages(frontend):
    """File names in a node's execution message (which a custom filename_prefix or another pack can
    shape) reach the page only as URL parameters, never as markup."""
    server, _args = ready(frontend)
    with chromium_page() as (page, _errors):
        open_comfy(page, server)
        found = page.evaluate("""(hostile) => {
            const results = {};
            for (const [type, key, entry, widget] of [
                ['LayerFusionTransparentDecode', 'layerfusion_rgba', {filename: hostile, subfolder: hostile, type: 'temp'}, 'layerfusion_preview'],
                ['LayerFusionMasks', 'layerfusion_masks', {soft: {filename: hostile, subfolder: '', type: 'temp'},
                                                         blend: {filename: hostile, subfolder: hostile, type: 'temp'}}, 'layerfusion_preview'],
                ['LayerFusionSaveLayers', 'layerfusion_files', {filename: hostile, subfolder: hostile, type: 'output'}, 'layerfusion_files'],
            ]) {
                const node = window.LiteGraph.createNode(type);
                window.app.graph.add(node);
                node.onExecuted({[key]: [entry]});
                const box = node.widgets.find(w => w.name === widget).element;
                results[type] = {
                    injected: box.querySelectorAll('.injected, [onerror]').length,
                    images: Array.from(box.querySelectorAll('img, a')).map(i => i.getAttribute('src') ?? i.getAttribute('href')),
                    text: box.textContent,
                    links: Array.from(box.querySelectorAll('a')).map(a => a.textContent),
                };
            }
            return results;
        }""", HOSTILE)
        page.wait_for_timeout(500)  # any onerror handler would have run by now
        pwned = page.evaluate("() => window.__layerfusion_pwned === 1")
    assert not pwned
    for node_type, seen in found.items():
        assert seen["injected"] == 0, (node_type, seen)
        # text only where the node lists file names, and then the name itself, as text
        assert seen["text"] == ("".join(seen["links"]) if seen["links"] else ""), (node_type, seen)
        assert all(link == f"{HOSTILE}/{HOSTILE}" for link in seen["links"]), seen
        assert seen["images"] and all(src.startswith(("/view?", "/api/view?")) or "/view?" in src for src in seen["images"]), seen
        assert all("%3Cimg" in src and "<" not in src for src in seen["images"]), seen  # the name only URL-encoded


def test_the_layered_files_a_run_saved_are_listed_on_the_node(frontend):
    """The workflow that ends in a layered file, run in the browser: LayerFusion Save Layers lists
    the PSD and OpenRaster files it wrote, each a link the server serves (the file itself)."""
    import urllib.request

    server, _args = ready(frontend)
    graph = on_tiny_model(load_api("layerfusion_layered_file"), size=64, steps=2)
    graph["sample"]["inputs"]["seed"] = 4242  # not served from the cache of another test
    workflow = api_to_ui(graph, server.object_info())
    with chromium_page() as (page, _errors):
        open_comfy(page, server)
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function("() => document.querySelectorAll('.layerfusion-file').length >= 2", timeout=600_000)
        links = page.evaluate("""() => Array.from(document.querySelectorAll('.layerfusion-file'))
            .map(a => ({text: a.textContent, href: a.href, visible: a.getBoundingClientRect().height > 0}))""")
    assert sorted(link["text"].rsplit(".", 1)[1] for link in links) == ["ora", "psd"], links
    assert all(link["text"].startswith("LayerFusion/layers_") and link["visible"] for link in links), links
    for link in links:
        with urllib.request.urlopen(link["href"], timeout=30) as response:
            data = response.read()
        if link["text"].endswith(".psd"):
            assert data[:4] == b"8BPS", link
        else:  # a zip whose first entry is the uncompressed mimetype (OpenRaster's rule)
            assert data[:4] == b"PK\x03\x04" and data[30:38] == b"mimetype" and data[38:54] == b"image/openraster", link
