"""The HTTP API under a paced load while real consolidate runs move aliases, every answer checked
against the alias history; and the check itself, shown to catch contradicting answers."""

import http.client
import time

import httpx
import pytest

from bench.consistency import COMMIT_SLACK_S, Answer, check_answers
from bench.load import load_under_publishing, run_load, start_api_server
from flows.processes import stop_process
from registry.api import Registry
from registry.db import make_engine, upgrade
from tests.flow_fixtures import harness_fixture  # noqa: F401
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    registry_fixture,
    seed,
)

SECONDS, RATE = 10.0, 100.0
LATER = 10 * COMMIT_SLACK_S  # well past any commit of a move


def test_load_while_aliases_move(harness, empty_db_url, tmp_path):
    report = load_under_publishing(tmp_path, database_url=empty_db_url, seconds=SECONDS, rate=RATE).to_dict()
    assert report["server_errors"] == 0 and report["transport_errors"] == 0, report["error_samples"]
    assert report["publisher"]["errors"] == 0, report["publisher"]["error_samples"]
    consistency = report["consistency"]
    assert consistency["inconsistent"] == 0, consistency["examples"]
    assert consistency["checked"] == report["served"] == report["sent"] == SECONDS * RATE
    assert consistency["alias_moves_in_window"] >= 4 and consistency["tasks_moved"] == 3
    assert set(report["by_endpoint"]) == {"current", "bundle", "adapters"}
    assert report["by_endpoint"]["current"]["by_status"]["404"] > 0  # the last task, before its first move
    assert 0 < report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]


def test_run_load_checks_through_the_read_endpoints(registry: Registry, db_url, tmp_path, monkeypatch):
    """`run_load` alone, against a server whose aliases hold still: the check reads over HTTP."""
    seed(registry, ["b1", "b2"], ["sst2", "agnews"])
    registry.move_alias("sst2", "b1", reason="publish", actor="flow")
    registry.move_alias("agnews", "b2", reason="publish", actor="flow")
    monkeypatch.setenv("HYDRACAT_STORE_URL", (tmp_path / "objects").as_uri())
    process, base_url = start_api_server(db_url, "t0ken", tmp_path / "api.log")
    try:
        report = run_load(base_url, ["sst2", "agnews", "nope"], seconds=2.0, rate=50.0)
    finally:
        stop_process(process)
    assert report.sent == report.served == 100 and report.server_errors == report.transport_errors == 0
    assert report.consistency.checked == 100 and report.consistency.inconsistent == 0
    assert report.consistency.alias_moves_in_window == 0  # the moves came before the load
    assert report.by_endpoint["current"]["by_status"]["404"] > 0  # "nope" has no alias, and never had
    assert report.by_endpoint["bundle"]["by_status"] == {"200": report.by_endpoint["bundle"]["n"]}


