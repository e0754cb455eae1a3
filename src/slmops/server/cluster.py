"""`slmops serve --replicas N`: the same FastAPI app, as a Ray Serve deployment.

Each replica is a Ray actor that builds its own app with ``create_app`` and loads its own
models, with as many onnxruntime threads as it has CPUs. Ray's HTTP proxy listens on
``--host``/``--port`` and spreads requests over the replicas. This module is the only one
that imports Ray, and ``serve`` imports it only when a Ray flag is given.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from slmops.errors import ServiceError, SlmopsError, UsageError
from slmops.server.config import ServerConfig

APP_NAME = "slmops"
DEPLOYMENT = "SlmopsReplica"
REPLICA_HEADER = "x-slmops-replica"
# A streamed answer crosses to Ray's proxy in at most one piece per this many seconds (its
# first token at once): each piece costs Python time on the decoding cores; 0.1 s halved the
# proxy's CPU per token at 8 streams (0.6 -> 0.3 ms, docs/scale-out.md).
STREAM_INTERVAL = 0.1
BUILDER = "slmops.server.cluster:build"
MANAGEMENT_PATHS = ("/openai/load/{name:path}", "/openai/unload/{name:path}", "/openai/unloadall")
NOT_ACROSS_REPLICAS = (
    "Loading and unloading models by request is not supported under Ray Serve: a request reaches "
    "one replica of several, so it could not load or unload on all of them. Name the models when "
    "starting `slmops serve`, or let a completion load its model on the replica that answers it."
)
log = logging.getLogger("slmops.server")


@dataclass
class ClusterOptions:
    """Where and how many replicas run (the Ray flags of `slmops serve`)."""

    replicas: int = 1  # fixed replica count when not autoscaling
    cpus_per_replica: float = 1.0  # Ray CPUs reserved per replica; also its onnxruntime threads
    min_replicas: int | None = None  # autoscaling bounds, on ongoing requests per replica
    max_replicas: int | None = None
    scale_delay: float | None = None  # seconds of high (low) load before adding (removing) one
    ray_address: str | None = None  # "auto", "ray://HOST:10001"; None starts a local Ray

    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def check(self) -> None:
        low, high = self.min_replicas, self.max_replicas
        if self.autoscaling() and (low is None or high is None):
            raise UsageError("Give both --min-replicas and --max-replicas to autoscale.")
        if low is not None and high is not None and not 0 <= low <= high >= 1:
            raise UsageError(f"--min-replicas {low} and --max-replicas {high}: need 0 <= min <= max, max >= 1.")
        if self.scale_delay is not None and not self.autoscaling():
            raise UsageError("--scale-delay needs --min-replicas and --max-replicas.")


# ---- the deployment ---------------------------------------------------------


def deployment_args(models: Sequence[str], config: ServerConfig, options: ClusterOptions) -> dict:
    """What every replica is built from: JSON-able, the ``args`` of the Ray Serve config file.

    The API key is left out: replicas read it from ``SLMOPS_API_KEY`` unless given here.
    """
    settings = dataclasses.asdict(config)
    settings.pop("api_key")
    if settings["threads"] is None:
        settings["threads"] = max(1, math.floor(options.cpus_per_replica))
    return {"models": [_portable(item) for item in models], "config": settings}


def _portable(item: str) -> str:
    # A folder given relative to here means nothing on another node: send its absolute path.
    from slmops.cache.resolver import looks_like_path

    return str(Path(item).resolve()) if looks_like_path(item) else item


def deployment_options(config: ServerConfig, options: ClusterOptions) -> dict:
    """Ray Serve's settings of the deployment: replicas, CPUs, concurrency, draining."""
    settings: dict = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": options.cpus_per_replica},
        # The replica's own queue answers 429 past --parallel + --max-queue; Ray holds no more.
        "max_ongoing_requests": config.parallel + config.max_queue,
        "graceful_shutdown_timeout_s": config.grace,
    }
    if options.autoscaling():
        settings["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            # A replica is busy once every batch row is taken: add one then.
            "target_ongoing_requests": config.parallel,
        }
        if options.scale_delay is not None:
            settings["autoscaling_config"].update(_scale_timing(options.scale_delay))
    else:
        settings["num_replicas"] = options.replicas
    return settings


