"""The page, its static files, and the cache details the page shows.

Every file this module reads is named by the server, never by the request: static files
come from a fixed listing of ``static/``, and a model's files from the folder the
registry resolves its name to, matched by exact name against that folder's listing.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from slmops.cache.scan import read_entry
from slmops.errors import SlmopsError
from slmops.server.errors import APIError, from_slmops
from slmops.server.openai_api import ERRORS, registry

STATIC = Path(str(resources.files("slmops.server.ui") / "static"))
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# No inline script or style, nothing from another origin; images may be blobs the page
# made from plots it fetched with the API key.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
REPORTS = {
    "inference_model": "inference_model.json",
    "conversion": "conversion.json",
    "deploy_report": "deploy-report.json",
}
MAX_REPORT_BYTES = 4 * 1024 * 1024

router = APIRouter(responses=ERRORS)


@router.get("/", include_in_schema=False)
async def page() -> Response:
    """The playground."""
    return _static("index.html")


@router.get("/ui/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """A file of the page (scripts, styles, icons)."""
    return _static(name)


def _static(name: str) -> Response:
    files = {path.name: path for path in STATIC.iterdir() if path.suffix in TYPES}
    if name not in files:
        raise APIError(404, f"No page file {name!r}.", code="not_found")
    return Response(files[name].read_bytes(), media_type=TYPES[files[name].suffix], headers=PAGE_HEADERS)


@router.get("/ui/api/models")
async def models(request: Request) -> list[dict]:
    """Every servable model with its precision, size on disk, context length and state."""
    reg = registry(request)
    found = await asyncio.to_thread(reg.catalog)
    loaded, loading = set(reg.loaded), set(reg.pending)
    rows = []
    for name, folder in found:
        entry = await asyncio.to_thread(read_entry, folder)
        state = "loaded" if name.casefold() in loaded else "loading" if name.casefold() in loading else "idle"
        rows.append(
            {
                "name": name,
                "precision": entry.precision if entry else None,
                "size_bytes": entry.size_bytes if entry else None,
                "context_length": entry.context_length if entry else None,
                "source": entry.source if entry else None,
                "state": state,
            }
        )
    return rows


@router.get("/ui/api/models/{name:path}/plots/{file}")
async def plot(request: Request, name: str, file: str) -> Response:
    """A PNG plot (bench, sweep) from a model's folder, by its exact file name."""
    _, folder = await _folder(request, name)
    if file not in _plots(folder):
        raise APIError(404, f"{name} has no plot {file!r}.", code="not_found")
    data = await asyncio.to_thread((folder / file).read_bytes)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get("/ui/api/models/{name:path}")
async def model_details(request: Request, name: str) -> dict:
    """A model's reports (inference_model.json, conversion.json, deploy-report.json) and plot names."""
    display, folder = await _folder(request, name)
    return {"name": display, **await asyncio.to_thread(_reports, folder), "plots": _plots(folder)}


async def _folder(request: Request, name: str) -> tuple[str, Path]:
    try:
        return await asyncio.to_thread(registry(request).locate, name)
    except SlmopsError as exc:
        raise from_slmops(exc) from exc


def _reports(folder: Path) -> dict:
    names = set(_listing(folder))
    return {key: _read_json(folder, file) if file in names else None for key, file in REPORTS.items()}


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(path.name for path in folder.iterdir() if path.is_file())
    except OSError:
        return []


def _plots(folder: Path) -> list[str]:
    return [name for name in _listing(folder) if name.lower().endswith(".png")]


def _read_json(folder: Path, file: str) -> dict | str:
    """The parsed report, or a one-line reason it could not be read (the page shows it)."""
    path = folder / file
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return f"{file} is larger than {MAX_REPORT_BYTES >> 20} MB; not shown."
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{file} could not be read: {exc}"