def test_an_idle_connection_outlives_the_clients_idle_expiry(tmp_path):
    """The server keeps an idle keep-alive connection open past httpx's 5 s expiry, so the client closes
    it first and never sends on a connection the server is closing (a ReadError under load, before)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"  # the HTTP server's setting: one database is enough
    upgrade(make_engine(url))
    process, base_url = start_api_server(url, "t0ken", tmp_path / "api.log")
    connection = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=10)
    try:
        for pause_s in (0.0, httpx.Limits().keepalive_expiry + 1.0):
            time.sleep(pause_s)
            connection.request("GET", "/v1/adapters")  # on the same socket, after the pause
            assert connection.getresponse().read() == b"[]"
    finally:
        connection.close()
        stop_process(process)


def stamp(event: dict) -> float:
    from bench.consistency import epoch

    return epoch(event["created_at"])


@pytest.fixture
def moved(registry: Registry) -> dict:
    """sst2 moved to b1, then to b2; agnews never moved. Returns the answers the registry gives now."""
    seed(registry, ["b1", "b2"], ["sst2", "agnews"])
    registry.move_alias("sst2", "b1", reason="publish", actor="flow")
    registry.move_alias("sst2", "b2", reason="publish", actor="flow")
    to_b2, to_b1 = registry.history("sst2")
    return {"to_b1": to_b1, "to_b2": to_b2, "current": registry.current_bundle("sst2")}


def current_answer(registry: Registry, bundle_id: str, start: float, task: str = "sst2") -> Answer:
    bundle = registry.get_bundle(bundle_id)
    member = next(m for m in bundle["members"] if m["task"] == task)
    body = {"task": task, "bundle_id": bundle_id, "head": member["head"], "adapter": member["adapter"]}
    return Answer("current", task, start, start + 0.005, 200, body)


def problems(answers: list[Answer], registry: Registry, **kwargs) -> list[str]:
    report = check_answers(answers, registry, **kwargs)
    assert report.checked == len(answers)
    return [example["problem"] for example in report.examples]


def test_the_check_accepts_what_the_history_allows(registry: Registry, moved: dict):
    t1, t2 = stamp(moved["to_b1"]), stamp(moved["to_b2"])
    answers = [
        current_answer(registry, "b1", t1),  # b1 from its move until b2's
        current_answer(registry, "b1", t2 - 0.001),  # a request started before b2's commit
        current_answer(registry, "b2", t2 + LATER),
        Answer("current", "sst2", t1 - 1.0, t1 - 0.5, 404),  # before the first move
        Answer("current", "agnews", t2 + LATER, t2 + LATER + 0.1, 404),  # never moved
        Answer(
            "bundle",
            "b1",
            t2,
            t2 + 0.01,
            200,
            {"bundle_id": "b1", "members": registry.get_bundle("b1")["members"]},
        ),
        Answer("bundle", "ghost", t2, t2 + 0.01, 404),
        Answer(
            "adapters",
            "sst2-adapter",
            t2 + LATER,
            t2 + LATER + 0.1,
            200,
            registry.list_adapters(name="sst2-adapter"),
        ),
    ]
    report = check_answers(answers, registry, window=(t1 - 1.0, t2 + 2.0))
    assert (report.checked, report.inconsistent) == (len(answers), 0), report.examples
    assert (report.alias_moves_in_window, report.tasks_moved) == (2, 1)


def test_the_check_catches_answers_that_contradict_the_history(registry: Registry, moved: dict):
    t1, t2 = stamp(moved["to_b1"]), stamp(moved["to_b2"])
    members = registry.get_bundle("b1")["members"]
    listing = registry.list_adapters(name="sst2-adapter")
    tampered = [dict(listing[0], sha256="0" * 64)]
    wrong_head = dict(current_answer(registry, "b2", t2 + LATER).body, head=7)
    cases = [
        (current_answer(registry, "b1", t2 + LATER), "not the task's alias target"),  # long after b2
        (current_answer(registry, "b2", t1 - LATER), "not the task's alias target"),  # before b2 existed
        (current_answer(registry, "b1", t2 + LATER, task="agnews"), "not the task's alias target"),
        (
            Answer("current", "sst2", t2 + LATER, t2 + LATER + 0.1, 404),
            "404 although",
        ),  # after the first move
        (Answer("current", "sst2", t2 + LATER, t2 + LATER + 0.1, 200, wrong_head), "head/adapter differ"),
        (Answer("current", "sst2", t2 + LATER, t2 + LATER + 0.1, 500), "unexpected status 500"),
        (
            Answer("bundle", "b1", t2, t2 + 0.01, 200, {"bundle_id": "b1", "members": members[:1]}),
            "members differ",
        ),
        (
            Answer("bundle", "ghost", t2, t2 + 0.01, 200, {"bundle_id": "ghost", "members": members}),
            "not exist",
        ),
        (Answer("bundle", "b1", t2, t2 + 0.01, 404), "404 for a bundle that exists"),
        (
            Answer("adapters", "sst2-adapter", t2 + LATER, t2 + LATER + 0.1, 200, tampered),
            "differs from the registry",
        ),
        (
            Answer("adapters", "sst2-adapter", t2 + LATER, t2 + LATER + 0.1, 200, []),
            "committed before the request are missing",
        ),
    ]
    found = problems([answer for answer, _ in cases], registry, examples=len(cases))
    assert len(found) == len(cases), found
    for (_, expected), why in zip(cases, found, strict=True):
        assert expected in why


def test_observed_commit_times_tighten_the_check(registry: Registry, moved: dict):
    t2 = stamp(moved["to_b2"])
    late = current_answer(registry, "b1", t2 + 0.1)  # b1, 100 ms after b2 was stamped
    assert problems([late], registry) == []  # possible if the commit took up to the default slack
    commits = {("alias_events", moved["to_b2"]["id"]): t2 + 0.01}  # but it was seen committed at 10 ms
    (why,) = problems([late], registry, commit_times=commits)
    assert "not the task's alias target" in why
