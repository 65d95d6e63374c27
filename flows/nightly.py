"""`nightly`: sync the catalog, then consolidate it. Deployed on a cron schedule by `hydracat serve`."""

from prefect import flow

from flows.catalog import sync_catalog
from flows.consolidate import BaseModelFilter, DryRun, Heads, Method, MinRetention, Rank, consolidate


@flow(name="nightly")
def nightly(
    prefix: str = "adapters/",
    method: Method = "hydraopt",
    heads: Heads = None,
    rank: Rank = None,
    min_retention: MinRetention = 0.97,
    base_model: BaseModelFilter = None,
    dry_run: DryRun = False,
) -> dict:
    """Register new adapters from the bucket, then merge, evaluate and publish every group."""
    synced = sync_catalog(prefix)
    consolidated = consolidate(method, heads, rank, min_retention, base_model, dry_run)
    return {"sync": synced, "consolidate": consolidated}


if __name__ == "__main__":
    print(nightly())
