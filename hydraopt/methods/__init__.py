"""One flat registry of merge methods (mergekit style): name -> MergeMethod.

A method is one module defining a `MergeMethod` (typed params + pure functions) and one line below.
"""

from hydraopt.methods.base import MergeMethod
from hydraopt.methods.core_space import CORE_SPACE
from hydraopt.methods.hydraopt import HYDRAOPT
from hydraopt.methods.joint_diagonalization import JD_DIAG, JD_FULL
from hydraopt.methods.knots import KNOTS
from hydraopt.methods.lora_lego import LORA_LEGO
from hydraopt.methods.task_arithmetic import DARE_LINEAR, DARE_TIES, TASK_ARITHMETIC, TIES
from hydraopt.methods.truncation import TRUNCATION

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        HYDRAOPT,
        TASK_ARITHMETIC,
        TIES,
        DARE_LINEAR,
        DARE_TIES,
        TRUNCATION,
        JD_FULL,
        JD_DIAG,
        CORE_SPACE,
        KNOTS,
        LORA_LEGO,
    )
}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {sorted(METHODS)}") from None