def _scale_timing(delay: float) -> dict:
    """Ray Serve's autoscaling timing for a decision after ``delay`` seconds of load.

    Ray averages the ongoing requests over a look-back window (30 s) from points pushed every
    10 s, then waits its delays (30 s up, 600 s down): a short delay needs a short window and
    frequent points too, or the average would still remember the load before.
    """
    return {
        "upscale_delay_s": delay,
        "downscale_delay_s": delay,
        "look_back_period_s": min(30.0, delay),
        "metrics_interval_s": min(10.0, delay / 2),
    }


class Replica:
    """One Ray Serve replica: checks its node has the models, then builds the slmops app."""

    def __init__(self, models: list[str], config: dict) -> None:
        self.models = list(models)
        config.setdefault("api_key", os.environ.get("SLMOPS_API_KEY") or None)
        self.config = ServerConfig(**config)
        check_models(self.models)

    def __serve_build_asgi_app__(self):
        from ray import serve

        from slmops.server.app import create_app
        from slmops.server.coalesce import CoalescedStreams

        app = create_app(self.config, self.models)
        context = serve.get_replica_context()
        name = context.replica_id.unique_id
        _replace_management(app, name)
        app.add_middleware(ReplicaHeader, name=name)
        app.add_middleware(CoalescedStreams, interval=STREAM_INTERVAL)
        return app


class ModelMissingOnNode(ServiceError):
    """A replica's node cannot find a model it was told to serve."""


def check_models(models: Sequence[str]) -> None:
    """Raise ModelMissingOnNode naming this node and the model when one is not here."""
    from slmops.cache.resolver import looks_like_path
    from slmops.server.registry import Registry

    registry = Registry(ServerConfig())
    for item in models:
        try:
            registry.add_folder(Path(item)) if looks_like_path(item) else registry.locate(item)
        except SlmopsError as exc:
            raise ModelMissingOnNode(f"Node {describe_node()} has no model {item!r}: {exc}") from None


def describe_node() -> str:
    """This node as a person finds it: host name, address and, inside Ray, its node id.

    Several Ray nodes can share a host (containers, a test cluster): the id tells them apart.
    """
    where = [_node_ip()]
    node_id = _ray_node_id()
    if node_id:
        where.append(f"Ray node {node_id}")
    return f"{socket.gethostname()} ({', '.join(where)})"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray, or no address yet: the host name says enough
        return "local"


def _ray_node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else ""
    except Exception:  # outside Ray: no node id to give
        return ""


def build(args: dict):
    """The Ray Serve application (``import_path: slmops.server.cluster:build`` in a config file).

    Args:
        args: ``models`` (names or folders every node can resolve) and ``config``
            (ServerConfig's fields); ``deployment_args`` writes them.
    """
    return _application(args, {"name": DEPLOYMENT})


def _application(args: dict, settings: dict):
    from ray import serve

    deployment = serve.deployment(**settings)(serve.ingress()(Replica))
    return deployment.bind(list(args.get("models", [])), dict(args.get("config", {})))


class ReplicaHeader:
    """Names the replica that answered in every response (``x-slmops-replica``)."""

    def __init__(self, app, name: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), name.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), self.header])
            await send(message)

        await self.app(scope, receive, named)


def _replace_management(app, replica: str) -> None:
    """501 for load/unload/unloadall, and /metrics naming its replica; ahead of the app's routes."""
    from slmops.server.errors import APIError
    from slmops.server.manage import metrics

    router = APIRouter()

    async def not_across_replicas():
        raise APIError(501, NOT_ACROSS_REPLICAS, code="not_supported_under_ray")

    async def named_metrics(request: Request):
        text = (await metrics(request)).body.decode()
        node, node_id = socket.gethostname(), _ray_node_id()
        labels = f'replica="{replica}",node="{node}",node_id="{node_id}"'
        info = f"# TYPE slmops_replica_info gauge\nslmops_replica_info{{{labels}}} 1\n"
        return PlainTextResponse(text + info, media_type="text/plain; version=0.0.4")

    for path in MANAGEMENT_PATHS:
        router.add_api_route(path, not_across_replicas, methods=["GET"], include_in_schema=False)
    router.add_api_route("/metrics", named_metrics, methods=["GET"], include_in_schema=False)
    app.router.routes[:0] = router.routes


