"""hydraopt stands alone: importing it pulls in no database, orchestration or model hub code."""

import subprocess
import sys


def test_hydraopt_imports_no_upper_layer_or_heavy_dependency():
    code = (
        "import sys, hydraopt, hydraopt.cli\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "upper = {'prefect', 'sqlalchemy', 'registry', 'flows', 'peft', 'transformers', 'boto3'}\n"
        "print(sorted(roots & upper))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
