"""`hydracat demo` runs the real flows end to end (tiny base here): the table, then the registry's answer."""

import os
import re
import subprocess
import sys
from pathlib import Path

SHARED_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models" / "demo"


def test_demo_publishes_through_the_flows_and_prints_the_registry_answer(tmp_path):
    """From a plain shell (no PREFECT_* or HYDRACAT_* variable) and an empty PREFECT_HOME (the demo's
    default, in --cache), while another process keeps a core busy: Prefect's first start on a busy
    machine is what failed (issue 12)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRACAT_", "PREFECT_", "DO_NOT_TRACK"))}
    workdir, cache = tmp_path / "demo", tmp_path / "cache"
    cache.mkdir()
    for name in ("models", "demo-adapters"):  # the tiny model and its adapters, trained once
        (SHARED_CACHE / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(SHARED_CACHE / name, target_is_directory=True)
    command = [sys.executable, "-m", "flows.cli", "demo", "--base", "tiny", "--workdir", str(workdir),
               "--cache", str(cache)]  # fmt: skip
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    finally:
        busy.kill()
        busy.wait()
    assert run.returncode == 0, run.stderr[-3000:]
    prefect_database = cache / "prefect" / "prefect.db"
    migrating = run.stderr.index(f"migrating Prefect's database {prefect_database}")
    assert migrating < run.stderr.index("Starting temporary server")  # migrated before the server started
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} \| INFO +\| Flow run '[\w-]+' - Beginning flow run", run.stderr)
    assert prefect_database.is_file()
    out = run.stdout
    assert "sync-catalog registered: alpha/1, beta/1, gamma/1" in out
    bundle_id = re.search(r"published, bundle (\w+) \(K=(\d+), r'=(\d+), refined, storage ([\d.]+)", out)
    assert bundle_id, out
    assert float(bundle_id[4]) < 1.0  # auto found a setting smaller than the three adapters
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["alpha"], ["beta"], ["gamma"])]
    assert len(rows) == 3 and all(row[-1] == "pass" for row in rows)
    answer = out[out.index("$ hydracat registry current --task alpha") :].splitlines()
    assert answer[2].split()[:2] == ["bundle:", bundle_id[1]]
    adapter_uri = answer[4].split()[1]
    task_adapter = Path(adapter_uri.removeprefix("file://"))
    assert task_adapter.is_relative_to(workdir / "objects" / "bundles")
    assert (task_adapter / "adapter_model.safetensors").is_file()
