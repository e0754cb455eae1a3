"""`slmops serve` on Ray Serve beyond a fixed set of replicas on one Ray node.

Autoscaling between 1 and 2 replicas under load, and a Ray cluster of two nodes on this one
machine (each node its own raylet, CPUs and SLMOPS_HOME). Each test starts and stops its own
Ray, on loopback, and checks by pid that none of its Ray processes outlive it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from slmops.server import cluster
from tests.server_process import free_port
from tests.test_server_ray import KEY, RayServer, ray_processes, wait_for

ray = pytest.importorskip("ray", reason="the cluster extra (ray[serve]) is not installed")


class Load:
    """``clients`` threads sending completions back to back until stopped; the replicas that answered."""

    def __init__(self, server: RayServer, clients: int, tokens: int) -> None:
        self.server, self.tokens = server, tokens
        self.replicas: list[str] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        client = self.server.client(max_retries=0, timeout=60)
        while not self.stopping.is_set():
            try:
                reply = client.completions.with_raw_response.create(
                    model=self.server.model, prompt="1, 2, 3,", max_tokens=self.tokens, temperature=0
                )
                self.replicas.append(reply.headers[cluster.REPLICA_HEADER])
            except Exception as exc:  # counted: the test wants none
                self.errors.append(repr(exc)[:200])

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)
        assert not any(thread.is_alive() for thread in self.threads), "a request hung"


@pytest.mark.slow
def test_autoscaling_adds_a_replica_under_load_and_removes_it_once_idle(tmp_path, tiny_onnx):
    # target: 2 ongoing requests per replica (--parallel 2); 6 clients ask for 3, capped at 2
    flags = ("--min-replicas", "1", "--max-replicas", "2", "--cpus-per-replica", "1", "--parallel", "2")
    started = time.monotonic()
    server = RayServer(tmp_path / "home", tiny_onnx, (*flags, "--scale-delay", "2"))
    try:
        assert len(server.replicas()) == 1
        ready = time.monotonic()
        load = Load(server, clients=6, tokens=48)
        try:
            scaled = wait_for(lambda: len(r := server.replicas()) == 2 and r, 60, "a second replica")
            up = time.monotonic()
            wait_for(lambda: set(scaled) <= set(load.replicas[-40:]), 30, "requests on both replicas")
        finally:
            load.stop()
        idle = time.monotonic()
        wait_for(lambda: len(server.replicas()) == 1, 60, "back to one replica")
        down = time.monotonic()
        print(
            f"Ray up in {ready - started:.0f} s; 2 replicas {up - ready:.0f} s after the load began, "
            f"1 again {down - idle:.0f} s after it ended; {len(load.replicas)} requests answered"
        )
        assert not load.errors, load.errors[:5]
    finally:
        server.server.stop(timeout=60)
    wait_for(lambda: set(ray_processes()) <= set(server.before), 15, "its Ray processes to exit")


TWO_NODES = """
import json, os, sys
from ray.cluster_utils import Cluster

homes = sys.argv[1:3]
cluster = Cluster()
head = dict(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
a = cluster.add_node(**head, env_vars={"SLMOPS_HOME": homes[0]})
b = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars={"SLMOPS_HOME": homes[1]})
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "nodes": [a.node_id, b.node_id]}), flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""


