"""The web page in a real headless Chromium against a real `slmops serve` with SmolLM2.

One server and one browser for the module; each test drives one view and saves a
screenshot (PNG) under $SLMOPS_UI_SCREENSHOTS, or a temporary folder it prints.
"""

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.support.ui import Select

from slmops.cache import store
from tests.server_process import ServerProcess
from tests.ui_browser import Browser, missing
from tests.ui_fixtures import CHECKS, deployed_folder

pytestmark = pytest.mark.slow
DEPLOYED, COPY = "smollm2-deployed", "smollm2-copy"
HTML_ANSWER = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script> **bold**"
LONG_PROMPT = "Write a very long story about a lighthouse keeper, with many chapters."
TABLE = (
    "return [...document.querySelectorAll('#models-table tr')].map((row) => [...row.cells].map((c) => c.textContent))"
)
DETAILS = """
  const row = [...document.querySelectorAll('#models-table tr')].find((row) => row.cells[0].textContent === arguments[0]);
  [...row.querySelectorAll('button')].find((button) => button.textContent === 'Details').click();
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SLMOPS_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_int4):
    if missing():
        pytest.fail(missing())
    home = tmp_path_factory.mktemp("ui-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_HOME", str(home))
        folder = deployed_folder(smollm2_int4, tmp_path_factory.mktemp("ui-models") / DEPLOYED, DEPLOYED)
        store.add(folder, name=DEPLOYED, link=True)
        store.add(smollm2_int4, name=COPY, link=True)
    # info: the cancellation is logged at that level
    server = ServerProcess(home, DEPLOYED, "--threads", "2", "--parallel", "2", "--log-level", "info").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(server):
    browser = Browser()
    browser.driver.get(server.url + "/")
    yield browser
    browser.close()


def view(browser: Browser, name: str) -> None:
    browser.find(f'.tab[data-view="{name}"]').click()


def setting(browser: Browser, field: str, value: str) -> None:
    box = browser.find(f"#set-{field}")
    box.clear()
    if value:
        box.send_keys(value)


def ask(browser: Browser, text: str) -> None:
    before = len(browser.find_all(".message.assistant"))
    browser.find("#chat-input").send_keys(text)
    browser.find("#chat-send").click()
    browser.wait_for(lambda: len(browser.find_all(".message.assistant")) > before, 10, "the answer to start")


def last_answer(browser: Browser):
    return browser.find_all(".message.assistant")[-1]


def finished(browser: Browser) -> str:
    """The last answer's speed line once it is complete."""
    stats = last_answer(browser).find_element("css selector", ".stats").text
    done = ("tokens/s" in stats and " out" in stats) or "Error" in stats or "stopped" in stats
    return stats if done else ""


def test_the_page_loads_and_lists_the_served_model(browser):
    browser.wait_for(lambda: len(browser.find_all("#model-list .model-item")) == 2, 20, "the model list")
    items = {item.find_element("css selector", ".model-name").text: item for item in browser.find_all(".model-item")}
    assert set(items) == {DEPLOYED, COPY}
    assert items[DEPLOYED].find_element("css selector", ".badge").text == "loaded"
    assert browser.find("#chat-model").get_attribute("value") == DEPLOYED  # the loaded one is picked
    assert browser.errors() == []


def test_a_question_streams_into_the_page_with_its_speed(browser, shots):
    setting(browser, "max-tokens", "96")
    setting(browser, "temperature", "0")
    ask(browser, "Write a short story about a lighthouse keeper.")
    lengths = []
    deadline = time.monotonic() + 60
    while not finished(browser) and time.monotonic() < deadline:
        lengths.append(len(last_answer(browser).find_element("css selector", ".body").text))
        time.sleep(0.05)
    stats = browser.wait_for(lambda: finished(browser), 60, "the speed line")
    growth = sorted(set(length for length in lengths if length > 0))
    assert len(growth) >= 3, f"the answer did not grow over time: {lengths}"
    assert lengths == sorted(lengths)
    assert "TTFT" in stats and "tokens/s" in stats and " in / " in stats
    assert stats.endswith(("stop", "length"))
    browser.screenshot(shots / "chat.png")


