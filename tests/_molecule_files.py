"""Small molecule files for the training tests: an .xyz directory of random molecules whose energy
is a per-element term plus a pairwise geometric term (so a network has something to learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYMBOLS = ("H", "C", "N", "O", "F")
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
ELEMENT_ENERGY = {"H": -60.0, "C": -150.0, "N": -110.0, "O": -90.0, "F": -70.0}  # kcal/mol, made up


def _geometry(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` atoms at least 1 Å apart (rejection sampling in a small box)."""
    pos: list[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(-1.6, 1.6, 3)
        if all(np.linalg.norm(p - q) >= 1.0 for q in pos):
            pos.append(p)
    return np.array(pos)


def write_molecules(root: Path, rng: np.random.Generator, n: int, max_atoms: int = 6) -> dict:
    """``n`` files ``mol000.xyz`` ... in ``root``; returns their atom counts (n, 5) and energies (n,)."""
    counts, energies = [], []
    for m in range(n):
        k = int(rng.integers(2, max_atoms + 1))
        symbols = [str(rng.choice(("C", "N", "O"))), *rng.choice(SYMBOLS, k - 1).tolist()]
        xyz = _geometry(rng, k)
        z = np.array([Z[s] for s in symbols], float)
        r = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) + np.eye(k)
        energy = sum(ELEMENT_ENERGY[s] for s in symbols) - 3.0 * np.triu(np.outer(z, z) / r**2, 1).sum()
        lines = [str(k), f"energy_kcal_mol={float(energy)!r}"]
        lines += [f"{s} {x!r} {y!r} {w!r}" for s, (x, y, w) in zip(symbols, xyz.tolist())]
        (root / f"mol{m:03d}.xyz").write_text("\n".join(lines) + "\n")
        counts.append([symbols.count(e) for e in SYMBOLS])
        energies.append(energy)
    return {"root": root, "counts": np.array(counts, float), "energy": np.array(energies)}