# ---- the config file ----------------------------------------------------------


def write_config(
    path: Path, models: Sequence[str], host: str, port: int, config: ServerConfig, options: ClusterOptions
) -> None:
    """Write the Ray Serve config file for ``serve deploy`` (and a KubeRay RayService's ``serveConfigV2``)."""
    import yaml

    options.check()
    application = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": BUILDER,
        "args": deployment_args(models, config, options),
        "deployments": [deployment_options(config, options)],
    }
    document: dict[str, object] = {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}}
    document["applications"] = [application]
    text = yaml.safe_dump(document, sort_keys=False)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"# Ray Serve config for slmops: serve deploy {path.name}\n{text}", encoding="utf-8")
    os.replace(tmp, path)


# ---- running it ---------------------------------------------------------------


def serve_on_ray(
    models: list[str],
    host: str,
    port: int,
    config: ServerConfig,
    log_level: str,
    replicas: int | None,
    cpus_per_replica: float | None,
    min_replicas: int | None,
    max_replicas: int | None,
    ray_address: str | None,
    ray_config: str | None,
    scale_delay: float | None = None,
) -> None:
    """Write the Ray Serve config file (``ray_config``) or serve on Ray until SIGTERM."""
    if replicas is not None and (min_replicas is not None or max_replicas is not None):
        raise UsageError("Give either --replicas or --min-replicas/--max-replicas, not both.")
    options = ClusterOptions(
        replicas=replicas or 1,
        cpus_per_replica=cpus_per_replica or 1.0,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        scale_delay=scale_delay,
        ray_address=ray_address,
    )
    if ray_config:
        write_config(Path(ray_config), models, host, port, config, options)
        print(f"Wrote the Ray Serve config to {ray_config}; deploy it with: serve deploy {ray_config}")
        return
    if importlib.util.find_spec("ray") is None:
        raise UsageError("Ray Serve is not installed: pip install 'slmops[cluster]'.")
    serve(models, host, port, config, options, log_level)


def serve(
    models: Sequence[str],
    host: str,
    port: int,
    config: ServerConfig,
    options: ClusterOptions,
    log_level: str = "info",
) -> None:
    """Serve ``models`` on Ray Serve until SIGTERM or Ctrl-C, then drain and stop Ray.

    Without ``options.ray_address``, a local Ray starts in a temporary folder (usage
    statistics off, dashboard on 127.0.0.1) and is shut down at the end; with one, the
    application is deployed on that cluster and deleted from it at the end.

    Raises:
        ServiceError: the port is busy, a model is missing on a node, or the deployment failed.
        UsageError: inconsistent replica flags, or more CPUs asked for than this machine has.
    """
    options.check()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    local = options.ray_address is None
    if local:
        check_models(models)  # this machine is the only node: say so before starting Ray
        _check_cpus(options)
        from slmops.server.run import bind

        # A busy port is one line now, not a proxy failing later; port 0 becomes a free port.
        with bind(host, port) as probe:
            port = probe.getsockname()[1]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp_dir = tempfile.mkdtemp(prefix="slmops-ray-") if local else None
    if temp_dir:
        _local_token(Path(temp_dir))  # before Ray is imported: it reads its auth settings once
    import ray

    try:
        ray_context = _start_ray(options, temp_dir, log_level)
        print(f"Ray: {_describe(ray_context)}", flush=True)
        stop = _stop_event()  # after ray.init, which installs its own SIGTERM handler
        _deploy(models, host, port, config, options)
        shown = f"[{host}]" if ":" in host else host
        print(f"slmops serving on http://{shown}:{port}/v1 through Ray Serve (pid {os.getpid()})", flush=True)
        stop.wait()
        print("slmops: draining the replicas", flush=True)
    finally:
        _stop(local)
        ray.shutdown()
        if temp_dir:
            _remove(temp_dir)


def _remove(folder: str) -> None:
    # Ray's last processes may still write a file while they exit: try once more.
    for _ in range(2):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(1.0)


