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
    per_task = lines[lines.index(next(line for line in lines if line.startswith("per task"))) + 2 :]
    assert len(per_task) == 6
    assert sorted({int(line.split()[1]) for line in per_task}) == [0, 1, 2]
