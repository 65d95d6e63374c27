"""Hub fixtures: a fake Hugging Face Hub on loopback (`tests.fake_hub`) named by HF_ENDPOINT.

Test modules import what they use (`from tests.hub_fixtures import fake_hub_fixture`); each
fixture is registered under its name without `_fixture`.
"""

from collections.abc import Iterator

import pytest

from tests.fake_hub import FakeHub


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fresh fake hub; HF_ENDPOINT points at it, HF_TOKEN and HF_HUB_OFFLINE are unset."""
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield hub
    hub.close()
