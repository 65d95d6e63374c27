"""Open-loop HTTP load on the registry API, every answer checked against the alias history.

`run_load(base_url, tasks)` sends requests paced open-loop (request i at t0 + i / rate, whatever
earlier requests are doing) over one keep-alive httpx client, mixing ``GET /v1/tasks/{task}/bundle``
("current"), ``GET /v1/bundles/{id}`` ("bundle": ids seen in earlier current answers) and
``GET /v1/adapters?name={task}`` ("adapters"). Each request is recorded with its endpoint, status,
latency (perf_counter), start and end (``time.time()``, the clock of the registry's timestamps) and
body; then `bench.consistency.check_answers` checks every answer against the history.

`load_under_publishing(workdir)` is the whole test: a registry, the real API server (`hydracat api`
in a child process), a `Publisher` moving aliases with real flow runs, and the load.
`send_paced` is the pacing core, shared with `hydracat bench registry`.
"""

import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.consistency import (
    COMMIT_SLACK_S,
    Answer,
    Consistency,
    RegistryView,
    check_answers,
    record_commit_times,
)
from bench.host import child_env
from flows.processes import free_port, stop_process, wait_until_answering
from flows.settings import FlowSettings
from registry.errors import NotFoundError

MIX = {"current": 0.6, "bundle": 0.25, "adapters": 0.15}
PATHS = {"current": "/v1/tasks/{}/bundle", "bundle": "/v1/bundles/{}", "adapters": "/v1/adapters?name={}"}
WARMUP = 50
SEED = 1234


def latency_stats(samples_s: list[float]) -> dict:
    """p50/p99/mean/max in milliseconds (inclusive quantiles over all samples)."""
    ms = [s * 1000.0 for s in samples_s]
    if len(ms) == 1:
        ms = ms * 2
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(samples_s),
        "p50_ms": cuts[49],
        "p99_ms": cuts[98],
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


@dataclass(frozen=True)
class Call:
    endpoint: str  # a key of PATHS
    target: str  # task name, bundle id or adapter name

    @property
    def path(self) -> str:
        return PATHS[self.endpoint].format(quote(self.target, safe=""))


@dataclass
class Record(Answer):
    latency_s: float = 0.0
    lag_s: float = 0.0  # how late it was sent against its schedule
    error: str | None = None


def body_of(endpoint: str, data: dict | list) -> dict | list:
    """The parts of a 200 body the check reads."""
    if endpoint == "current":
        return {key: data[key] for key in ("task", "bundle_id", "head", "adapter")}
    if endpoint == "bundle":
        return {"bundle_id": data["bundle_id"], "members": data["members"]}
    return [{key: row[key] for key in ("id", "name", "version", "sha256")} for row in data]


@dataclass
class Sent:
    records: list[Record]
    requests: int  # scheduled
    sent: int  # issued (scheduled ones still unsent at the deadline are not)
    unanswered: int  # scheduled, but unsent or without a response at the deadline
    duration_s: float


