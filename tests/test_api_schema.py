"""schemathesis over /openapi.json: generated requests for every operation never get a 5xx; responses
have documented status codes, content types and schemas; requests that break the schema are rejected.
(Not checked: that every schema-valid request is accepted. Some bounds are not in the schema: sizes are
multiples of 8, a model must be in models.toml, a storyboard must parse; those are 422s by design.)

The app renders with an instant fake engine (8x8 images), so generated jobs finish at once; the number of
examples is kept small so the run stays in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - after the importorskip above
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402 - after the importorskip above

from echo_os.api import ApiOptions, create_app  # noqa: E402 - after the importorskip above
from echo_os.settings import Settings  # noqa: E402 - after the importorskip above
from tests.api_helpers import FakeEngine  # noqa: E402 - after the importorskip above

# The spec does not depend on the workspace, and create_app touches no file until its lifespan starts.
schema = schemathesis.openapi.from_dict(create_app(Settings(home=Path("unused"))).openapi())


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("schema-ws")
    app = create_app(Settings(home=home), make_engine=FakeEngine(max_batch=64),
                     options=ApiOptions(batch_window_ms=0, max_batch=64))
    yield app
    try:  # stop the app's worker now instead of at interpreter exit
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()
    except ImportError:
        pass


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_spec(case, served_app):
    response = case.call_and_validate(app=served_app, timeout=60, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