def _check_cpus(options: ClusterOptions) -> None:
    have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = options.max_replicas if options.autoscaling() else options.replicas
    wanted = (count or 1) * options.cpus_per_replica
    if wanted > have:
        raise UsageError(
            f"{count} replicas x {options.cpus_per_replica:g} CPUs need {wanted:g} CPUs; this machine has {have}. "
            "Lower --replicas or --cpus-per-replica, or join a cluster with --ray-address."
        )


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _describe(context) -> str:
    """Where Ray answers: its GCS address (``ray status --address``) and its dashboard."""
    dashboard = getattr(context, "dashboard_url", None)
    where = [f"address {context.address_info.get('gcs_address', '?')}"]
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        where.append(f"token {os.environ['RAY_AUTH_TOKEN_PATH']}")
    return ", ".join(where + ([f"dashboard http://{dashboard}"] if dashboard else []))


def _local_token(folder: Path) -> None:
    """Token authentication for the local Ray, its token in its temp folder (not ~/.ray), unless the user chose."""
    if any(name in os.environ for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    path = folder / "auth_token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32), encoding="utf-8")
    os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN_PATH"] = "token", str(path)


def _start_ray(options: ClusterOptions, temp_dir: str | None, log_level: str):
    import ray

    quiet = log_level in ("critical", "error", "warning")
    if temp_dir is None:
        try:
            return ray.init(address=options.ray_address, log_to_driver=not quiet, logging_level=logging.WARNING)
        except Exception as exc:  # Ray's own error types vary with what failed: keep its first line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceError(f"Could not join the Ray cluster at {options.ray_address}: {reason}") from None
    from slmops.server.process import free_port

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ray.init(
        num_cpus=cpus,
        include_dashboard=True,  # Ray's state API (which actor runs where) needs it; loopback only
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        _temp_dir=temp_dir,
        log_to_driver=not quiet,
        logging_level=logging.WARNING,
    )


def _deploy(models, host: str, port: int, config: ServerConfig, options: ClusterOptions) -> None:
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    args = deployment_args(models, config, options)
    if config.api_key:
        args["config"]["api_key"] = config.api_key
    app = _application(args, deployment_options(config, options))
    target = serve.RunTarget(app, name=APP_NAME, route_prefix="/")
    try:
        serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        _wait_running()
    except RuntimeError as exc:
        raise ServiceError(_deploy_failure(f"{exc}\n{_deployment_message()}")) from None


def _wait_running() -> None:
    """Return once the application runs; raise RuntimeError when it failed or a node lacks a model.

    Ray Serve retries a replica that fails to start forever once another replica of the
    deployment has started: a node without the model (the others have it) would never fail
    the deployment, so its replica's message is watched too.
    """
    from ray import serve

    while True:
        application = serve.status().applications.get(APP_NAME)
        status = str(application.status) if application else "NOT_STARTED"
        if status.endswith("RUNNING"):
            return
        message = _deployment_message()
        if status.endswith(("DEPLOY_FAILED", "UNHEALTHY")) or ModelMissingOnNode.__name__ in message:
            raise RuntimeError(f"Ray Serve could not start {APP_NAME} ({status})")
        time.sleep(0.5)


def _deployment_message() -> str:
    """Why the deployment failed, as Ray Serve keeps it: the replica's traceback."""
    from ray import serve

    try:
        application = serve.status().applications.get(APP_NAME)
        deployment = application.deployments.get(DEPLOYMENT) if application else None
        return (deployment.message if deployment else "") or ""
    except Exception:  # the status is a courtesy: the error above stands without it
        return ""


def _deploy_failure(text: str) -> str:
    found = re.search(r"ModelMissingOnNode: (.+)", text)
    if found:
        return found.group(1).strip()
    last = [line for line in text.strip().splitlines() if line.strip()]
    return f"Ray Serve could not deploy slmops: {last[-1].strip() if last else 'unknown error'}"


def _stop(local: bool) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():  # never connected: Serve's calls would start a Ray of their own
        return
    try:
        # The proxy stays up while the replicas finish their answers in flight (--grace).
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
    except Exception as exc:  # Ray already gone (a crash): nothing left to drain
        log.warning("Ray Serve did not shut down cleanly: %s", exc)
