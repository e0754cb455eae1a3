"""`slmops cache ...`: the command line over :mod:`slmops.cache.store`."""

from __future__ import annotations

import json

import click

from slmops.cache import store


@click.group()
def cache() -> None:
    """Manage the model cache (Foundry Local's layout: a folder per model)."""


@cache.command()
def location() -> None:
    """Print the cache folder."""
    click.echo(str(store.location()))


@cache.command()
@click.argument("path", type=click.Path(file_okay=False))
def cd(path: str) -> None:
    """Move the cache to PATH (created if missing); models at the old place stay there."""
    old = store.location()
    left_behind = [model for model in store.scan(old)] if old.is_dir() else []
    new = store.set_location(path)
    click.echo(f"The cache is now {new}")
    if left_behind and new != old:
        click.echo(f"{len(left_behind)} model(s) stay in {old}; `slmops cache cd {old}` brings them back.")


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", help="Output format.")
def ls(as_json: bool, output: str) -> None:
    """List the cached models, valid or not (then with the reason)."""
    models = store.scan()
    if as_json or output == "json":
        click.echo(json.dumps([model.to_dict() for model in models], indent=2, ensure_ascii=False))
        return
    _print_table(models)


cache.add_command(ls, "list")


@cache.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", help="The model's name (default: from its inference_model.json, else the folder).")
@click.option("--link", is_flag=True, help="Symlink the model files instead of copying them.")
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
def add(folder: str, name: str | None, link: bool, force: bool) -> None:
    """Add a converted model FOLDER to the cache, as custom/<name>/."""
    entry = store.add(folder, name=name, link=link, force=force)
    click.echo(f"Added {entry.name} ({_size(entry.size_bytes)}) at {entry.path}")
    if not entry.valid:
        click.echo(f"Warning: the model is not usable yet: {entry.reason}", err=True)


@cache.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def remove(name: str, yes: bool) -> None:
    """Remove the model NAME from the cache (deletes its folder)."""
    entry = store.find(name, include_invalid=True)
    if not yes:
        click.confirm(f"Delete {entry.name} ({_size(entry.size_bytes)}) at {entry.path}?", abort=True)
    store.remove(entry.name)
    click.echo(f"Removed {entry.name}")


def _print_table(models: list[store.CachedModel]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from slmops.console import make_console, print_table

    console = make_console()
    if not models:
        console.print(f"No models in {store.location()}. Add one with `slmops cache add FOLDER`.")
        return
    table = Table(title=f"Models in {store.location()}")
    for column in ("Name", "Version", "Precision", "Size", "Path"):
        table.add_column(column, overflow="fold")
    for model in models:
        name = escape(model.name) if model.valid else f"[red]{escape(model.name)} (invalid)[/red]"
        table.add_row(name, model.version or "", model.precision or "", _size(model.size_bytes), str(model.path))
    print_table(table, console)
    for model in models:
        if not model.valid:
            console.print(
                f"[red]{escape(model.name)}[/red] ({escape(str(model.path))}): {escape(model.reason or '')}",
                highlight=False,
            )


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
