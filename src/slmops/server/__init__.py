"""The OpenAI-compatible service: ``create_app`` (ASGI) and ``serve`` (uvicorn, foreground).

from slmops.server import serve
serve(["smollm2-135m-instruct"], port=5273)
"""

from slmops.server.app import create_app
from slmops.server.config import ServerConfig
from slmops.server.run import serve

__all__ = ["ServerConfig", "create_app", "serve"]