# Ray turns 127.0.0.1 in an address into the machine's address unless it thinks the machine
# is no cluster (its default on macOS and Windows): the nodes listen on loopback only.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class TwoNodes:
    """A Ray cluster of two 1-CPU nodes on this machine, each with its own SLMOPS_HOME."""

    def __init__(self, homes: tuple[Path, Path]) -> None:
        self.before = ray_processes()
        self.temp = tempfile.mkdtemp(prefix="slmops-ray-")  # short: Ray's sockets live there
        # Ray keeps its files, and the address of the "current" cluster, under RAY_TMPDIR
        token = Path(self.temp) / "auth_token"  # the cluster's token, never ~/.ray's
        token.write_text(secrets.token_hex(32))
        self.env = {**LOOPBACK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        env = dict(os.environ, **self.env, RAY_TMPDIR=self.temp)
        command = [sys.executable, "-c", TWO_NODES, *map(str, homes)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.stop()
            raise AssertionError("the two-node Ray cluster did not start")
        started = json.loads(line)
        self.address = started["address"]
        self.node_a, self.node_b = (node[:12] for node in started["nodes"])  # as slmops names them

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)


def serve_on(nodes: TwoNodes, home: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "slmops", "serve", *args, "--ray-address", nodes.address, "--log-level", "warning"]
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - the child writes it until it ends
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **nodes.env, SLMOPS_HOME=str(home))
    )


@pytest.mark.slow
def test_two_nodes_answer_and_a_node_without_the_model_is_named(tmp_path, tiny_onnx, monkeypatch):
    from slmops.cache import store

    homes = (tmp_path / "node-a", tmp_path / "node-b")
    for home in homes:
        home.mkdir()
    monkeypatch.setenv("SLMOPS_HOME", str(homes[0]))
    store.add(tiny_onnx, name="tiny-on-a", link=True)  # only node A has this name
    nodes = TwoNodes(homes)
    servers: list[subprocess.Popen] = []
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # A folder both nodes can read: one replica on each node (1 CPU each), both answer.
        flags = ["--replicas", "2", "--cpus-per-replica", "1", "--api-key", KEY, "--port", str(port)]
        server = serve_on(nodes, tmp_path, str(tiny_onnx), *flags)
        servers.append(server)
        try:
            wait_for(lambda: server.poll() is not None or _ready(url), 180, "the replicas on both nodes")
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            seen: dict[str, str] = {}
            last: list[str] = []  # the last answer, for the message when no replica ever shows

            def both_nodes() -> bool:
                answer = httpx.get(url + "/metrics", timeout=10)
                last[:] = [f"{answer.status_code}: {answer.text[:300]}"]
                lines = answer.text.splitlines()
                info = next((line for line in lines if line.startswith("slmops_replica_info{")), None)
                if info is None:  # a replica still settling in answered, or the proxy did: ask again
                    return False
                labels = dict(part.split("=", 1) for part in info[info.index("{") + 1 : info.index("}")].split(","))
                seen[labels["node_id"].strip('"')] = labels["replica"].strip('"')
                return len(seen) == 2

            try:
                wait_for(both_nodes, 30, "/metrics from a replica on each node")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; replicas seen {seen}, last answer {last}") from None
            assert set(seen) == {nodes.node_a, nodes.node_b}, seen
            key = {"Authorization": f"Bearer {KEY}"}
            body = {"model": tiny_onnx.name, "prompt": "1, 2,", "max_tokens": 4}
            answers = [httpx.post(url + "/v1/completions", json=body, headers=key, timeout=60) for _ in range(6)]
            assert all(answer.status_code == 200 for answer in answers), answers[0].text
        finally:
            server.terminate()
            assert server.wait(90) == 0, (tmp_path / "serve.log").read_text()[-3000:]

        # A name only node A has: the replica placed on node B stops the deployment, named.
        missing = serve_on(nodes, tmp_path, "tiny-on-a", *flags)
        servers.append(missing)
        assert missing.wait(180) == 1, (tmp_path / "serve.log").read_text()[-3000:]
        log = (tmp_path / "serve.log").read_text()
        errors = [line for line in log.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and errors[0].startswith("Error: Node "), log[-3000:]
        assert f"Ray node {nodes.node_b}) has no model 'tiny-on-a'" in errors[0], errors[0]
    finally:
        for process in servers:  # a failed assertion above must not leave one running
            if process.poll() is None:
                process.kill()
                process.wait(30)
        nodes.stop()
    wait_for(lambda: set(ray_processes()) <= set(nodes.before), 30, "the cluster's Ray processes to exit")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
