"""The web page's server side, in-process: the page and its headers, the cache details, the
model files it may read, the API key, same-origin, and `slmops ui`. The browser tests are in
test_ui_browser.py."""

import asyncio
import logging
import re
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from slmops.cache import store
from slmops.server import ServerConfig, create_app
from slmops.server.generation import responses
from slmops.server.scheduler import Job
from slmops.server.ui.routes import STATIC
from tests.ui_fixtures import CHECKS, deployed_folder

NAME = "tiny-page"


@pytest.fixture
def deployed(tiny_onnx, tmp_path):
    store.add(deployed_folder(tiny_onnx, tmp_path / "deployed", NAME), name=NAME, link=True)
    return NAME


def page_client(**config) -> TestClient:
    return TestClient(create_app(ServerConfig(**config)))


def test_the_page_and_its_files_are_served_with_a_strict_policy():
    with page_client() as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'self'" in policy and "unsafe" not in policy
        html = page.text
        # No inline script or style anywhere: each script is a file of the page.
        assert re.findall(r"<script[^>]*>\s*</script>", html) == re.findall(r"<script[^>]*>.*?</script>", html, re.S)
        assert "<style" not in html and " style=" not in html and not re.search(r"<[^>]+\son\w+=", html)
        for src in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html):
            answer = client.get(src)
            assert answer.status_code == 200, src
            assert answer.headers["content-security-policy"] == policy
        for script in STATIC.glob("*.js"):  # every module a module imports is shipped
            for imported in re.findall(r'from "\./([\w.]+)"', script.read_text()):
                assert (STATIC / imported).is_file(), (script.name, imported)


def test_no_model_text_reaches_inner_html():
    """Answers and names are set as text: no script of the page parses HTML."""
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (script.name, sink)


def test_unknown_and_path_like_page_files_are_404():
    with page_client() as client:
        for path in ("/ui/static/nope.js", "/ui/static/..%2Froutes.py", "/ui/static/__init__.py"):
            assert client.get(path).status_code == 404, path


