"""Where things live: the files of a bundle and of an adapter folder, their object keys, and the names
that become folder names or key segments (task names, base-model slugs, hub repo ids and revisions).

```
bundles/<base-model slug>/<bundle id>/     a bundle (`bundle_key`)
  manifest.json  bundle.safetensors  tasks/<task>/{adapter_config.json,adapter_model.safetensors}
adapters/<name>/<version>/                 an adapter folder of the bucket (`adapter_key`)
  adapter_config.json  adapter_model.safetensors  [eval.jsonl]   or only   source.json
```
Torch-free and dependency-free, so the registry, the flows, the benchmarks and the tests all read the
layout from here.
"""

import re

from hydraopt.errors import BundleError

MANIFEST_FILE = "manifest.json"
BUNDLE_TENSORS_FILE = "bundle.safetensors"
TASKS_FOLDER = "tasks"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
PEFT_PREFIX = "base_model.model."  # of every module's tensors in a PEFT adapter's weights
EVAL_FILE = "eval.jsonl"
SOURCE_FILE = "source.json"  # {"uri": "hf://org/repo[@revision]"}: an adapter on the hub
BUNDLES_PREFIX = "bundles/"
ADAPTERS_PREFIX = "adapters/"

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
REPO_ID = re.compile(rf"^{SEGMENT}/{SEGMENT}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def check_task_name(task: str) -> str:
    """Task names become folder names: letters, digits, '.', '_', '-' only."""
    if not TASK_NAME.match(task) or ".." in task:
        raise BundleError(f"task name {task!r} is not a safe folder name (letters, digits, . _ -)")
    return task


def task_folder(task: str) -> str:
    """`tasks/<task>`: the PEFT LoRA of one task inside a bundle."""
    return f"{TASKS_FOLDER}/{check_task_name(task)}"


def model_slug(base_model: str) -> str:
    """`org/name` -> `org--name`: a base model as one folder name or key segment."""
    return base_model.replace("/", "--")


def bundle_key(base_model: str, bundle_id: str) -> str:
    """`bundles/<slug>/<bundle id>`: where a bundle's objects live in the store."""
    return f"{BUNDLES_PREFIX}{model_slug(base_model)}/{bundle_id}"


def adapter_key(name: str, version: str, prefix: str = ADAPTERS_PREFIX) -> str:
    """`<prefix><name>/<version>`: an adapter folder in the bucket (prefix up to its last '/')."""
    return f"{prefix[: prefix.rfind('/') + 1]}{name}/{version}"


def is_repo_id(text: str) -> bool:
    """`org/name` as the hub spells repo ids (no `--` or `..`, no trailing `.git`)."""
    return bool(REPO_ID.fullmatch(text)) and not ("--" in text or ".." in text or text.endswith(".git"))


def is_revision(text: str) -> bool:
    """A branch, tag or commit: letters, digits, . _ - /, no `..` or empty path segment."""
    return bool(REVISION.fullmatch(text)) and not (".." in text or "//" in text or text.endswith("/"))
