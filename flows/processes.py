"""Child processes: a free port, wait until one answers over HTTP, stop one for good."""

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(
    process: subprocess.Popen, url: str, what: str, timeout_s: float, poll_s: float = 0.2
) -> subprocess.Popen:
    """Return `process` once GET `url` answers 200; stop it and raise RuntimeError if it exits,
    TimeoutError if it does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read()[-2000:] if process.stderr else ""
            raise RuntimeError(f"{what} exited with status {process.returncode}: {output}".rstrip(": "))
        if answers_ok(url):
            return process
        time.sleep(poll_s)
    stop_process(process)
    raise TimeoutError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


def answers_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` answers 200 now (no answer, an error status or a refused connection: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
