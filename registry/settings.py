"""Registry settings, read from environment variables.

- ``HYDRACAT_DATABASE_URL``: SQLAlchemy URL of the registry database, e.g.
  ``postgresql+psycopg://user:pw@host/db``. Default: a SQLite file
  ``$XDG_DATA_HOME/hydracat/registry.db`` (``~/.local/share/hydracat/registry.db``).
- ``HYDRACAT_STORE_URL``: object store as a URL, ``s3://bucket/prefix`` or ``file:///folder``.
  Takes precedence over the two settings below.
- ``HYDRACAT_STORE_PATH``: folder of the local object store. Default:
  ``$XDG_DATA_HOME/hydracat/objects``. Used when neither a store URL nor a bucket is set.
- ``HYDRACAT_S3_ENDPOINT_URL``: S3 endpoint for MinIO/moto/other S3-compatible stores.
- ``HYDRACAT_S3_BUCKET``: S3 bucket; setting it selects the S3 store.
- ``HYDRACAT_S3_PREFIX``: key prefix inside the bucket (default: none).
- ``HYDRACAT_API_TOKEN``: bearer token required by the HTTP write endpoints; unset = writes refused.

S3 credentials come from the usual AWS variables/profiles (boto3's chain).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/hydracat``, or ``~/.local/share/hydracat``."""
    base = env.get("XDG_DATA_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "hydracat"


@dataclass(frozen=True)
class Settings:
    database_url: str
    store_path: Path
    store_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    api_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        folder = data_dir(env)
        return cls(
            database_url=env.get("HYDRACAT_DATABASE_URL") or f"sqlite:///{folder / 'registry.db'}",
            store_path=Path(env.get("HYDRACAT_STORE_PATH") or folder / "objects"),
            store_url=env.get("HYDRACAT_STORE_URL") or None,
            s3_endpoint_url=env.get("HYDRACAT_S3_ENDPOINT_URL") or None,
            s3_bucket=env.get("HYDRACAT_S3_BUCKET") or None,
            s3_prefix=env.get("HYDRACAT_S3_PREFIX", ""),
            api_token=env.get("HYDRACAT_API_TOKEN") or None,
        )

    def to_env(self) -> dict[str, str]:
        """Every HYDRACAT_* variable `from_env` reads, set so that it reads back these settings."""
        return {
            "HYDRACAT_DATABASE_URL": self.database_url,
            "HYDRACAT_STORE_PATH": str(self.store_path),
            "HYDRACAT_STORE_URL": self.store_url or "",
            "HYDRACAT_S3_ENDPOINT_URL": self.s3_endpoint_url or "",
            "HYDRACAT_S3_BUCKET": self.s3_bucket or "",
            "HYDRACAT_S3_PREFIX": self.s3_prefix,
            "HYDRACAT_API_TOKEN": self.api_token or "",
        }