async def send_paced(
    base_url: str,
    next_call: Callable[[int], Call],
    count: int,
    rate: float,
    *,
    warmup: Sequence[Call] = (),
    timeout_s: float = 10.0,
    grace_s: float = 15.0,
    max_in_flight: int = 32,
    on_record: Callable[[Record], None] | None = None,
) -> Sent:
    """Send `count` requests open-loop at `rate`/s; `next_call(i)` picks request i when it is due.

    `warmup` calls go first, one at a time, unrecorded. At most `max_in_flight` requests are out
    (one connection each); a request due while that many are out waits, and the wait counts in its
    latency (timed from when it was sent for, not from when a connection was free). httpx's pool
    costs O(connections + queued requests) per request, so an unbounded queue would make the
    client, not the server, the bottleneck. Requests not answered `grace_s` after the last one was
    due are cancelled and counted as unanswered.
    """
    import httpx

    records: list[Record] = []
    issued = 0
    slots = asyncio.Semaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:
        for call in warmup:
            await client.get(call.path)

        async def one(i: int, due: float) -> None:
            nonlocal issued
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            call = next_call(i)
            issued += 1
            start, started = time.time(), time.perf_counter()
            record = Record(call.endpoint, call.target, start, start, None, lag_s=started - due)
            try:
                async with slots:
                    response = await client.get(call.path)
                record.latency_s, record.end = time.perf_counter() - started, time.time()
                record.status = response.status_code
                if response.status_code == 200:
                    record.body = body_of(call.endpoint, response.json())
            except httpx.HTTPError as exc:
                record.latency_s, record.end = time.perf_counter() - started, time.time()
                record.status, record.error = None, f"{type(exc).__name__}: {exc}"
            except (ValueError, KeyError, TypeError) as exc:
                record.error = f"unreadable {call.endpoint} body: {type(exc).__name__}: {exc}"
            records.append(record)
            if on_record is not None:
                on_record(record)

        t0 = time.perf_counter() + 0.05
        pending = [asyncio.create_task(one(i, t0 + i / rate)) for i in range(count)]
        _, not_done = await asyncio.wait(pending, timeout=count / rate + grace_s)
        for task in not_done:
            task.cancel()
        duration = time.perf_counter() - t0
    return Sent(records, count, issued, count - len(records), duration)


class MixedCalls:
    """Request i: an endpoint drawn by `mix` weights; "bundle" asks for an id seen in a current answer."""

    def __init__(self, tasks: list[str], mix: Mapping[str, float], seed: int):
        if not set(mix) <= set(PATHS):
            raise ValueError(f"mix names unknown endpoints: {sorted(set(mix) - set(PATHS))}")
        self.tasks = tasks
        self.endpoints, self.weights = list(mix), list(mix.values())
        self.rng = random.Random(seed)
        self.bundles: list[str] = []

    def __call__(self, _i: int) -> Call:
        endpoint = self.rng.choices(self.endpoints, self.weights)[0]
        if endpoint == "bundle" and self.bundles:
            return Call("bundle", self.rng.choice(self.bundles))
        return Call("adapters" if endpoint == "adapters" else "current", self.rng.choice(self.tasks))

    def observe(self, record: Record) -> None:
        if record.endpoint == "current" and record.body and record.body["bundle_id"] not in self.bundles:
            self.bundles.append(record.body["bundle_id"])


class HttpView:
    """The registry reads the check needs, through the API's read endpoints."""

    def __init__(self, base_url: str):
        import httpx

        self.client = httpx.Client(base_url=base_url, timeout=30.0)

    def _get(self, path: str, **params) -> dict | list:
        response = self.client.get(path, params=params)
        if response.status_code == 404:
            raise NotFoundError(response.json()["detail"])
        response.raise_for_status()
        return response.json()

    def history(self, task: str) -> list[dict]:
        return self._get(f"/v1/tasks/{quote(task, safe='')}/history")

    def get_bundle(self, bundle_id: str) -> dict:
        return self._get(f"/v1/bundles/{quote(bundle_id, safe='')}")

    def list_adapters(self, name: str | None = None) -> list[dict]:
        return self._get("/v1/adapters", **({"name": name} if name else {}))


@dataclass
class LoadReport:
    config: dict
    requests: int
    sent: int
    served: int
    by_status: dict[str, int]
    server_errors: int  # 5xx
    transport_errors: int  # no response: connection errors, timeouts, unfinished at the deadline
    error_samples: list[str]
    duration_s: float
    achieved_rate: float  # served / duration
    latency: dict  # over every served request
    by_endpoint: dict[str, dict]
    send_lag_p99_ms: float | None
    window: tuple[float, float]  # time.time() of the first send and the last response
    consistency: Consistency
    publisher: dict | None = None
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def generate(
    base_url: str, tasks: list[str], *, seconds: float, rate: float, mix: Mapping[str, float], seed: int
) -> Sent:
    """The paced mixed load (after a warm-up of current lookups), sent from a child process.

    The child has its own interpreter lock, so work in the caller, such as a publisher's flow
    runs, cannot stall the sending or the timing. Its records come back as JSON.
    """
    spec = {
        "base_url": base_url,
        "tasks": tasks,
        "seconds": seconds,
        "rate": rate,
        "mix": dict(mix),
        "seed": seed,
    }
    with tempfile.TemporaryDirectory(prefix="hydracat-load-") as tmp:
        out = Path(tmp) / "sent.json"
        command = [sys.executable, "-m", "bench.load", json.dumps(spec), str(out)]
        subprocess.run(command, env=child_env(), check=True)
        data = json.loads(out.read_text())
    return Sent(**{**data, "records": [Record(**record) for record in data["records"]]})


