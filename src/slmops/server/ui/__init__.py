"""The web playground and model dashboard `slmops serve` shows at ``/`` (off with ``--no-ui``).

The page is plain HTML, CSS and JavaScript modules shipped in ``static/``: no build step,
nothing fetched from elsewhere. It talks to the service through the same OpenAI and
management routes every client uses, plus two read-only JSON routes for what only the
cache knows (precision, size, context, reports); see :mod:`slmops.server.ui.routes`.
"""

from slmops.server.ui.routes import CSP, router

__all__ = ["CSP", "router"]
