"""`slmops serve --replicas N` on Ray Serve.

The fast tests need no Ray cluster: the flags, the config file, the replica's app. The slow
ones start one local Ray (2 replicas x 1 CPU of SmolLM2) on loopback and stop it with
SIGTERM at the end; they run in file order, the SIGTERM test last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner

from slmops.server import cluster
from slmops.server.app import create_app
from slmops.server.config import ServerConfig
from tests.server_process import ServerProcess

ray = pytest.importorskip("ray", reason="the cluster extra (ray[serve]) is not installed")
KEY = "ray-test-key"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


# ---- no Ray cluster ----------------------------------------------------------


def test_plain_serve_never_imports_ray():
    code = (
        "import sys\n"
        "from slmops import cli\n"
        "import slmops.server.run as run\n"
        "run.serve = lambda *args, **kwargs: None\n"
        "from slmops.server.app import create_app\n"
        "create_app()\n"
        "try:\n"
        "    cli.main(['serve', 'some-model', '--port', '0'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def serve_cli(*args: str):
    from slmops.server.commands import serve

    return CliRunner().invoke(serve, list(args))


def test_ray_config_is_a_ray_serve_config_whose_builder_builds(tmp_path, tiny_onnx):
    from ray.serve.schema import ServeDeploySchema

    target = tmp_path / "serve.yaml"
    args = [str(tiny_onnx), "--replicas", "3", "--cpus-per-replica", "2", "--parallel", "4", "--api-key", "secret"]
    result = serve_cli(*args, "--host", "0.0.0.0", "--port", "8000", "--ray-config", str(target))
    assert result.exit_code == 0, result.output
    import yaml

    document = yaml.safe_load(target.read_text())
    assert "secret" not in target.read_text()  # the key stays in the environment, never in a file
    schema = ServeDeploySchema.model_validate(document) if hasattr(ServeDeploySchema, "model_validate") else None
    schema = schema or ServeDeploySchema.parse_obj(document)
    application = schema.applications[0]
    assert application.import_path == "slmops.server.cluster:build"
    assert application.args["models"] == [str(Path(tiny_onnx).resolve())]
    assert application.args["config"]["threads"] == 2 and application.args["config"]["parallel"] == 4
    deployment = application.deployments[0]
    assert deployment.num_replicas == 3 and deployment.ray_actor_options.num_cpus == 2
    assert document["http_options"] == {"host": "0.0.0.0", "port": 8000}
    built = cluster.build(application.args)
    assert type(built).__name__ == "Application"


def test_autoscaling_goes_into_the_config(tmp_path):
    target = tmp_path / "serve.yaml"
    result = serve_cli("m", "--min-replicas", "1", "--max-replicas", "4", "--ray-config", str(target))
    assert result.exit_code == 0, result.output
    import yaml

    deployment = yaml.safe_load(target.read_text())["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert "num_replicas" not in deployment
    result = serve_cli(
        "m", "--min-replicas", "1", "--max-replicas", "4", "--scale-delay", "4", "--ray-config", str(target)
    )
    assert result.exit_code == 0, result.output
    scaling = yaml.safe_load(target.read_text())["applications"][0]["deployments"][0]["autoscaling_config"]
    assert scaling["upscale_delay_s"] == scaling["downscale_delay_s"] == scaling["look_back_period_s"] == 4
    assert scaling["metrics_interval_s"] == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--replicas", "2", "--min-replicas", "1"], "either --replicas or --min-replicas/--max-replicas"),
        (["--min-replicas", "1"], "Give both --min-replicas and --max-replicas"),
        (["--min-replicas", "3", "--max-replicas", "2"], "need 0 <= min <= max"),
        (["--replicas", "2", "--scale-delay", "5"], "--scale-delay needs --min-replicas and --max-replicas"),
        (["--replicas", "64", "--cpus-per-replica", "4"], "need 256 CPUs; this machine has"),
    ],
)
def test_wrong_ray_flags_are_one_line_errors_before_ray_starts(flags, message, tiny_onnx):
    out = subprocess.run(
        [sys.executable, "-m", "slmops", "serve", str(tiny_onnx), *flags], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_missing_model_names_the_node_and_the_name():
    with pytest.raises(cluster.ModelMissingOnNode, match=r"^Node \S+ \(.+\) has no model 'no-such-model': "):
        cluster.check_models(["no-such-model"])
    out = subprocess.run(
        [sys.executable, "-m", "slmops", "serve", "no-such-model", "--replicas", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.startswith("Error: Node "), out.stderr
    assert "'no-such-model'" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_ray_failure_to_deploy_keeps_only_the_slmops_message():
    text = "RuntimeError: Deploying failed:\nTraceback ...\nslmops.server.cluster.ModelMissingOnNode: Node n1 (10.0.0.2) has no model 'x': not cached.\n"
    assert cluster._deploy_failure(text) == "Node n1 (10.0.0.2) has no model 'x': not cached."


def test_a_cluster_that_cannot_be_joined_is_one_line_and_starts_no_ray(monkeypatch):
    from slmops.errors import ServiceError

    def refuse(**_):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the address.")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(
        ServiceError, match=r"^Could not join the Ray cluster at auto: Could not find any running Ray instance\.$"
    ):
        cluster._start_ray(cluster.ClusterOptions(ray_address="auto"), None, "info")
    cluster._stop(local=False)  # what `serve` does next: it must not start a Ray of its own
    assert not ray.is_initialized()


def test_the_replica_app_names_itself_and_refuses_management_with_501(tiny_onnx):
    from fastapi.testclient import TestClient

    app = create_app(ServerConfig(api_key=KEY), [str(tiny_onnx)])
    cluster._replace_management(app, "r-1")
    app.add_middleware(cluster.ReplicaHeader, name="r-1")
    key = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app) as client:
        refused = client.get("/openai/load/tiny?ttl=5")
        assert refused.status_code == 401  # the key is checked before anything else
        for path in ("/openai/load/tiny?ttl=5", "/openai/unload/tiny", "/openai/unloadall"):
            answer = client.get(path, headers=key)
            assert answer.status_code == 501, path
            assert answer.json()["error"]["code"] == "not_supported_under_ray"
            assert answer.headers[cluster.REPLICA_HEADER] == "r-1"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and 'slmops_replica_info{replica="r-1",node="' in metrics.text
        assert "slmops_requests_total" in metrics.text
        assert client.get("/v1/models", headers=key).headers[cluster.REPLICA_HEADER] == "r-1"


# ---- a local Ray with 2 replicas ----------------------------------------------------


def ray_processes() -> dict[int, str]:
    found = {}
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        name = process.info["name"] or ""
        command = " ".join(process.info["cmdline"] or [])
        if name.startswith("ray::") or name in ("raylet", "gcs_server") or "site-packages/ray/" in command:
            found[process.info["pid"]] = name
    return found


LIST_REPLICAS = """
import json, sys
from ray.util.state import list_actors
actors = list_actors(address=sys.argv[1], filters=[("state", "=", "ALIVE")], timeout=30)
print(json.dumps({a.name.rsplit("#", 1)[-1]: a.pid for a in actors if sys.argv[2] in (a.class_name or "")}))
"""


TWO_REPLICAS = ("--replicas", "2", "--cpus-per-replica", "1", "--parallel", "8")


class RayServer:
    """`slmops serve --replicas 2` (or ``flags``) with the Ray processes alive before it started."""

    def __init__(self, home: Path, folder: Path, flags: tuple[str, ...] = TWO_REPLICAS) -> None:
        self.before = ray_processes()
        self.server = ServerProcess(home, str(folder), *flags, "--api-key", KEY).wait_ready(timeout=240)
        self.model = folder.name
        # slmops prints where its Ray is: the dashboard (the state API) and the token it made for it
        found = re.search(r"token (\S+), dashboard (http://127\.0\.0\.1:\d+)", self.server.log.read_text())
        if not found:
            self.server.stop()
            raise AssertionError(f"no dashboard address in the log:\n{self.server.log_tail()}")
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": found.group(1)}
        self.dashboard = found.group(2)

    def replicas(self) -> dict[str, int]:
        """Replica id -> pid of the live replicas, from Ray's state API.

        Asked in a child process: Ray reads its token settings once per process.
        """
        out = subprocess.run(
            [sys.executable, "-c", LIST_REPLICAS, self.dashboard, cluster.DEPLOYMENT],
            env=dict(os.environ, **self.env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def client(self, **options):
        import openai

        return openai.OpenAI(base_url=self.server.url + "/v1", **({"api_key": KEY} | options))


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, smollm2_int4):
    started = RayServer(tmp_path_factory.mktemp("ray-home"), smollm2_int4)
    yield started
    started.server.stop(timeout=60)


def chat(client, model: str, tokens: int = 8, stream: bool = False):
    messages = [{"role": "user", "content": "Count from 1 to 100."}]
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=tokens, temperature=0, stream=stream
    )


@pytest.mark.slow
def test_openai_client_chats_and_streams_through_the_proxy_on_both_replicas(ray_server):
    client = ray_server.client(max_retries=0, timeout=60)
    answer = chat(client, ray_server.model)
    assert answer.parse().choices[0].message.content and answer.parse().usage.completion_tokens == 8
    streamed = chat(client, ray_server.model, stream=True)
    chunks = list(streamed.parse())
    assert chunks[-1].choices[0].finish_reason == "length" and "".join(c.choices[0].delta.content or "" for c in chunks)
    seen: set[str] = {answer.headers[cluster.REPLICA_HEADER], streamed.headers[cluster.REPLICA_HEADER]}
    for _ in range(5):  # Ray routes to the less busy of two: concurrent requests reach both
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: chat(client, ray_server.model), range(6)))
        seen |= {reply.headers[cluster.REPLICA_HEADER] for reply in replies}
        if len(seen) == 2:
            break
    assert seen == set(ray_server.replicas()), seen


@pytest.mark.slow
def test_the_proxy_keeps_errors_key_health_and_metrics(ray_server):
    import openai

    url = ray_server.server.url
    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(ray_server.client(api_key="wrong", max_retries=0), ray_server.model)
    assert wrong.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(ray_server.client(max_retries=0), "no-such-model")
    assert unknown.value.body["code"] == "model_not_found"
    assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
    metrics = httpx.get(url + "/metrics", timeout=10)
    assert f'slmops_replica_info{{replica="{metrics.headers[cluster.REPLICA_HEADER]}"' in metrics.text
    load = httpx.get(url + "/openai/load/x", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert load.status_code == 501 and load.json()["error"]["code"] == "not_supported_under_ray"


class Stream:
    """One streamed chat in a thread: which replica answered, how many chunks, how it ended."""

    def __init__(self, server: RayServer, tokens: int) -> None:
        self.replica: str | None = None
        self.chunks = 0
        self.error: Exception | None = None
        self.finish: str | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, args=(server, tokens))
        self.thread.start()

    def _run(self, server: RayServer, tokens: int) -> None:
        client = server.client(max_retries=0, timeout=30)
        try:  # a raw counting prompt: the model keeps counting, every stream runs its whole length
            with client.completions.with_streaming_response.create(
                model=server.model, prompt=COUNTING, max_tokens=tokens, temperature=0, stream=True
            ) as response:
                self.replica = response.headers.get(cluster.REPLICA_HEADER)
                for chunk in response.parse():
                    self.chunks += 1
                    self.finish = chunk.choices[0].finish_reason if chunk.choices else self.finish
        except Exception as exc:  # what the client sees when its replica dies
            self.error = exc
        self.ended = time.monotonic()


def describe(streams: list[Stream]) -> list:
    return [(s.replica, s.chunks, s.finish, repr(s.error)[:200]) for s in streams]


def retryable(error: Exception | None) -> bool:
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500
    return isinstance(error, (openai.APIConnectionError, httpx.TransportError, openai.APIError))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_killing_a_replica_fails_only_its_streams_and_it_comes_back(ray_server):
    before = ray_server.replicas()
    assert len(before) == 2
    streams = [Stream(ray_server, tokens=200) for _ in range(16)]
    wait_for(lambda: all(s.chunks >= 1 or s.error for s in streams), 90, "16 streams to start")
    running = {replica: sum(s.replica == replica and s.ended is None for s in streams) for replica in before}
    victim = max(running, key=running.__getitem__)
    os.kill(before[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    for stream in streams:
        stream.thread.join(60)
    assert not any(s.thread.is_alive() for s in streams), "a stream hung"
    in_flight = [s for s in streams if s.replica == victim and s.ended > killed_at]
    survivors = [s for s in streams if s.replica != victim]
    done_before = [s for s in streams if s.replica == victim and s.ended <= killed_at]
    print(f"killed {victim}: {len(in_flight)} streams in flight on it failed, {len(survivors)} on the other one")
    print(
        f"and {len(done_before)} had ended on it before the kill; errors: {sorted({repr(s.error) for s in in_flight})}"
    )
    assert in_flight and survivors, running
    assert all(s.error is None and s.finish in ("stop", "length") for s in done_before), describe(done_before)
    assert all(s.error is None and s.finish in ("stop", "length") for s in survivors), describe(survivors)
    assert all(retryable(s.error) and s.finish is None for s in in_flight), describe(in_flight)

    # Ray starts a replacement; every request from then on is answered.
    replaced = wait_for(lambda: len(r := ray_server.replicas()) == 2 and victim not in r and r, 120, "a new replica")
    newcomer = (set(replaced) - set(before)).pop()
    client = ray_server.client(max_retries=0, timeout=60)
    answered: list[str] = []
    while newcomer not in answered and len(answered) < 40:
        wave = [Stream(ray_server, tokens=4) for _ in range(4)]
        for stream in wave:
            stream.thread.join(60)
            assert stream.error is None and stream.finish == "length", repr(stream.error)
            answered.append(stream.replica or "")
        reply = chat(client, ray_server.model, tokens=4)
        answered.append(reply.headers[cluster.REPLICA_HEADER])
    print(f"after the restart: {len(answered)} requests answered, all of them")
    assert newcomer in answered


@pytest.mark.slow
def test_sigterm_drains_and_leaves_no_ray_process_of_its_own(ray_server):
    server = ray_server.server
    own = {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
    assert own & set(ray_processes()), "no Ray process under the server"
    late = Stream(ray_server, tokens=48)
    wait_for(lambda: late.chunks >= 2 or late.error, 60, "a stream to start")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(90) == 0, server.log_tail()
    late.thread.join(30)
    assert late.error is None and late.finish == "length", repr(late.error)  # drained, not cut
    time.sleep(1.0)  # children of a dead raylet are reaped by init
    alive = {pid for pid in own if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
    assert not alive, alive
    assert set(ray_processes()) <= set(ray_server.before), set(ray_processes()) - set(ray_server.before)
