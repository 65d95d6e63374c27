"""A bundle's per-task exports, loaded by PEFT, behave as the bundle's own factors added by hand."""

import copy
from pathlib import Path

import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from hydraopt.formats.bundle import Bundle

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 65, 100, 127]])


def assert_exports_match_the_factors(bundle: Bundle, tiny_base: Path, tasks: list[str] | None = None) -> None:
    """For every task (or those of `tasks`): PEFT's forward on tasks/<task>/ equals the base with
    ΔW' added by hand."""
    base = LlamaForCausalLM.from_pretrained(tiny_base).eval()
    for task in tasks or [member["task"] for member in bundle.manifest["members"]]:
        by_hand = copy.deepcopy(base)
        with torch.no_grad():
            for name in bundle.modules:
                by_hand.get_submodule(name).weight += bundle.task_delta(task, name).dense()
            expected = by_hand(TOKENS).logits
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), bundle.task_adapter_path(task)).eval()
        with torch.no_grad():
            torch.testing.assert_close(peft_model(TOKENS).logits, expected, rtol=1e-4, atol=1e-5)
