"""Compute device selection: CUDA when present, CPU otherwise."""

import torch


def default_device() -> torch.device:
    """The device merges run on unless told otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" picks `default_device()`; anything else is taken as given."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)