def test_a_question_is_edited_and_resent(browser):
    first_user = browser.find_all(".message.user")[0]
    first_user.find_element("css selector", "button").click()
    box = browser.find(".edit-box")
    box.clear()
    box.send_keys("Name one colour.")
    browser.find(".edit-buttons button").click()
    browser.wait_for(lambda: finished(browser), 60, "the resent answer")
    users = [node.text for node in browser.find_all(".message.user .body")]
    assert users == ["Name one colour."] and len(browser.find_all(".message.assistant")) == 1


def test_stop_cancels_a_long_answer_and_the_server_logs_it(browser, server):
    setting(browser, "max-tokens", "1500")
    browser.find("#chat-clear").click()
    ask(browser, LONG_PROMPT)
    body = last_answer(browser).find_element("css selector", ".body")
    browser.wait_for(lambda: len(body.text) > 40, 60, "the long answer to start")
    browser.find("#chat-stop").click()
    stats = browser.wait_for(lambda: "stopped" in finished(browser) and finished(browser), 10, "the stop")
    assert "TTFT" in stats and "tokens/s" in stats, stats
    browser.wait_for(lambda: "cancelled an answer after" in server.log_tail(20000), 15, "the cancellation in the log")
    browser.wait_for(lambda: httpx.get(server.url + "/health").json()["active"] == 0, 15, "the slot to free")
    assert not browser.find("#chat-send").get_attribute("disabled")


def test_html_in_an_answer_is_shown_as_text(browser, shots):
    """A JSON schema with one allowed string makes the model answer exactly that HTML."""
    setting(browser, "max-tokens", "96")
    setting(browser, "schema", json.dumps({"type": "string", "enum": [HTML_ANSWER]}))
    browser.find("#chat-clear").click()
    ask(browser, "Say something.")
    browser.wait_for(lambda: finished(browser), 60, "the schema-bound answer")
    setting(browser, "schema", "")
    shown = last_answer(browser).find_element("css selector", ".body").text
    assert "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>" in shown
    assert browser.find_all("#messages img, #messages script") == []
    assert browser.driver.execute_script("return window.pwned === undefined")
    assert browser.find_all("#messages strong")[-1].text == "bold"  # Markdown still renders
    browser.screenshot(shots / "chat-html-as-text.png")


def test_a_required_tool_call_is_shown_with_its_arguments(browser):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]},
        },
    }
    setting(browser, "tools", json.dumps([tool]))
    Select(browser.find("#set-tool-choice")).select_by_visible_text("required")
    browser.find("#chat-clear").click()
    ask(browser, "What is the weather in Paris?")
    stats = browser.wait_for(lambda: finished(browser), 60, "the tool call")
    setting(browser, "tools", "")
    Select(browser.find("#set-tool-choice")).select_by_visible_text("auto")
    browser.driver.execute_script("document.getElementById('settings').scrollTop = 0")
    assert stats.endswith("tool_calls"), stats
    call = last_answer(browser).find_element("css selector", ".code-block code").text
    assert call.startswith("get_weather({") and json.loads(call[len("get_weather(") : -1])["city"] in ("Paris", "Rome")


def test_the_markdown_renderer_makes_only_safe_nodes(browser):
    sample = "\n".join(
        [
            "# Title <i>x</i>",
            "- one `a<b`",
            "- [ok](https://example.com/x) [bad](javascript:alert(1))",
            "",
            "```python",
            "print('<script>')",
            "```",
            "<b onclick=alert(1)>raw</b>",
        ]
    )
    result = browser.driver.execute_async_script(
        """
        const [text, done] = arguments;
        import("/ui/static/markdown.js").then((markdown) => {
          const box = document.createElement("div");
          box.append(markdown.render(text));
          done({
            tags: [...box.querySelectorAll("*")].map((node) => node.tagName.toLowerCase()),
            links: [...box.querySelectorAll("a")].map((node) => node.href),
            code: box.querySelector("pre code").textContent,
            copy: box.querySelector(".code-block button").textContent,
            text: box.textContent,
          });
        });
        """,
        sample,
    )
    assert set(result["tags"]) <= {"h3", "ul", "li", "code", "a", "div", "button", "pre", "p"}
    assert result["links"] == ["https://example.com/x"]
    assert result["code"] == "print('<script>')" and result["copy"] == "Copy"
    assert "Title <i>x</i>" in result["text"] and "<b onclick=alert(1)>raw</b>" in result["text"]
    assert "[bad](javascript:alert(1))" in result["text"]


