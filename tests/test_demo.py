"""`hydracat demo` runs end to end and prints both tables."""

import subprocess
import sys


def test_demo_prints_comparison_and_per_task_tables(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    # label, then storage, err mean, err max, agree mean, agree min
    rows = {line[:20].strip(): [float(v) for v in line[20:].split()] for line in lines[1:7]}
    assert set(rows) == {"task_arithmetic", "ties", "dare_ties"} | {f"hydraopt K={k}" for k in (1, 3, 6)}
    # One head per task keeps every task closer to its original than one shared head does.
    assert rows["hydraopt K=6"][1] < rows["hydraopt K=3"][1] < rows["hydraopt K=1"][1]
    assert rows["hydraopt K=6"][0] > rows["hydraopt K=1"][0]  # storage grows with K
    start = lines.index(next(line for line in lines if line.startswith("per task"))) + 2
    per_task = lines[start : start + 6]
    assert sorted({int(line.split()[1]) for line in per_task}) == [0, 1, 2]
    bundle_id = lines[start - 2].split("bundle ")[1].rstrip("):")
    registry_answer = lines[lines.index("$ hydracat registry current --task summarise") + 1 :]
    assert registry_answer[0].split() == ["task:", "summarise"]
    assert registry_answer[1].split()[:2] == ["bundle:", bundle_id]
    assert registry_answer[3].endswith("bundles/hydraopt-K3/tasks/summarise")
