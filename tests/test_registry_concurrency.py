"""Two processes moving the same task alias at once: every move logged, nothing lost."""

import multiprocessing
import time

from registry.api import Registry
from registry.db import make_engine
from tests.registry_fixtures import (  # noqa: F401
    db_url_fixture,
    empty_db_url_fixture,
    registry_fixture,
    seed,
)

MOVES = 60
BUNDLES = ["b1", "b2", "b3"]


def move_many(db_url: str, actor: str, moves: int, start) -> None:
    engine = make_engine(db_url)
    registry = Registry(engine)
    start.wait(60)  # both processes connected: start moving together
    for i in range(moves):
        registry.move_alias("sst2", BUNDLES[i % len(BUNDLES)], reason=f"move {i}", actor=actor)
        time.sleep(0.005)  # a breath between moves, so a waiting writer gets its turn
    engine.dispose()


def test_concurrent_processes_moving_one_alias_lose_nothing(db_url: str, registry: Registry):
    seed(registry, BUNDLES, ["sst2"])
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [
        context.Process(target=move_many, args=(db_url, actor, MOVES, start)) for actor in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0

    history = list(reversed(registry.history("sst2")))  # oldest first
    assert len(history) == 2 * MOVES
    for actor in ("p1", "p2"):
        reasons = [event["reason"] for event in history if event["actor"] == actor]
        assert reasons == [f"move {i}" for i in range(MOVES)]
    assert history[0]["from_bundle_id"] is None
    for before, after in zip(history, history[1:]):
        assert after["from_bundle_id"] == before["to_bundle_id"]  # moves were serialised
    assert registry.current_bundle("sst2")["bundle_id"] == history[-1]["to_bundle_id"]
    actors = [event["actor"] for event in history]
    assert actors.index("p2") < len(actors) - 1 - actors[::-1].index("p1")  # the runs overlapped
    assert actors.index("p1") < len(actors) - 1 - actors[::-1].index("p2")
