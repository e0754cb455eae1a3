"""slmops.server.process: a server started as a child process, ready when /health says so."""

import sys

import pytest

from slmops.errors import ServiceError
from slmops.server.process import ServerProcess, health

# A stand-in server: /health answers 503 "loading" twice, then what argv[1] says.
FAKE = """
import http.server, json, sys
then = json.loads(sys.argv[1])
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    calls = 0
    def do_GET(self):
        Health.calls += 1
        body = then if Health.calls > 2 else {"status": "loading"}
        self.send_response(200 if body["status"] == "ok" else 503)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def fake(then: str) -> ServerProcess:
    return ServerProcess([sys.executable, "-c", FAKE, then], label="fake")


def test_ready_once_health_says_ok_then_stopped_by_sigterm():
    server = fake('{"status": "ok"}').wait_ready(30)
    try:
        assert health(server.url) == ("ok", {})
    finally:
        assert server.stop() == -15


def test_models_that_failed_stop_the_wait_at_once():
    server = fake('{"status": "failed", "failed": {"model": "no room for the weights"}}')
    with pytest.raises(ServiceError, match="fake could not load model"):
        server.wait_ready(30)
    assert server.process.poll() is not None


def test_a_server_that_exits_is_reported_with_its_log():
    server = ServerProcess([sys.executable, "-c", "print('port taken'); raise SystemExit(3)"], label="quitter")
    with pytest.raises(ServiceError, match="quitter exited at start(.|\n)*port taken"):
        server.wait_ready(30)
    assert health(server.url) == ("down", {})


# Something else on the port: a metrics exporter, say, which answers 200 with text at every path.
FOREIGN = """
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Anything(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"# HELP up 1\\nup 1\\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Anything).serve_forever()
"""


def test_a_200_that_is_not_a_servers_health_is_not_ready():
    server = ServerProcess([sys.executable, "-c", FOREIGN], label="exporter")
    try:
        with pytest.raises(ServiceError, match="exporter"):
            server.wait_ready(3)
    finally:
        server.stop()


def test_ports_are_picked_below_the_range_the_os_hands_out():
    from slmops.serverprocess import FIRST_PORT, _ephemeral_start, free_port

    ports = {free_port() for _ in range(20)}
    low = _ephemeral_start()  # with no room below it (a machine configured so), the OS picks
    assert all(FIRST_PORT <= port < low if low > FIRST_PORT else port > 0 for port in ports), ports
