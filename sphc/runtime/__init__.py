"""The runtime: reference layers, custom ops, transforms and kernel launchers of generated models.

This package is the one interface a generated module uses: it imports ``sphc.runtime as rt`` and
names only what ``__all__`` lists below (``tests/test_layout.py`` checks every generated example
against it). Nothing here imports the compiler: data flows text → compiler → generated module →
runtime, never back.
"""

from sphc.kernel_spaces import TP_SPACE, Config, rowgemm_space, wgrad_space
from sphc.runtime import launch, ops
from sphc.runtime.launch import Tunable
from sphc.runtime.layers import (
    Dense,
    FullGenConv,
    GenConv,
    InputSHT,
    Invariant,
    Norm,
    Pointwise,
    S2Conv,
    SO3Conv,
    TensorProduct,
    ZonalConv,
    decode_f64,
    set_backend,
)
from sphc.runtime.linear_kernels import LinearKernels
from sphc.runtime.ops import register_kernels
from sphc.runtime.tp_kernels import TPKernels

__all__ = [
    "TP_SPACE",
    "Config",
    "Dense",
    "FullGenConv",
    "GenConv",
    "InputSHT",
    "Invariant",
    "LinearKernels",
    "Norm",
    "Pointwise",
    "S2Conv",
    "SO3Conv",
    "TPKernels",
    "TensorProduct",
    "Tunable",
    "ZonalConv",
    "decode_f64",
    "launch",
    "ops",
    "register_kernels",
    "rowgemm_space",
    "set_backend",
    "wgrad_space",
]