def test_compare_shows_two_answers_with_their_speeds(browser, shots):
    view(browser, "compare")
    Select(browser.find("#compare-left")).select_by_visible_text(DEPLOYED)
    Select(browser.find("#compare-right")).select_by_visible_text(COPY)
    browser.find("#compare-input").send_keys("Name three fruits.")
    browser.find("#compare-send").click()

    def both():
        stats = [browser.find(f"#compare-{side}-stats").text for side in ("left", "right")]
        return stats if all(" out" in line or "Error" in line for line in stats) else None

    stats = browser.wait_for(both, 90, "both answers")  # the right one loads its model first
    assert all("tokens/s" in line for line in stats), stats
    assert browser.find("#compare-left-answer").text and browser.find("#compare-right-answer").text
    assert [browser.find(f"#compare-{side}-name").text for side in ("left", "right")] == [DEPLOYED, COPY]
    browser.screenshot(shots / "compare.png")


def test_models_view_shows_the_cache_with_states(browser, shots):
    view(browser, "models")
    browser.find("#refresh-models").click()

    def rows():  # read in one go: the table is redrawn whenever the list refreshes
        found = browser.driver.execute_script(TABLE)
        return found if len(found) == 2 and all(row[4] == "loaded" for row in found) else None

    table = browser.wait_for(rows, 20, "both models loaded in the table")
    assert [row[0] for row in table] == [COPY, DEPLOYED]
    assert all(row[1] == "int4" and row[3] == "8192" and row[2].endswith("MB") for row in table)
    browser.screenshot(shots / "models.png")


def test_the_model_page_shows_the_deploy_report(browser, shots):
    view(browser, "models")
    browser.driver.execute_script(DETAILS, DEPLOYED)  # in one go, like the table above
    checks = browser.wait_for(lambda: browser.find_all(".checklist tr.check"), 20, "the checklist")
    verdicts = [check.find_element("css selector", ".verdict").text for check in checks]
    assert verdicts == [check.status for check in CHECKS]
    assert "1 of 6 edge cases hung <b>past</b> 60 s" in checks[4].text  # report text is text too
    quality = browser.find(".quality").text
    assert "ΔPPL" in quality and "+2.16 %" in quality and "KLD" in quality and "93.4 %" in quality
    image = browser.wait_for(lambda: browser.find_all("figure img"), 20, "the bench plot")[0]
    browser.wait_for(
        lambda: browser.driver.execute_script("return arguments[0].naturalWidth", image) > 0, 10, "the plot"
    )
    assert browser.errors() == []
    browser.screenshot(shots / "model-page.png")


def test_the_page_asks_for_the_api_key_and_keeps_it_in_the_tab(tmp_path, shots):
    server = ServerProcess(tmp_path / "home", "--api-key", "page-key").wait_ready()
    browser = Browser()
    try:
        browser.driver.get(server.url + "/")
        dialog = browser.wait_for(
            lambda: browser.find("#key-dialog").is_displayed() and browser.find("#key-dialog"), 20, "the key dialog"
        )
        browser.screenshot(shots / "api-key.png")
        browser.find("#key-input").send_keys("page-key")
        dialog.find_element("css selector", "button").click()
        browser.wait_for(
            lambda: "The cache is empty." in browser.find("#models-note").get_attribute("textContent"), 20, "the list"
        )
        stored = browser.driver.execute_script("return [sessionStorage.getItem('slmops-api-key'), localStorage.length]")
        assert stored == ["page-key", 0]
        assert not browser.find("#key-dialog").is_displayed()
        # 401 answers are expected in the console; nothing else may fail
        assert [error for error in browser.errors() if "401" not in error] == []
    finally:
        browser.close()
        server.stop()
