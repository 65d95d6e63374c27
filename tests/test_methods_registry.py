"""Every registered method merges real PEFT adapters into a bundle that reads back as written and
whose task exports PEFT loads as the bundle's own updates."""

from dataclasses import fields

import pytest
import torch

from hydraopt.formats.bundle import read_bundle, write_bundle
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import merge_adapters
from hydraopt.methods import METHODS
from hydraopt.methods.base import Layout
from hydraopt.storage import storage_report
from tests.bundle_checks import assert_exports_match_the_factors

PARAMS = {name: {f.name for f in fields(method.params_type)} for name, method in METHODS.items()}


@pytest.fixture(scope="module")
def adapters(peft_adapters):
    return [load_adapter(p) for p in peft_adapters]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_method_writes_a_bundle_peft_loads(name, adapters, tiny_base, tmp_path):
    result = merge_adapters(adapters, name, rank=4, **({"heads": 2} if "heads" in PARAMS[name] else {}))
    manifest = write_bundle(adapters, result, tmp_path / "bundle")
    bundle = read_bundle(tmp_path / "bundle")
    assert manifest["storage"]["bundle_params"] == storage_report(adapters, result).bundle_params > 0
    predicted = METHODS[name].storage(Layout.of(adapters), result.rank, result.heads)
    assert predicted == result.num_params  # known before merging
    for task in result.tasks:
        for module in result.modules:
            torch.testing.assert_close(
                bundle.task_delta(task, module).dense(), result.task_delta(task, module).dense()
            )
    assert_exports_match_the_factors(bundle, tiny_base, tasks=result.tasks[:2])
