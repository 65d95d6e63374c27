"""Every input of the bad-input corpus is refused by `hydracat merge` with one clear line; nothing runs."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.bad_inputs import refusal_matches, write_bad_adapters


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, peft_adapters):
    folder = tmp_path_factory.mktemp("bad-inputs")
    marker = folder / "PWNED"
    return write_bad_adapters(peft_adapters[0], folder / "adapters", marker), marker


def test_merge_refuses_every_bad_input_and_never_unpickles(corpus, peft_adapters, tmp_path):
    cases, marker = corpus

    def merge(case: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "flows.cli", "merge", "--out", str(tmp_path / case),
                   str(peft_adapters[1]), str(cases[case][0])]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:  # one `hydracat merge` process per core
        runs = dict(zip(cases, pool.map(merge, cases), strict=True))
    failures = {}
    for case, run in runs.items():
        message = run.stderr.strip()
        if run.returncode != 2 or "Traceback" in run.stderr or not refusal_matches(message, cases[case][1]):
            failures[case] = (run.returncode, message[-300:])
        assert not (tmp_path / case).exists()
    assert not failures, failures
    assert not marker.exists()
