"""`hydracat demo` runs the real flows end to end (tiny base here): the table, then the registry's answer."""

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_publishes_through_the_flows_and_prints_the_registry_answer(tmp_path):
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env = {k: v for k, v in env.items() if not k.startswith(("HYDRACAT_", "PREFECT_API"))}
    workdir = tmp_path / "demo"
    cache = Path(__file__).resolve().parents[1] / ".cache" / "test-models" / "demo"
    command = [sys.executable, "-m", "flows.cli", "demo", "--base", "tiny", "--workdir", str(workdir),
               "--cache", str(cache)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
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
