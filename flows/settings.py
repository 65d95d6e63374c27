"""Settings of the flows, read from environment variables (the registry's own are in `registry.settings`).

- ``HYDRACAT_MODELS_DIR``: base models: folders installed by an operator, one Hugging Face model
  folder per base model named after it with ``/`` replaced by ``--``
  (``HuggingFaceTB--SmolLM2-135M-Instruct``), and ``.cache/`` where base models resolved from the
  hub or the object store are downloaded (`flows.model_sources`).
  Default: ``$XDG_DATA_HOME/hydracat/models``.
- ``HYDRACAT_WORK_DIR``: scratch folder for downloaded adapters (``hub/``: those from the hub) and
  staged bundles.
  Default: ``$XDG_DATA_HOME/hydracat/work``.
- ``HYDRACAT_DEVICE``: ``cuda`` or ``cpu`` for merges and evaluation (default: cuda when present).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.settings import data_dir


@dataclass(frozen=True)
class FlowSettings:
    models_dir: Path
    work_dir: Path
    device: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "FlowSettings":
        folder = data_dir(env)
        return cls(
            models_dir=Path(env.get("HYDRACAT_MODELS_DIR") or folder / "models"),
            work_dir=Path(env.get("HYDRACAT_WORK_DIR") or folder / "work"),
            device=env.get("HYDRACAT_DEVICE") or None,
        )
