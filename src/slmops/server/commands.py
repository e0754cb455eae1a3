"""`slmops serve` and `slmops service start|stop|status|restart`."""

from __future__ import annotations

import re

import click

from slmops.errors import UsageError
from slmops.server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_size(text: str | None, flag: str = "--max-memory") -> int | None:
    """'4GB', '512m', '1048576' -> bytes."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise UsageError(f"{flag} {text!r} is not a size; write e.g. 4GB or 512MB.")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def _shown(flag: str, type: click.ParamType | None, default: object, help: str):
    """A flag whose default --help shows."""
    return click.option(flag, type=type, default=default, show_default=True, help=help)


def serve_options(function):
    """The flags `serve` and `service start` share."""
    flags = [
        click.argument("models", nargs=-1),
        _shown("--host", click.STRING, DEFAULT_HOST, "Address to listen on."),
        _shown("--port", click.IntRange(0, 65535), DEFAULT_PORT, "Port to listen on; 0 picks a free one."),
        _shown("--parallel", click.IntRange(1, 256), 8, "Sequences generated at once per model."),
        _shown(
            "--max-queue", click.IntRange(0, 100000), 64, "Requests waiting per model beyond --parallel; more get 429."
        ),
        _shown("--keep-alive", click.FloatRange(min=0), 600, "Seconds a model stays loaded while idle."),
        click.option(
            "--max-memory", help="Memory budget for loaded models (e.g. 4GB); least recently used unload first."
        ),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads per model [default: usable CPUs]."),
        _shown("--grace", click.FloatRange(min=0), 10, "Seconds to finish in-flight answers on SIGTERM."),
        _shown(
            "--batching/--no-batching",
            click.BOOL,
            True,
            "Decode concurrent requests in one batch (off: one generator per request).",
        ),
        click.option(
            "--prefix-cache",
            help="KV cache kept per model to reuse prompt beginnings (e.g. 512MB; 0: off) "
            "[default: a quarter of the batch rows' KV cache].",
        ),
        _shown(
            "--speculative/--no-speculative",
            click.BOOL,
            True,
            "Greedy answers (batch rows and generators alike) draft tokens by prompt lookup.",
        ),
        _shown(
            "--load-wait",
            click.FloatRange(min=0),
            10,
            "Seconds a request waits for its model to load; then 503 with Retry-After.",
        ),
        _shown("--ui/--no-ui", click.BOOL, True, "Serve the web playground at /."),
        click.option(
            "--cors",
            multiple=True,
            metavar="ORIGIN",
            help="Also allow web pages from ORIGIN (e.g. http://localhost:3000) to call the API; repeatable.",
        ),
    ]
    for flag in reversed(flags):
        function = flag(function)
    return function


def make_config(
    parallel,
    max_queue,
    keep_alive,
    max_memory,
    threads,
    grace,
    batching=True,
    api_key=None,
    load_wait=10.0,
    ui=True,
    cors=(),
    prefix_cache=None,
    speculative=True,
) -> ServerConfig:
    return ServerConfig(
        parallel=parallel,
        max_queue=max_queue,
        keep_alive=keep_alive,
        max_memory=parse_size(max_memory),
        threads=threads,
        api_key=api_key or None,
        grace=grace,
        batching=batching,
        load_wait=load_wait,
        ui=ui,
        cors=tuple(cors),
        prefix_cache=parse_size(prefix_cache, "--prefix-cache"),
        speculative=speculative,
    )


RAY_FLAGS = (
    "replicas",
    "cpus_per_replica",
    "min_replicas",
    "max_replicas",
    "scale_delay",
    "ray_address",
    "ray_config",
)


def ray_options(function):
    """The flags that run `serve` on Ray Serve (the `cluster` extra); none given, no Ray."""
    flags = [
        click.option("--replicas", type=click.IntRange(min=1), help="Run N replicas on Ray Serve [default: 1]."),
        click.option(
            "--cpus-per-replica",
            type=click.FloatRange(min=0.1),
            help="Ray CPUs per replica; also its threads unless --threads [default: 1].",
        ),
        click.option("--min-replicas", type=click.IntRange(min=0), help="Autoscale from this many replicas."),
        click.option("--max-replicas", type=click.IntRange(min=1), help="Autoscale up to this many replicas."),
        click.option(
            "--scale-delay",
            type=click.FloatRange(min=0.5),
            help="Autoscale once the load stayed above or below target this many seconds [default: 30 up, 600 down].",
        ),
        click.option(
            "--ray-address",
            help="An existing Ray cluster: 'auto' or 'ray://HOST:10001' [default: start a local Ray].",
        ),
        click.option(
            "--ray-config",
            type=click.Path(dir_okay=False, writable=True),
            help="Write the Ray Serve config file (for `serve deploy`, KubeRay) to this path and exit.",
        ),
    ]
    for flag in reversed(flags):
        function = flag(function)
    return function


@click.command()
@serve_options
@click.option(
    "--api-key", envvar="SLMOPS_API_KEY", help="Require this key (Bearer) on every request [env: SLMOPS_API_KEY]."
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="How much the server logs.",
)
@ray_options
def serve(models, host, port, api_key, log_level, **options) -> None:
    """Serve MODELS (cached names or folders) through an OpenAI-compatible API, in the foreground.

    Models not named here load on their first request. With --replicas, --min/--max-replicas,
    --ray-address or --ray-config, it runs on Ray Serve (see docs/scale-out.md).
    """
    cluster = {key: options.pop(key) for key in RAY_FLAGS}
    config = make_config(api_key=api_key, **options)
    if any(value is not None for value in cluster.values()):
        from slmops.server.cluster import serve_on_ray

        serve_on_ray(list(models), host, port, config, log_level, **cluster)
        return
    from slmops.server.run import serve as run

    run(list(models), host, port, config, log_level)


@click.group()
def service() -> None:
    """Run the service in the background: start, stop, status, restart."""


@service.command("start")
@serve_options
def start_command(models, host, port, **options) -> None:
    """Start the service in the background (the API key comes from SLMOPS_API_KEY)."""
    from slmops.server import service as background

    args = [*models, "--host", host, "--port", str(port)]
    for key, value in options.items():
        if isinstance(value, bool):
            args.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
        elif isinstance(value, tuple):  # a repeatable flag
            for item in value:
                args += [f"--{key.replace('_', '-')}", str(item)]
        elif value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    current, started = background.start(args)
    click.echo(f"{'Started' if started else 'Already running'}: {current.url} (pid {current.pid})")


@service.command("stop")
def stop_command() -> None:
    """Stop the background service, letting answers in flight finish."""
    from slmops.server import service as background

    click.echo("Stopped." if background.stop() else "The service is not running.")


@service.command("status")
def status_command() -> None:
    """Print the endpoint, pid, uptime and loaded models."""
    from slmops.server import service as background

    current = background.status()
    if not current.running:
        click.echo(f"The service is not running (log: {current.log}).")
        return
    loaded = ", ".join(current.loaded or []) or "none"
    click.echo(
        f"Running: {current.url}\npid: {current.pid}\nuptime: {_duration(current.uptime_s)}\n"
        f"loaded models: {loaded}\nlog: {current.log}"
    )


@service.command("restart")
def restart_command() -> None:
    """Stop the service and start it again with the flags of its last start."""
    from slmops.server import service as background

    current = background.restart()
    click.echo(f"Restarted: {current.url} (pid {current.pid})")


def _duration(seconds: float | None) -> str:
    seconds = int(seconds or 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


@click.command("ui")
@click.option("--no-browser", is_flag=True, help="Only print the page's address.")
def ui_command(no_browser: bool) -> None:
    """Open the web playground, starting the service in the background if it is not running.

    A service started here takes the flags of the last `slmops service start`, except --no-ui.
    """
    from slmops.server import ui_open

    url = ui_open.ensure_page()
    click.echo(f"Playground: {url}")
    if not no_browser and not ui_open.open_browser(url):
        click.echo("No browser could be opened here; open the address above in one.")
