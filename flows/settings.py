"""Settings of the flows, read from environment variables: the registry's (`registry.settings`) and these.

- ``HYDRACAT_MODELS_DIR``: base models: folders installed by an operator, one Hugging Face model
  folder per base model named after it with ``/`` replaced by ``--``
  (``HuggingFaceTB--SmolLM2-135M-Instruct``), and ``.cache/`` where base models resolved from the
  hub or the object store are downloaded (`flows.model_sources`).
  Default: ``$XDG_DATA_HOME/hydracat/models``.
- ``HYDRACAT_WORK_DIR``: scratch folder for downloaded adapters (``hub/``: those from the hub) and
  staged bundles.
  Default: ``$XDG_DATA_HOME/hydracat/work``.
- ``HYDRACAT_DEVICE``: ``cuda`` or ``cpu`` for merges and evaluation (default: cuda when present).

Each flow and task reads them once, where it starts (`FlowSettings.from_env`), and passes them down.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from registry.settings import Settings, data_dir


@dataclass(frozen=True)
class FlowSettings:
    registry: Settings
    models_dir: Path
    work_dir: Path
    device: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "FlowSettings":
        folder = data_dir(env)
        return cls(
            registry=Settings.from_env(env),
            models_dir=Path(env.get("HYDRACAT_MODELS_DIR") or folder / "models"),
            work_dir=Path(env.get("HYDRACAT_WORK_DIR") or folder / "work"),
            device=env.get("HYDRACAT_DEVICE") or None,
        )

    @classmethod
    def in_folder(cls, root: Path, models_dir: Path | None = None, **registry: str) -> "FlowSettings":
        """Everything inside `root`: SQLite ``registry.db``, ``objects/``, ``models/``, ``work/``;
        `registry` replaces registry settings (``database_url``, ``store_url``, ``s3_bucket``, ...)."""
        settings = Settings(database_url=f"sqlite:///{root / 'registry.db'}", store_path=root / "objects")
        return cls(replace(settings, **registry), models_dir or root / "models", root / "work")

    def to_env(self) -> dict[str, str]:
        """The HYDRACAT_* variables `from_env` reads back as these settings: every one that names the
        catalog; HYDRACAT_DEVICE only when set (the machine's choice, left to its environment)."""
        device = {"HYDRACAT_DEVICE": self.device} if self.device else {}
        return self.registry.to_env() | {
            "HYDRACAT_MODELS_DIR": str(self.models_dir),
            "HYDRACAT_WORK_DIR": str(self.work_dir),
        } | device
