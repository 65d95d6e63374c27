"""The module-shape digest of a compatibility key, torch-free so the registry can store and query it.

Adapters merge together only when their base model (name and revision), adapter type and set of
(module name, d_out, d_in) agree (`hydraopt.adapter.CompatKey`). The set is recorded as one sha256.
"""

import hashlib
import json
from collections.abc import Iterable


def modules_digest(modules: Iterable[tuple[str, int, int]]) -> str:
    """sha256 (hex) over the sorted, distinct (module name, d_out, d_in) triples."""
    triples = sorted({(str(name), int(d_out), int(d_in)) for name, d_out, d_in in modules})
    return hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()
