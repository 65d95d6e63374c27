"""Moves task aliases while a load runs: real `sync-catalog` and `consolidate` flow runs, and
rollbacks through the HTTP write endpoint.

Every cycle uploads a new version of every task's adapter (random LoRAs on a tiny Llama base) into
the configured object store, runs `sync_catalog` (registers them) and `consolidate` (merges them
losslessly, publishes one new bundle and moves every task's "current" alias), then rolls one task
back with ``POST /v1/tasks/{task}/rollback``. The last task gets its first adapter only in the first
cycle, so readers see it go from 404 to a bundle. The flows read the HYDRACAT_* environment and
run in the caller's Prefect context (a test harness, or Prefect's ephemeral mode).
"""

import threading
import time
from pathlib import Path

from bench.synthetic import build_tiny_base, llama_attention_shapes, write_random_lora
from flows.settings import FlowSettings
from hydraopt.formats.layout import adapter_key, model_slug
from registry.settings import Settings
from registry.store import open_store

BASE_MODEL = "hydracat/load-tiny"
RANK = 4
SHAPES = llama_attention_shapes(layers=2, hidden=64, kv_out=32)  # the modules of build_tiny_base


class Publisher:
    """Publishes and moves aliases of `tasks`; `prepare` first, then `start` .. `stop` around a load."""

    def __init__(self, workdir: Path, tasks: list[str]):
        if len(tasks) < 2:
            raise ValueError("the publisher needs at least two tasks")
        self.sources = workdir / "publisher-sources"
        self.tasks = tasks
        self.cycles = 0
        self.published: list[str] = []
        self.rollbacks = 0
        self.errors: list[str] = []
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        """Install the base model, publish version 1 of every task but the last one."""
        build_tiny_base(FlowSettings.from_env().models_dir / model_slug(BASE_MODEL))
        self._publish(self.tasks[:-1], "1")

    def start(self, base_url: str, token: str, commit_times: dict[tuple[str, int], float]) -> None:
        """Run cycles in a thread until `stop`; rollbacks' commit bounds go into `commit_times`."""
        args = (base_url, token, commit_times)
        self._thread = threading.Thread(target=self._run, args=args, name="publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> dict:
        """Finish the cycle under way; returns what was done."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return {
            "cycles": self.cycles,
            "bundles_published": len(self.published),
            "rollbacks": self.rollbacks,
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "cycle_s_mean": sum(self.seconds) / len(self.seconds) if self.seconds else None,
            "how": "per cycle: new adapter versions uploaded, sync-catalog and consolidate flow runs "
            "(one bundle, every task's alias moved), one rollback over HTTP with the bearer token",
        }

    def _run(self, base_url: str, token: str, commit_times: dict[tuple[str, int], float]) -> None:
        import httpx

        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                self.cycles += 1
                try:
                    self._publish(self.tasks, str(self.cycles + 1))
                    self._rollback(client, self.tasks[self.cycles % (len(self.tasks) - 1)], commit_times)
                except Exception as exc:  # noqa: BLE001 - reported, the load goes on
                    self.errors.append(f"cycle {self.cycles}: {type(exc).__name__}: {exc}")
                    self._stop.wait(1.0)
                self.seconds.append(time.perf_counter() - start)

    def _publish(self, tasks: list[str], version: str) -> None:
        from flows.catalog import sync_catalog
        from flows.consolidate import consolidate

        store = open_store(Settings.from_env())
        for i, task in enumerate(tasks):
            seed = 1000 * int(version) + i
            folder = write_random_lora(
                self.sources / task / version, SHAPES, rank=RANK, seed=seed, base_model=BASE_MODEL
            )
            for path in sorted(folder.iterdir()):
                store.put_file(f"{adapter_key(task, version)}/{path.name}", path)
        synced = sync_catalog()
        if len(synced["registered"]) != len(tasks):
            raise RuntimeError(
                f"sync-catalog registered {synced['registered']}, quarantined {synced['quarantined']}"
            )
        result = consolidate(rank=RANK * len(self.tasks))  # K = N heads, r' = Σ r_i: lossless
        if len(result["published"]) != 1:
            raise RuntimeError(f"consolidate published {result['published']}: {result['groups']}")
        self.published += result["published"]

    def _rollback(self, client, task: str, commit_times: dict[tuple[str, int], float]) -> None:
        response = client.post(f"/v1/tasks/{task}/rollback", json={"actor": "load-publisher"})
        done = time.time()
        if response.status_code != 200:
            raise RuntimeError(f"rollback of {task}: HTTP {response.status_code} {response.text[:200]}")
        commit_times[("alias_events", response.json()["id"])] = done
        self.rollbacks += 1
