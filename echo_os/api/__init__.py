"""The HTTP API: `echo-os serve`, FastAPI + uvicorn over a durable SQLite job queue.

    from echo_os.api import ApiOptions, create_app
    app = create_app(settings, token=None, options=ApiOptions(max_batch=8))
"""

from echo_os.api.app import create_app
from echo_os.api.deps import ApiOptions

__all__ = ["ApiOptions", "create_app"]
