"""The study and demo pages in a real headless browser (Debian's chromium driven by playwright), with a
screenshot of each view (to docs/study/ with STABLENOISE_SCREENSHOTS=1, else to a temporary folder, so that a
test run leaves the repository as it was). Skipped, with the reason shown, without chromium or playwright."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from stablenoise.study.server import serve_in_thread, url
from stablenoise.study.store import Study

from .conftest import invoke, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = (Path(__file__).parents[2] / "docs" / "study" if os.environ.get("STABLENOISE_SCREENSHOTS")
         else Path(tempfile.mkdtemp(prefix="stablenoise-shots-")))

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[browser]')")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 600})
    yield context.new_page()
    context.close()


@pytest.fixture
def app(run_copy):
    result = invoke("study", "create", run_copy, "--pair", "most-stable:random", "--pair", "most-stable:least-stable")
    assert result.exit_code == 0, result.output
    study = Study(run_copy / "study.sqlite")
    with serving(study, 100) as address:
        yield study, address


def shown_pair(page) -> int:
    return int(page.locator("body").get_attribute("data-pair"))


def wait_for_next(page, previous: int) -> int:
    page.wait_for_function(f"document.body.dataset.pair !== '{previous}' || !document.getElementById('done-view').hidden")
    return shown_pair(page)


def test_vote_by_click_and_key_reload_resume_and_results(app, page):
    study, base = app
    page.goto(f"{base}/?rater=alice")
    page.wait_for_selector("#vote-view:not([hidden])")
    first = shown_pair(page)
    assert page.locator("#prompt").text_content() == study.pairs[first].prompt
    assert page.locator("#left-label").text_content() == ""  # no method before the vote
    assert page.evaluate("document.getElementById('left').naturalWidth") > 0  # the image loaded
    total = len(study.pairs)
    assert page.locator("#progress-text").text_content() == f"0 of {total} pairs judged"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "study-vote.png"))

    page.click("#vote-left")  # by click: the methods are revealed, then the next pair comes
    page.wait_for_function("document.getElementById('left-label').textContent !== ''")
    assert page.locator("#left-label").text_content() == study.pairs[first].side("left")[0]
    page.screenshot(path=str(SHOTS / "study-revealed.png"))
    second = wait_for_next(page, first)
    page.keyboard.press("ArrowRight")  # by key
    third = wait_for_next(page, second)
    page.keyboard.press("3")  # tie
    fourth = wait_for_next(page, third)
    votes = study.votes()
    assert [(v[0], v[1], v[2]) for v in votes] == [(first, "alice", "left"), (second, "alice", "right"),
                                                   (third, "alice", "tie")]
    assert all(v[3] == study.pairs[v[0]].side("left")[0] for v in votes)  # the order shown is stored

    page.reload()  # mid-study: the same rater resumes where they stopped
    page.wait_for_selector("#vote-view:not([hidden])")
    assert shown_pair(page) == fourth
    assert page.locator("#progress-text").text_content() == f"3 of {total} pairs judged"
    page.goto(base + "/")  # the rater id is kept by the browser without ?rater=
    page.wait_for_selector("#vote-view:not([hidden])")
    assert shown_pair(page) == fourth and page.locator("#who").text_content() == "rater: alice"

    current = fourth
    while True:  # the rest by the "b" key (both bad)
        page.keyboard.press("b")
        nxt = wait_for_next(page, current)
        if not page.locator("#done-view").is_hidden():
            break
        current = nxt
    assert len(study.votes()) == total and len({v[0] for v in study.votes()}) == total
    page.screenshot(path=str(SHOTS / "study-done.png"))

    page.goto(base + "/results")
    page.wait_for_selector("#results-view:not([hidden])")
    rows = page.locator("#results table").first.locator("tr")
    expected = json.loads(page.evaluate("fetch('/api/results').then(r => r.text())"))
    for i, c in enumerate(expected["comparisons"], start=1):
        cells = rows.nth(i).locator("td").all_text_contents()
        ci = c["win_rate"]
        assert cells[0] == c["comparison"] and cells[1] == str(c["votes"])
        assert cells[6] == f"{100 * ci['mean']:.1f}% [{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]"
    # The stored votes give that win rate: A's wins plus half the ties and both-bads, over the votes.
    first_c = expected["comparisons"][0]
    mine = [v for v in study.votes() if study.pairs[v[0]].comparison == first_c["comparison"]]
    a = first_c["a"]
    wins = sum(1 for v in mine if v[2] in ("left", "right") and (v[3] if v[2] == "left" else v[4]) == a)
    halves = sum(1 for v in mine if v[2] in ("tie", "bad"))
    assert first_c["win_rate"]["mean"] == pytest.approx((wins + halves / 2) / len(mine))
    page.screenshot(path=str(SHOTS / "study-results.png"), full_page=True)


def test_two_raters_in_two_browsers_keep_their_own_progress(app, browser):
    study, base = app
    pages = [browser.new_context().new_page() for _ in range(2)]
    for p, rater in zip(pages, ("ann", "bob")):
        p.goto(f"{base}/?rater={rater}")
        p.wait_for_selector("#vote-view:not([hidden])")
    shown = [shown_pair(p) for p in pages]
    for p in pages:
        p.click("#vote-right")
    for p, before in zip(pages, shown):
        wait_for_next(p, before)
    assert sorted((v[0], v[1]) for v in study.votes()) == sorted(zip(shown, ("ann", "bob")))
    for p in pages:
        p.context.close()


@pytest.fixture(scope="module")
def demo_app():
    from stablenoise import load
    from stablenoise.study.demo import Demo, demo_server

    server = demo_server(Demo(load("shapes"), steps=2))
    serve_in_thread(server)
    yield url(server)
    server.shutdown()
    server.server_close()


def test_demo_orders_candidates_by_stability_and_optimizes_with_a_live_curve(demo_app, page):
    page.goto(demo_app + "/")
    page.fill("#prompt", "a red square")
    page.fill("#k", "6")
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    captions = page.locator("#grid figcaption").all_text_contents()
    assert len(captions) == 6
    scores = [float(c.rsplit("· ", 1)[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert page.locator("#most-caption").text_content().endswith(f"{scores[0]:.4f}")
    assert page.locator("#least-caption").text_content().endswith(f"{scores[-1]:.4f}")
    page.screenshot(path=str(SHOTS / "demo-candidates.png"), full_page=True)

    page.fill("#opt-iterations", "3")
    page.click("#opt-go")
    page.wait_for_function("document.body.dataset.optimized === '1'", timeout=240_000)
    status = page.locator("#opt-status").text_content()
    assert status.startswith("iteration 3 of 3") and status.endswith("done")
    assert page.locator("#error").text_content() == ""
    page.locator("#opt-form").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "demo-optimize.png"), full_page=True)
