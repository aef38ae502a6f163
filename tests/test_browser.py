"""A real browser (Debian's Chromium via Playwright): run, see the tree, click a node, inspect it."""

import os
import re
import shutil

import pytest

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("RV_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def page(server):
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(server, wait_until="load")  # a Gradio page keeps a connection open: never "network idle"
        page.locator("#run").wait_for(timeout=60_000)
        yield page
        browser.close()


def test_beam_search_click_a_node_and_inspect_it(page, artifacts_dir):
    # an example from the bundled gallery fills the question and its gold answer
    page.get_by_text("Level 3:").first.click()
    from playwright.sync_api import expect

    expect(page.locator("#question textarea")).to_have_value(re.compile("How many"), timeout=20_000)
    page.locator("#run").click()
    page.get_by_text("done").first.wait_for(timeout=120_000)
    markers = page.locator("#tree-plot .scatterlayer .trace .points path")
    assert markers.count() > 5, "the plot shows the tree's nodes"
    answer = page.locator("#answer").inner_text()
    assert "Answer:" in answer and "###" not in answer  # markdown is rendered, not shown raw
    # click the deepest node of the chosen path: it is ringed in blue and drawn last in its trace
    plot = page.locator("#tree-plot .js-plotly-plot").first
    plot.scroll_into_view_if_needed()  # the page may have scrolled while the search ran
    page.wait_for_timeout(300)
    node_id = page.evaluate("""() => {
        const gd = document.querySelector('#tree-plot .js-plotly-plot');
        const trace = gd.data.find(t => t.name === 'nodes');
        let best = 0, bestDepth = -1;
        trace.y.forEach((y, i) => { if (trace.marker.line.color[i] === '#1f4fd1' && -y > bestDepth) { bestDepth = -y; best = i; } });
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        window.__rvTarget = {x: box.left + xa.l2p(trace.x[best]), y: box.top + ya.l2p(trace.y[best]), id: trace.customdata[best]};
        return trace.customdata[best];
    }""")
    target = page.evaluate("() => window.__rvTarget")
    page.mouse.move(target["x"], target["y"])
    page.wait_for_timeout(300)
    page.mouse.click(target["x"], target["y"])
    page.locator("#node-bridge").get_by_text(f"Clicked node {node_id}").wait_for(timeout=20_000)
    inspector = page.locator("#inspector")
    inspector.get_by_text(f"node {node_id}").first.wait_for(timeout=20_000)
    text = inspector.inner_text()
    assert "Question." in text and "step score" in text
    assert text.count("Step ") >= 2, "the inspector shows the whole path, step by step"
    assert page.locator("#inspector .katex").count() > 0, "math is rendered with KaTeX"
    assert plot.is_visible()
    page.screenshot(path=str(artifacts_dir / "browser-beam-search.png"), full_page=True)
