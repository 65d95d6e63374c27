"""HTTP API through FastAPI's TestClient: the Python shapes, 404s and bearer-token writes."""

import pytest
from fastapi.testclient import TestClient

from registry.api import Registry
from registry.http import create_app
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    registry_fixture,
    seed,
)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(registry: Registry) -> TestClient:
    seed(registry, ["b1", "b2"], ["sst2", "agnews"])
    registry.move_alias("sst2", "b1", reason="publish", actor="flow")
    registry.move_alias("sst2", "b2", reason="publish", actor="flow")
    return TestClient(create_app(registry, TOKEN))


def test_reads_return_the_python_shapes(client: TestClient, registry: Registry):
    response = client.get("/v1/tasks/sst2/bundle")
    assert response.status_code == 200
    assert response.json() == registry.current_bundle("sst2")
    assert client.get("/v1/tasks/sst2/history").json() == registry.history("sst2")
    assert client.get("/v1/bundles/b1").json() == registry.get_bundle("b1")
    adapters = client.get("/v1/adapters", params={"base_model": "tiny-llama", "name": "sst2-adapter"})
    assert adapters.json() == registry.list_adapters(name="sst2-adapter")
    assert len(client.get("/v1/adapters").json()) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tasks/nope/bundle",
        "/v1/tasks/nope/history",
        "/v1/bundles/nope",
        "/v1/tasks/agnews/bundle",
    ],
)
def test_unknown_things_are_404_with_a_message(client: TestClient, path: str):
    response = client.get(path)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"] or "no 'current' bundle" in response.json()["detail"]


def test_bad_filter_is_400(client: TestClient):
    response = client.get("/v1/adapters", params={"status": "gone"})
    assert response.status_code == 400 and "status must be one of" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/tasks/sst2/rollback", "/v1/adapters/sst2-adapter/1/retire"])
def test_writes_need_the_bearer_token(client: TestClient, path: str):
    missing = client.post(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post(path, headers=AUTH).status_code == 200


def test_writes_are_refused_without_a_configured_token(registry: Registry):
    client = TestClient(create_app(registry, None))
    response = client.post("/v1/tasks/sst2/rollback", headers=AUTH)
    assert response.status_code == 503 and "HYDRACAT_API_TOKEN" in response.json()["detail"]


def test_rollback_and_retire(client: TestClient, registry: Registry):
    event = client.post("/v1/tasks/sst2/rollback", headers=AUTH, json={"actor": "ops"}).json()
    assert (event["from_bundle_id"], event["to_bundle_id"], event["actor"]) == ("b2", "b1", "ops")
    assert registry.current_bundle("sst2")["bundle_id"] == "b1"
    again = client.post("/v1/tasks/sst2/rollback", headers=AUTH)
    assert again.status_code == 400 and "no earlier" in again.json()["detail"]
    assert client.post("/v1/tasks/nope/rollback", headers=AUTH).status_code == 404

    retired = client.post("/v1/adapters/sst2-adapter/1/retire", headers=AUTH).json()
    assert retired["status"] == "retired"
    assert client.post("/v1/adapters/sst2-adapter/9/retire", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer", 401),  # no credentials
        ("Bearer ", 401),
        (f"Basic {TOKEN}", 401),  # another scheme
        (TOKEN, 401),  # no scheme
        ("Bearer wrong", 403),
        (f"Bearer {TOKEN[:-1]}", 403),  # a prefix of the token
        (f"Bearer {TOKEN}x", 403),
        (f"Bearer {TOKEN.upper()}", 403),
    ],
)
def test_refused_writes_change_nothing(
    client: TestClient, registry: Registry, header: str | None, status: int
):
    before = (registry.history("sst2"), registry.list_adapters())
    headers = {"Authorization": header} if header is not None else {}
    for path in ["/v1/tasks/sst2/rollback", "/v1/adapters/sst2-adapter/1/retire"]:
        response = client.post(path, headers=headers)
        assert response.status_code == status, response.text
        assert TOKEN not in response.text
    assert (registry.history("sst2"), registry.list_adapters()) == before


LEAK = "connection to /srv/hydracat/secret.db failed in registry/api.py line 42: SELECT * FROM task_aliases"


@pytest.mark.parametrize(
    ("method", "path", "call"),
    [
        ("get", "/v1/tasks/sst2/bundle", "current_bundle"),
        ("get", "/v1/adapters", "list_adapters"),
        ("post", "/v1/tasks/sst2/rollback", "rollback"),
    ],
)
def test_an_internal_error_is_a_500_without_details(
    client: TestClient, registry: Registry, monkeypatch, caplog, method: str, path: str, call: str
):
    from sqlalchemy.exc import OperationalError

    def fail(*_args, **_kwargs):
        raise OperationalError("SELECT * FROM task_aliases", {}, RuntimeError(LEAK))

    monkeypatch.setattr(Registry, call, fail)
    quiet = TestClient(client.app, raise_server_exceptions=False)
    response = getattr(quiet, method)(path, headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error, see the server log"}
    for leak in ["Traceback", "OperationalError", "RuntimeError", ".py", "secret.db", "SELECT", 'File "']:
        assert leak not in response.text
    assert LEAK in caplog.text  # the details go to the server log