def test_no_ui_serves_no_page():
    with page_client(ui=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/ui/static/app.js").status_code == 404
        assert client.get("/ui/api/models").status_code == 404


def test_the_page_is_open_but_its_api_needs_the_key(deployed):
    with page_client(api_key="s3cret") as client:
        assert client.get("/").status_code == 200
        assert client.get("/ui/static/app.js").status_code == 200
        assert client.get("/ui/api/models").status_code == 401
        models = client.get("/ui/api/models", headers={"Authorization": "Bearer s3cret"})
        assert [row["name"] for row in models.json()] == [NAME]


def test_models_carry_precision_size_context_and_state(deployed):
    with page_client() as client:
        (row,) = client.get("/ui/api/models").json()
    assert row["name"] == NAME and row["state"] == "idle"
    assert row["precision"] == "fp32" and row["context_length"] == 512 and row["size_bytes"] > 0


def test_model_details_hold_its_reports_and_plots(deployed):
    with page_client() as client:
        details = client.get(f"/ui/api/models/{NAME}").json()
        assert details["name"] == NAME and details["inference_model"]["Name"] == NAME
        checks = details["deploy_report"]["validation"]["checks"]
        assert [(c["item"], c["status"]) for c in checks] == [(c.item, c.status) for c in CHECKS]
        assert details["plots"] == ["bench.png"]
        plot = client.get(f"/ui/api/models/{NAME}/plots/bench.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        # Only the folder's own PNGs, by exact name; never a path.
        for file in ("deploy-report.json", "..%2F..%2Fetc%2Fpasswd", "missing.png", "genai_config.json"):
            assert client.get(f"/ui/api/models/{NAME}/plots/{file}").status_code == 404, file
        assert client.get("/ui/api/models/..%2F..%2Fetc").status_code == 404
        assert client.get("/ui/api/models/no-such-model").json()["error"]["code"] == "model_not_found"


def test_a_model_without_reports_says_so(tiny_onnx):
    store.add(tiny_onnx, name="plain", link=True)
    with page_client() as client:
        details = client.get("/ui/api/models/plain").json()
    assert details["deploy_report"] is None and details["conversion"] is None and details["plots"] == []


def test_an_unreadable_report_is_reported_not_a_500(tiny_onnx, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_onnx, folder)
    (folder / "deploy-report.json").write_text("{not json", encoding="utf-8")
    store.add(folder, name="broken")
    with page_client() as client:
        details = client.get("/ui/api/models/broken").json()
    assert details["deploy_report"].startswith("deploy-report.json could not be read")


def test_pages_of_other_origins_are_refused_unless_allowed():
    foreign = {"Origin": "http://evil.example"}
    with page_client() as client:
        refused = client.get("/openai/models", headers=foreign)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
        assert "--cors http://evil.example" in refused.json()["error"]["message"]
        assert client.get("/openai/models", headers={"Origin": "http://testserver"}).status_code == 200
        assert client.get("/openai/models", headers={"Origin": "https://testserver"}).status_code == 200
        assert client.get("/openai/models", headers={"Origin": "http://testserver.evil"}).status_code == 403
        assert client.get("/openai/models", headers={"Origin": "null"}).status_code == 403  # a file:// page
        assert client.get("/openai/models").status_code == 200  # not a browser: no Origin
    with page_client(cors=("http://app.example",), api_key="k") as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        allowed = client.get("/openai/models", headers={"Origin": "http://app.example", "Authorization": "Bearer k"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"
        assert client.get("/openai/models", headers=foreign | {"Authorization": "Bearer k"}).status_code == 403


def test_an_answer_the_client_stops_reading_is_logged_as_cancelled(caplog):
    from slmops.runtime.generate import Response

    async def main():
        job = Job(None, asyncio.get_running_loop())
        for index in range(3):
            job.queue.put_nowait(Response(f"t{index}", index, 3, index + 1, 0.0, 0.0, 0.0, None))
        stream = responses(job)
        await stream.__anext__()
        await stream.__anext__()
        await stream.aclose()  # what a closed connection does to the streaming response
        return job

    with caplog.at_level(logging.INFO, logger="slmops.server"):
        job = asyncio.run(main())
    assert job.cancelled
    assert "cancelled an answer after 2 tokens" in caplog.text


def test_slmops_ui_starts_the_service_and_opens_the_page(tmp_path, slmops_home):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib; pathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    # --port 0 on the remembered start: a free port, whatever else runs on this machine.
    (slmops_home / "service").mkdir(parents=True)
    (slmops_home / "service" / "args.json").write_text('["--port", "0", "--no-ui"]')
    env = {"BROWSER": f"{sys.executable} {browser} %s"}
    try:
        result = _slmops(["ui"], env)
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip().split("Playground: ")[1].splitlines()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert opened.read_text() == url
        again = _slmops(["ui", "--no-browser"], env)  # already running: the same page
        assert again.returncode == 0 and f"Playground: {url}" in again.stdout
    finally:
        _slmops(["service", "stop"], {})


def _slmops(args: list[str], env: dict) -> subprocess.CompletedProcess:
    import os

    environment = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-m", "slmops", *args], capture_output=True, text=True, env=environment, timeout=120
    )


def test_service_start_passes_the_page_flags_on(monkeypatch):
    from click.testing import CliRunner

    from slmops.server import commands, service

    given = {}

    def start(args):
        given["args"] = args
        return service.Status(True, "http://127.0.0.1:1/v1", 1), True

    monkeypatch.setattr(service, "start", start)
    flags = ["--no-ui", "--cors", "http://a.example", "--cors", "http://b.example"]
    result = CliRunner().invoke(commands.service, ["start", *flags])
    assert result.exit_code == 0, result.output
    args = given["args"]
    assert "--no-ui" in args and args[args.index("--cors") :][:4] == flags[1:]
