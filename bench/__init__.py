"""Beside the product: benchmarks (`hydracat bench ...`, JSON out), the demo (`hydracat demo`), the
synthetic models and adapters, the LoRA training they use and the fault injectors.

The product packages (`hydraopt`, `registry`, `flows`) import nothing from here; the `hydracat`
command finds `bench` and `demo` through the `hydracat.commands` entry points (pyproject.toml).
"""
