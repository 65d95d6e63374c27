"""registry stands below flows: importing its surfaces pulls in no orchestration or torch."""

import subprocess
import sys


def test_registry_imports_no_prefect_torch_or_flows():
    code = (
        "import sys, registry.api, registry.cli, registry.http, registry.store\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'prefect', 'torch', 'flows', 'hydraopt', 'boto3'}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
