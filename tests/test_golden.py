"""Numeric goldens for every example: refactors of the compiler or runtime must not change the maths.

For each ``examples/*.sph`` the generated model gets deterministic float64 weights (each parameter
filled from a generator seeded by its name, so the values do not depend on construction order) and
a fixed input; its output (training mode, so ``Norm`` normalises by batch statistics and values
stay O(1); dropout off) must equal the one recorded in ``tests/golden/<name>.json`` to
1e-12 relative. Parameter names and shapes are recorded too: a change there is a change of the
model's interface (checkpoints), which a refactor must not make silently.
``pytest --update-golden`` rewrites the files from the reference backend (only when a change of the
maths is intended); the fast torch path must reproduce them too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import sphc

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted((HERE.parent / "examples").glob("*.sph"))
GOLDEN = HERE / "golden"


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _fill(model: torch.nn.Module) -> None:
    """Deterministic weights that depend only on each parameter's name and shape."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(_seed(name))
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))


def _run(path: Path, backend: str) -> dict:
    model = sphc.load(path).Model(backend=backend).double().train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    _fill(model)
    g = torch.Generator().manual_seed(_seed(path.stem))
    if model.input.set:  # sets of 3 elements, one of them padding
        x = torch.randn(2, 3, *model.input_shape, generator=g, dtype=torch.float64)
        args = (x, torch.tensor([[True, True, False], [True, False, True]]))
    else:
        args = (torch.randn(2, *model.input_shape, generator=g, dtype=torch.float64),)
    with torch.no_grad():
        y = model(*args)
    return {
        "params": {n: list(p.shape) for n, p in model.named_parameters()},
        "output": y.flatten().tolist(),
        "output_shape": list(y.shape),
    }


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_output_is_unchanged(path, backend, request):
    got = _run(path, backend)
    file = GOLDEN / f"{path.stem}.json"
    if request.config.getoption("--update-golden") and backend == "reference":
        file.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(file.read_text())
    assert got["params"] == want["params"], "parameter names or shapes changed"
    assert got["output_shape"] == want["output_shape"]
    y, w = torch.tensor(got["output"]), torch.tensor(want["output"])
    assert torch.linalg.norm(y - w) <= 1e-12 * torch.linalg.norm(w), f"output moved: {y} vs {w}"
