"""The runtime: reference layers, custom ops, transforms and kernel launchers of generated models.

This package is the one interface a generated module uses: it imports ``sphc.runtime as rt`` and
names only what ``__all__`` lists below (``tests/test_injection.py`` checks every generated module
against it). Nothing here imports the compiler: data flows text → compiler → generated module →
runtime, never back.
"""

from sphc.kernel_spaces import ROWGEMM_SPACE, TP_SPACE, WGRAD_SPACE, Config
from sphc.layout import prefix_cols, s2_cols, so3_cols
from sphc.runtime import launch, ops
from sphc.runtime.launch import Tunable
from sphc.runtime.layers import (
    Dense,
    FullGenConv,
    GenConv,
    InputSHT,
    Invariant,
    Norm,
    S2Conv,
    S2Pointwise,
    SetPool,
    SO3Conv,
    SO3Pointwise,
    TensorProduct,
    ZonalConv,
    set_backend,
)
from sphc.runtime.linear_kernels import LinearKernels
from sphc.runtime.ops import register_kernels
from sphc.runtime.tp_kernels import TPKernels

__all__ = [
    "ROWGEMM_SPACE",
    "TP_SPACE",
    "WGRAD_SPACE",
    "Config",
    "Dense",
    "FullGenConv",
    "GenConv",
    "InputSHT",
    "Invariant",
    "LinearKernels",
    "Norm",
    "S2Conv",
    "S2Pointwise",
    "SO3Conv",
    "SO3Pointwise",
    "SetPool",
    "TPKernels",
    "TensorProduct",
    "Tunable",
    "ZonalConv",
    "launch",
    "ops",
    "prefix_cols",
    "register_kernels",
    "s2_cols",
    "set_backend",
    "so3_cols",
]
