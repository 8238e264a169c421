"""The HTTP API's routes: one APIRouter per resource, included by the app factory (echo_os.api.app)."""
