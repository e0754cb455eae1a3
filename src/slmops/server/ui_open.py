"""`slmops ui`: the page of the background service, started first if it is not running."""

from __future__ import annotations

import urllib.error
import urllib.request
import webbrowser

from slmops import client
from slmops.errors import ServiceError
from slmops.server import service


def ensure_page() -> str:
    """The playground's address, starting the service without ``--no-ui`` if none runs.

    Raises:
        ServiceError: the service could not start, or the one running serves no page.
    """
    current, _ = service.start([arg for arg in service.last_args() if arg != "--no-ui"])
    state = client.read_state()
    if not current.running or state is None:
        raise ServiceError("The service stopped right after it started; see `slmops service status`.")
    url = client.state_url(state) + "/"
    if not _serves_page(url):
        raise ServiceError(
            "The running service was started with --no-ui; stop it (`slmops service stop`) and run `slmops ui` again."
        )
    return url


def open_browser(url: str) -> bool:
    """Open ``url`` in the user's browser ($BROWSER or the desktop's); False when there is none."""
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def _serves_page(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False
