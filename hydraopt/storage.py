"""Storage accounting: what the sources cost against what a merge result costs."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hydraopt.adapter import Adapter
from hydraopt.merge import MergeResult


@dataclass(frozen=True)
class Storage:
    """Parameters and tensor bytes of the sources and of the bundle (A' + K heads)."""

    source_params: int
    bundle_params: int
    source_bytes: int
    bundle_bytes: int

    @property
    def ratio(self) -> float:
        """bundle_params / source_params: 1.0 means no saving."""
        return self.bundle_params / self.source_params

    def to_dict(self) -> dict:
        return asdict(self) | {"ratio": round(self.ratio, 6)}


def storage_report(adapters: Sequence[Adapter], result: MergeResult) -> Storage:
    """N·(r·Σd_in + r·Σd_out) for the sources against r'·Σd_in + K·r'·Σd_out for the bundle."""
    return Storage(
        source_params=sum(a.num_params for a in adapters),
        bundle_params=result.num_params,
        source_bytes=sum(a.num_params * a.dtype.itemsize for a in adapters),
        bundle_bytes=result.num_params * result.dtype.itemsize,
    )
