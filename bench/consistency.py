"""Is every answer of a load run consistent with the registry's history? (`hydracat bench` load test.)

Timestamps. The registry stamps alias events and adapter rows with ``datetime.now(UTC)`` inside
the writing transaction, before its COMMIT, and stores microseconds (ISO text on SQLite,
``timestamptz`` on PostgreSQL); the load client stamps each request with ``time.time()`` on the same
host clock. Edges are compared with a tolerance of ``RESOLUTION_S`` (1 µs, the stored resolution).

A write is visible from its commit, which lies in ``[stamp, commit bound]``. The commit bound is
exact where the load run observed it (`commit_times`: in-process commits recorded by
`record_commit_times`, or the end of the HTTP response of a write), else ``stamp + commit_slack_s``.

Rules, per served response (``[start, end]`` = request sent .. response received):
- ``current`` of task T, 200 with bundle B: B was T's alias target at some instant of the window,
  i.e. some move k to B has ``stamp_k <= end`` and (if a later move k+1 exists) ``start <=
  commit_bound_{k+1}``; B exists, has a member for T, and the answer's head and adapter are it.
- ``current`` 404: T had no alias at some instant of the window: no move, or ``start <=
  commit_bound_1``.
- ``bundle`` 200: the bundle exists with exactly the returned members; 404: it does not exist.
- ``adapters`` (filtered by name) 200: every row returned exists with that id, version and sha256,
  none was stamped after ``end``, and none committed before ``start`` is missing.
- any other status is inconsistent; transport errors are not answers (counted by the load report).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Protocol

from registry.errors import NotFoundError

RESOLUTION_S = 1e-6
COMMIT_SLACK_S = 2.0  # an HTTP write committed up to 0.95 s before its response under CPU contention


@dataclass
class Answer:
    """One served (or failed) request: what was asked, when, and what came back."""

    endpoint: str  # "current" | "bundle" | "adapters"
    target: str  # task name, bundle id, or adapter name
    start: float  # time.time() just before sending
    end: float  # time.time() once the response was read
    status: int | None  # None: transport error
    body: dict | list | None = None


class RegistryView(Protocol):
    """What the check reads: `registry.api.Registry`, or the same reads over HTTP."""

    def history(self, task: str) -> list[dict]: ...

    def get_bundle(self, bundle_id: str) -> dict: ...

    def list_adapters(self, name: str | None = None) -> list[dict]: ...


@dataclass
class Consistency:
    checked: int
    inconsistent: int
    examples: list[dict] = field(default_factory=list)
    alias_moves_in_window: int = 0
    tasks_moved: int = 0
    observed_commits: int = 0  # moves in the window whose commit time was observed, not assumed
    max_commit_lag_ms: float | None = None  # largest observed commit - stamp
    commit_slack_s: float = COMMIT_SLACK_S
    resolution_s: float = RESOLUTION_S

    def to_dict(self) -> dict:
        return asdict(self)


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@dataclass(frozen=True)
class Move:
    bundle_id: str
    stamp: float
    commit_bound: float
    observed: bool  # commit_bound was observed, not stamp + slack


class Checker:
    """Checks answers against `view`; caches what it reads (history is read after the load)."""

    def __init__(
        self,
        view: RegistryView,
        commit_times: dict[tuple[str, int], float] | None = None,
        commit_slack_s: float = COMMIT_SLACK_S,
    ):
        self.view = view
        self.commit_times = commit_times or {}
        self.slack = commit_slack_s
        self._moves: dict[str, list[Move]] = {}
        self._bundles: dict[str, dict | None] = {}
        self._adapters: dict[str, list[dict]] = {}

    def bound(self, table: str, row: dict) -> float:
        return self.commit_times.get((table, row["id"]), epoch(row["created_at"]) + self.slack)

    def move(self, event: dict) -> Move:
        stamp = epoch(event["created_at"])
        observed = ("alias_events", event["id"]) in self.commit_times
        return Move(event["to_bundle_id"], stamp, self.bound("alias_events", event), observed)

    def moves(self, task: str) -> list[Move]:
        if task not in self._moves:
            try:
                events = sorted(self.view.history(task), key=lambda event: event["id"])
            except NotFoundError:
                events = []
            self._moves[task] = [self.move(event) for event in events]
        return self._moves[task]

    def bundle(self, bundle_id: str) -> dict | None:
        if bundle_id not in self._bundles:
            try:
                self._bundles[bundle_id] = self.view.get_bundle(bundle_id)
            except NotFoundError:
                self._bundles[bundle_id] = None
        return self._bundles[bundle_id]

    def adapters(self, name: str) -> list[dict]:
        if name not in self._adapters:
            self._adapters[name] = self.view.list_adapters(name=name)
        return self._adapters[name]

    def problem(self, answer: Answer) -> str | None:
        """Why `answer` contradicts the history, or None when it is consistent."""
        handler = {"current": self._current, "bundle": self._bundle, "adapters": self._listing}
        if answer.status not in (200, 404) or answer.endpoint not in handler:
            return f"unexpected status {answer.status} for {answer.endpoint}"
        if answer.status == 200 and answer.body is None:
            return "unreadable body"
        return handler[answer.endpoint](answer)

    def _current(self, answer: Answer) -> str | None:
        task, moves = answer.target, self.moves(answer.target)
        if answer.status == 404:
            if not moves or answer.start <= moves[0].commit_bound + RESOLUTION_S:
                return None
            return "404 although the task had an alias for the whole request"
        body = answer.body
        if body["task"] != task:
            return f"answered for task {body['task']!r}"
        bundle_id = body["bundle_id"]
        held = any(
            move.bundle_id == bundle_id
            and move.stamp - RESOLUTION_S <= answer.end
            and (k + 1 == len(moves) or answer.start <= moves[k + 1].commit_bound + RESOLUTION_S)
            for k, move in enumerate(moves)
        )
        if not held:
            return f"bundle {bundle_id} was not the task's alias target during the request"
        bundle = self.bundle(bundle_id)
        member = next((m for m in (bundle or {}).get("members", []) if m["task"] == task), None)
        if member is None:
            return f"bundle {bundle_id} does not exist or has no member for the task"
        if (member["head"], member["adapter"]) != (body["head"], body["adapter"]):
            return f"head/adapter differ from bundle {bundle_id}'s member"
        return None

    def _bundle(self, answer: Answer) -> str | None:
        bundle = self.bundle(answer.target)
        if answer.status == 404:
            return None if bundle is None else "404 for a bundle that exists"
        if bundle is None or answer.body["bundle_id"] != answer.target:
            return f"returned bundle {answer.body['bundle_id']!r} does not exist as asked"
        if answer.body["members"] != bundle["members"]:
            return "members differ from the registry's"
        return None

    def _listing(self, answer: Answer) -> str | None:
        if answer.status == 404:
            return "404 for a listing"
        rows = {row["id"]: row for row in self.adapters(answer.target)}
        key = ("name", "version", "sha256")
        for got in answer.body:
            row = rows.get(got["id"])
            if row is None or tuple(row[k] for k in key) != tuple(got[k] for k in key):
                return f"adapter {got['name']} {got['version']} (id {got['id']}) differs from the registry"
            if epoch(row["created_at"]) - RESOLUTION_S > answer.end:
                return f"adapter {got['name']} {got['version']} listed before it was registered"
        returned = {got["id"] for got in answer.body}
        missing = [
            r for r in rows.values() if r["id"] not in returned and self.bound("adapters", r) < answer.start
        ]
        if missing:
            return f"{len(missing)} adapter(s) committed before the request are missing"
        return None


def check_answers(
    answers: Sequence[Answer],
    view: RegistryView,
    *,
    commit_times: dict[tuple[str, int], float] | None = None,
    commit_slack_s: float = COMMIT_SLACK_S,
    window: tuple[float, float] | None = None,
    examples: int = 5,
) -> Consistency:
    """Check every served answer (see the module docstring); count alias moves stamped in `window`."""
    checker = Checker(view, commit_times, commit_slack_s)
    served = [answer for answer in answers if answer.status is not None]
    problems = []
    for answer in served:
        why = checker.problem(answer)
        if why is not None:
            problems.append({"endpoint": answer.endpoint, "target": answer.target, "status": answer.status,
                             "start": answer.start, "end": answer.end, "problem": why})  # fmt: skip
    tasks = sorted({a.target for a in answers if a.endpoint == "current"})
    low, high = window or (float("-inf"), float("inf"))
    moved = {task: [m for m in checker.moves(task) if low <= m.stamp <= high] for task in tasks}
    moves = [move for task_moves in moved.values() for move in task_moves]
    lags = [(move.commit_bound - move.stamp) * 1000.0 for move in moves if move.observed]
    return Consistency(
        checked=len(served),
        inconsistent=len(problems),
        examples=problems[:examples],
        alias_moves_in_window=len(moves),
        tasks_moved=sum(1 for task_moves in moved.values() if task_moves),
        observed_commits=len(lags),
        max_commit_lag_ms=max(lags) if lags else None,
        commit_slack_s=commit_slack_s,
    )


@contextmanager
def record_commit_times() -> Iterator[dict[tuple[str, int], float]]:
    """While open, every alias event and adapter row committed in this process: {(table, id): time}.

    The time is ``time.time()`` right after the session's COMMIT returned: an upper bound of when
    the row became visible to readers.
    """
    import time

    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from registry.models import Adapter, AliasEvent

    times: dict[tuple[str, int], float] = {}
    key = "hydracat_load_pending"

    def after_flush(session: Session, _context) -> None:
        rows = [obj for obj in session.new if isinstance(obj, AliasEvent | Adapter)]
        session.info.setdefault(key, []).extend(rows)

    def after_commit(session: Session) -> None:
        now = time.time()
        for row in session.info.pop(key, []):
            times[(row.__tablename__, row.id)] = now

    def after_rollback(session: Session) -> None:
        session.info.pop(key, None)

    hooks: list[tuple[str, Callable]] = [
        ("after_flush", after_flush), ("after_commit", after_commit), ("after_rollback", after_rollback),
    ]  # fmt: skip
    for name, hook in hooks:
        event.listen(Session, name, hook)
    try:
        yield times
    finally:
        for name, hook in hooks:
            event.remove(Session, name, hook)