def send_mixed(base_url: str, tasks: list[str], seconds: float, rate: float, mix: dict, seed: int) -> Sent:
    calls = MixedCalls(tasks, mix, seed)
    warmup = [Call("current", tasks[i % len(tasks)]) for i in range(WARMUP)]
    count = max(1, int(seconds * rate))
    return asyncio.run(send_paced(base_url, calls, count, rate, warmup=warmup, on_record=calls.observe))


def client_main(argv: list[str]) -> int:
    """The load client child: `python -m bench.load SPEC_JSON OUT_JSON`."""
    spec, out = argv
    Path(out).write_text(json.dumps(asdict(send_mixed(**json.loads(spec)))))
    return 0


def report_of(sent: Sent, config: dict, consistency: Consistency) -> LoadReport:
    records = sent.records
    served = [r for r in records if r.status is not None]
    failed = [r for r in records if r.error is not None]
    by_endpoint = {}
    for endpoint in sorted({r.endpoint for r in served}):
        mine = [r for r in served if r.endpoint == endpoint]
        statuses = Counter(str(r.status) for r in mine)
        by_endpoint[endpoint] = {**latency_stats([r.latency_s for r in mine]), "by_status": dict(statuses)}
    return LoadReport(
        config=config,
        requests=sent.requests,
        sent=sent.sent,
        served=len(served),
        by_status=dict(Counter(str(r.status) for r in served)),
        server_errors=sum(1 for r in served if r.status >= 500),
        transport_errors=sum(1 for r in records if r.status is None) + sent.unanswered,
        error_samples=[f"{r.endpoint} {r.target}: {r.error}" for r in failed[:5]],
        duration_s=sent.duration_s,
        achieved_rate=len(served) / sent.duration_s if sent.duration_s > 0 else 0.0,
        latency=latency_stats([r.latency_s for r in served]) if served else {"n": 0},
        by_endpoint=by_endpoint,
        send_lag_p99_ms=latency_stats([r.lag_s for r in records])["p99_ms"] if records else None,
        window=window_of(records),
        consistency=consistency,
    )


def window_of(records: list[Record]) -> tuple[float, float]:
    return (min(r.start for r in records), max(r.end for r in records)) if records else (0.0, 0.0)


def run_load(
    base_url: str,
    tasks: list[str],
    *,
    seconds: float = 60.0,
    rate: float = 200.0,
    mix: Mapping[str, float] = MIX,
    seed: int = SEED,
    view: RegistryView | None = None,
    commit_times: dict[tuple[str, int], float] | None = None,
    commit_slack_s: float = COMMIT_SLACK_S,
) -> LoadReport:
    """Load `base_url` for `seconds` at `rate` req/s over `tasks`, then check every answer.

    `view` is what the check reads the history from (a `registry.api.Registry` on the same
    database; default: the server's own read endpoints, after the load). `commit_times` are
    observed commit bounds, see `bench.consistency`.
    """
    sent = generate(base_url, tasks, seconds=seconds, rate=rate, mix=mix, seed=seed)
    consistency = check_answers(
        sent.records, view or HttpView(base_url), commit_times=commit_times,
        commit_slack_s=commit_slack_s, window=window_of(sent.records),
    )  # fmt: skip
    config = {"base_url": base_url, "tasks": tasks, "seconds": seconds, "rate": rate, "mix": dict(mix),
              "seed": seed, "warmup": WARMUP}  # fmt: skip
    return report_of(sent, config, consistency)


