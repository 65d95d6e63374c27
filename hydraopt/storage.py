"""Storage accounting: what the sources cost against what a merge result costs.

`Storage.to_dict()` is the one storage shape: the manifest's `storage`, passed through as is by
`hydracat merge`, the flows' results and the registry.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hydraopt.adapter import Adapter
from hydraopt.merge import MergeResult


@dataclass(frozen=True)
class Storage:
    """Parameters and tensor bytes of the sources and of the bundle (A' + K heads).

    `bundle_file_bytes` is the size of the written bundle.safetensors (None before it is written).
    """

    source_params: int
    bundle_params: int
    source_bytes: int
    bundle_bytes: int
    bundle_file_bytes: int | None = None

    @property
    def ratio(self) -> float:
        """bundle_params / source_params: 1.0 means no saving."""
        return self.bundle_params / self.source_params

    def to_dict(self) -> dict:
        """{"source_params", "bundle_params", "source_bytes", "bundle_bytes", "bundle_file_bytes", "ratio"}"""
        return asdict(self) | {"ratio": round(self.ratio, 6)}


def storage_report(
    adapters: Sequence[Adapter], result: MergeResult, bundle_file_bytes: int | None = None
) -> Storage:
    """N·(r·Σd_in + r·Σd_out) for the sources against r'·Σd_in + K·r'·Σd_out for the bundle."""
    return Storage(
        source_params=sum(a.num_params for a in adapters),
        bundle_params=result.num_params,
        source_bytes=sum(a.num_params * a.dtype.itemsize for a in adapters),
        bundle_bytes=result.num_params * result.dtype.itemsize,
        bundle_file_bytes=bundle_file_bytes,
    )