# the whole test: registry, server, publisher, load


@contextmanager
def environment(values: Mapping[str, str], drop: Sequence[str] = ()) -> Iterator[None]:
    """`values` set and `drop` unset in os.environ while open; restored afterwards."""
    saved = {name: os.environ.get(name) for name in [*values, *drop]}
    os.environ.update(values)
    for name in drop:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_api_server(database_url: str, token: str, log_path: Path, timeout_s: float = 60.0) -> tuple:
    """`hydracat api` in a child process on a free loopback port: (process, base URL)."""
    port = free_port()
    env = child_env(HYDRACAT_API_TOKEN=token)
    command = [sys.executable, "-m", "flows.cli", "api", "--database-url", database_url, "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, f"{base_url}/v1/adapters", "the registry API", timeout_s, poll_s=0.1)
    except (RuntimeError, TimeoutError) as exc:  # exited, or did not answer in time
        raise RuntimeError(f"{exc}; its log: {log_path.read_text()[-2000:]}") from exc
    return process, base_url


def load_under_publishing(
    workdir: Path,
    *,
    database_url: str | None = None,
    tasks: int = 3,
    seconds: float = 60.0,
    rate: float = 200.0,
    mix: Mapping[str, float] = MIX,
    seed: int = SEED,
    commit_slack_s: float = COMMIT_SLACK_S,
) -> LoadReport:
    """The HTTP API under load while consolidate runs publish and aliases move; returns the report.

    In `workdir` (created): a file object store, the tiny base model, the flows' scratch folder,
    and the registry (SQLite there unless `database_url` names an empty or migrated database,
    which is migrated to head). The HYDRACAT_* environment points at them while this runs (the
    flows read it). Then: the real API server (`hydracat api`, child process, a fresh bearer
    token); a `bench.publisher.Publisher` that publishes version 1 first, then, during the
    load, cycles new versions through real `sync-catalog` and `consolidate` flow runs plus a
    rollback over HTTP; `tasks` task names ``load-task-<i>``. Flows run in the caller's Prefect
    context (`flows.prefect_setup.temporary_server`, or ephemeral mode). The check reads the database;
    commit times of the publisher's writes are observed, not assumed.
    """
    from bench.publisher import Publisher
    from registry.api import Registry
    from registry.db import make_engine, upgrade

    workdir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{workdir / 'registry.db'}"
    settings = FlowSettings.in_folder(workdir, database_url=url).to_env()
    names = [f"load-task-{i}" for i in range(tasks)]
    timings = {}
    with environment(settings), ExitStack() as cleanup:
        engine = make_engine(url)
        cleanup.callback(engine.dispose)
        upgrade(engine)
        publisher = Publisher(workdir, names)
        start = time.perf_counter()
        publisher.prepare()
        timings["prepare_s"] = time.perf_counter() - start
        token = secrets.token_urlsafe(24)
        process, base_url = start_api_server(url, token, workdir / "api.log")
        cleanup.callback(stop_process, process, timeout_s=10)
        with record_commit_times() as commits:
            publisher.start(base_url, token, commits)
            try:
                sent = generate(base_url, names, seconds=seconds, rate=rate, mix=mix, seed=seed)
            finally:
                published = publisher.stop()
        start = time.perf_counter()
        consistency = check_answers(
            sent.records, Registry(engine), commit_times=commits, commit_slack_s=commit_slack_s,
            window=window_of(sent.records),
        )  # fmt: skip
        timings["check_s"] = time.perf_counter() - start
    config = {"database": engine.url.get_backend_name(), "store": "file", "server": "hydracat api (uvicorn)",
              "tasks": names, "seconds": seconds, "rate": rate, "mix": dict(mix), "seed": seed,
              "warmup": WARMUP}  # fmt: skip
    report = report_of(sent, config, consistency)
    report.publisher, report.timings = published, timings
    return report


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
