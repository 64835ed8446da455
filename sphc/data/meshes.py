"""3-D meshes as 6-channel spherical signals on the MW grid (Cohen et al. 2018's SHREC'17 recipe).

Why it is built this way:

* **Loading.** ``trimesh`` reads ``.obj``, ``.off``, ``.ply`` and ``.stl`` (multi-part files are
  merged into one mesh). Files are read with ``process=False`` and checked here instead: trimesh's
  processing silently drops faces with non-finite vertices, whereas a broken file should be reported.
  Anything unusable (unreadable, no triangles, non-finite or out-of-range vertices, zero area) is an
  ``SphcError`` naming the file; a data set pass reports it as a ``MeshSkippedWarning`` and goes on,
  with a count at the end and the list in ``ShapeSignals.skipped``.
* **Normalisation.** Each mesh is centred on its area-weighted surface centroid and scaled so that its
  farthest vertex lies on the unit sphere. Both are rotation-equivariant (a bounding-box centre is
  not), so rotating a file rotates its signal, and both ignore how finely the surface is tessellated.
* **The six channels** (``CHANNELS``), for rays from each MW grid point x towards the centre (see
  ``sphc.data.raycast`` for the exact definitions): distance to the first hit, cos and sin of the angle
  between the hit's normal and x, on the mesh and then on its convex hull. A ray that misses gets
  distance 2 (``MISS_DISTANCE``) and cos = sin = 0. Mesh normals follow the file's winding (ShapeNet
  winding is not always consistent, as in Cohen et al.); the hull's cos is |n . x|, which equals n . x
  for outward normals on any closed hull (a ray enters it from outside), so qhull's arbitrary winding
  does not matter, and it stays defined for a flat shape, whose hull is its planar convex polygon.
* **Rotations.** ``rotated`` rotates each mesh's vertices by its own Haar-random R (``random_rotations``
  of ``sphc.data.mnist``), so the signal at x is the unrotated shape's at R^T x (docs/CONVENTIONS.md,
  rotations). Rotating the mesh rather than the rays keeps the grid and the casting code unchanged.
* **Cost.** Meshes are loaded and prepared one by one and cast in batches (``sphc.data.raycast``);
  the finished array is stored in sphc's disk cache keyed by a fingerprint (path, size, mtime) of
  every input file and every parameter that changes the values, so a data set is projected once.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError

from sphc.cache import load_or_compute
from sphc.data.mnist import mw_grid_points, random_rotations
from sphc.data.raycast import DEFAULT_METHOD, MISS_DISTANCE, cast_rays
from sphc.errors import SphcError

#: Bump when anything that changes the projected values or their layout changes; old entries are missed.
DATA_FORMAT_VERSION = 1
#: File types read (whatever trimesh loads among the common mesh formats).
MESH_SUFFIXES = (".obj", ".off", ".ply", ".stl")
#: Channel order of the projected signal.
CHANNELS = ("distance", "cos", "sin", "hull_distance", "hull_cos", "hull_sin")
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {None: 0, "train": 1, "val": 2, "test": 3}
#: Meshes prepared and cast together (bounded memory for large files, few calls for small ones).
_BATCH = 32

__all__ = [
    "CHANNELS",
    "DATA_FORMAT_VERSION",
    "MESH_SUFFIXES",
    "MISS_DISTANCE",
    "SPLITS",
    "MeshRecord",
    "MeshSkippedWarning",
    "ShapeSignals",
    "find_class_tree",
    "find_shrec17",
    "as_signals",
    "labelled_signals",
    "load_mesh",
    "mesh_dataset",
    "normalize_mesh",
    "project_meshes",
    "project_sources",
]


class MeshSkippedWarning(UserWarning):
    """A mesh of a data set could not be used (the message names the file and why); it was left out."""


@dataclass(frozen=True)
class MeshRecord:
    """One labelled mesh file of a data set."""

    id: str
    path: Path
    category: str
    subcategory: str  # equal to ``category`` where the data set has no finer level


@dataclass(frozen=True)
class ShapeSignals:
    """A projected data set: the signals, labels and ids of the meshes that could be used.

    ``x`` float32 (N, 6, L, 2L-1) in ``CHANNELS`` order; ``y`` int64 (N,) indices into ``classes``;
    ``ids``, ``category``, ``subcategory`` str (N,); ``skipped`` holds (file, reason) of left-out meshes.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    category: np.ndarray
    subcategory: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


# ------------------------------------------------------------------------------ one mesh


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read one mesh file as it is (not normalised); any problem is an ``SphcError`` naming the file."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise SphcError(
            f"{path}: unsupported mesh type {path.suffix!r}; expected one of {', '.join(MESH_SUFFIXES)}"
        )
    if not path.is_file():
        raise SphcError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trimesh warns about materials, normals etc. it cannot use
            mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except Exception as e:  # trimesh's parsers raise anything from IndexError to KeyError on bad input
        detail = str(e).splitlines()[0] if str(e) else ""
        raise SphcError(f"{path}: cannot read {path.suffix} file ({type(e).__name__}: {detail})") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise SphcError(f"{path}: holds no triangle mesh (read as {type(mesh).__name__})")
    return _checked(mesh, str(path))


def _checked(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """``mesh`` restricted to its faces' vertices, or an ``SphcError`` saying why it cannot be projected."""
    faces = np.asarray(mesh.faces)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise SphcError(f"{name}: mesh has no triangles")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise SphcError(f"{name}: a face refers to vertex {faces.max()} but there are only {len(vertices)}")
    used, faces = np.unique(faces, return_inverse=True)
    vertices = vertices[used]
    if not np.isfinite(vertices).all():
        raise SphcError(f"{name}: mesh has non-finite vertex coordinates")
    tri = vertices[faces.reshape(-1, 3)]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 1e-12 * max(np.ptp(vertices, axis=0).max(), 1e-300) ** 2:
        raise SphcError(f"{name}: mesh has zero surface area (all triangles degenerate)")
    return trimesh.Trimesh(vertices, faces.reshape(-1, 3), process=False, validate=False)


def normalize_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    """A copy centred on the area-weighted surface centroid, scaled so its farthest vertex is at radius 1."""
    mesh = _checked(mesh, name)
    tri = mesh.triangles
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    centre = (area[:, None] * tri.mean(axis=1)).sum(axis=0) / area.sum()
    vertices = mesh.vertices - centre
    radius = np.linalg.norm(vertices, axis=1).max()
    return trimesh.Trimesh(vertices / radius, mesh.faces, process=False, validate=False)


def _convex_hull(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """The convex hull's triangles (qhull; winding arbitrary); for a flat mesh, its planar convex polygon."""
    try:
        return trimesh.Trimesh(
            mesh.vertices, ConvexHull(mesh.vertices).simplices, process=False, validate=False
        )
    except QhullError:
        pass
    points = mesh.vertices - mesh.vertices.mean(axis=0)
    _, sv, vt = np.linalg.svd(points, full_matrices=False)
    if sv[2] > 1e-9 * sv[0]:
        raise SphcError(f"{name}: qhull could not build the convex hull of this mesh")
    polygon = ConvexHull(points @ vt[:2].T).vertices  # the 2-D hull's corners in order
    fan = np.stack([np.full(len(polygon) - 2, polygon[0]), polygon[1:-1], polygon[2:]], axis=1)
    return trimesh.Trimesh(mesh.vertices, fan, process=False, validate=False)


@dataclass(frozen=True)
class _Prepared:
    mesh: trimesh.Trimesh
    hull: trimesh.Trimesh


def _prepare(mesh: trimesh.Trimesh, rotation: np.ndarray | None, name: str) -> _Prepared:
    mesh = normalize_mesh(mesh, name)
    if rotation is not None:
        mesh = trimesh.Trimesh(mesh.vertices @ rotation.T, mesh.faces, process=False, validate=False)
    return _Prepared(mesh, _convex_hull(mesh, name))


def _cast(prepared: Sequence[_Prepared], directions: np.ndarray, method: str) -> np.ndarray:
    """float32 (n, 6, P): the mesh's and the hull's (distance, cos, sin)."""
    surface = cast_rays([p.mesh for p in prepared], directions, method)
    hull = cast_rays([p.hull for p in prepared], directions, method)
    hull[:, 1] = np.abs(hull[:, 1])
    return np.concatenate([surface, hull], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------- many meshes


def _check_L(L: int, where: str) -> None:
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise SphcError(f"{where}: bandlimit L must be a positive integer, got {L!r}")


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm  # imported here so the data module loads even where tqdm is absent

    return tqdm(total=total, desc=desc, unit="mesh", leave=False)


def project_sources(
    sources: Sequence[tuple[str, Callable[[], trimesh.Trimesh]]],
    L: int,
    rotations: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    skip_broken: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Project meshes produced one at a time by ``(name, load)`` pairs: (x, kept, skipped).

    ``x`` float32 (n_kept, 6, L, 2L-1), ``kept`` the indices of the sources used, ``skipped`` the
    (name, reason) of the others. ``rotations`` (n, 3, 3) rotates source i by R_i. With
    ``skip_broken=False`` the first unusable mesh raises its ``SphcError`` instead.
    """
    _check_L(L, "project_meshes")
    n = len(sources)
    if rotations is not None:
        rotations = np.asarray(rotations, dtype=np.float64)
        if rotations.shape != (n, 3, 3):
            raise SphcError(f"project_meshes: rotations must have shape ({n}, 3, 3), got {rotations.shape}")
    directions = mw_grid_points(L).reshape(-1, 3)
    out = np.empty((n, len(CHANNELS), L * (2 * L - 1)), dtype=np.float32)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    bar = _progress_bar(n, f"projecting meshes onto the sphere (L={L})") if progress else None
    for start in range(0, n, _BATCH):
        batch, index = [], []
        for i in range(start, min(n, start + _BATCH)):
            name, load = sources[i]
            try:
                batch.append(_prepare(load(), None if rotations is None else rotations[i], name))
                index.append(i)
            except SphcError as e:
                if not skip_broken:
                    raise
                skipped.append((name, e.message))
                warnings.warn(f"skipped {e.message}", MeshSkippedWarning, stacklevel=2)
        if batch:
            out[len(kept) : len(kept) + len(batch)] = _cast(batch, directions, method)
            kept.extend(index)
        if bar is not None:
            bar.update(min(n, start + _BATCH) - start)
    if bar is not None:
        bar.close()
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {n} meshes (see above)", MeshSkippedWarning, stacklevel=2)
    return (
        out[: len(kept)].reshape(-1, len(CHANNELS), L, 2 * L - 1),
        np.asarray(kept, dtype=np.int64),
        skipped,
    )


def project_meshes(
    meshes: Sequence[trimesh.Trimesh],
    L: int,
    rotations: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    progress: bool = False,
) -> np.ndarray:
    """Project meshes (any position and size) onto the MW grid of bandlimit L: float32 (n, 6, L, 2L-1).

    Each mesh is normalised (``normalize_mesh``), rotated by ``rotations[i]`` if given, and cast;
    an unusable mesh raises an ``SphcError`` naming its index.
    """
    sources = [(f"mesh {i}", (lambda m=m: m)) for i, m in enumerate(meshes)]
    x, _, _ = project_sources(sources, L, rotations, method, skip_broken=False, progress=progress)
    return x


# ------------------------------------------------------------------------------- layouts


def _mesh_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)


def _id_key(mesh_id: str) -> str:
    """SHREC'17 ids are zero-padded numbers in file names; compare them as numbers."""
    return str(int(mesh_id)) if mesh_id.isdigit() else mesh_id


def _read_label_csv(path: Path) -> dict[str, tuple[str, str, str]]:
    """``{id key: (synsetId, subSynsetId or synsetId, split or "")}`` from a SHREC'17 label file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SphcError(f"{path}: cannot read label file ({type(e).__name__}: {e})") from None
    if not rows:
        raise SphcError(
            f"{path}: label file is empty; expected a header with id, synsetId, subSynsetId, ..., split"
        )
    header = [h.strip() for h in rows[0]]
    if "id" not in header or "synsetId" not in header:
        raise SphcError(
            f"{path}:1: label header must name the columns id and synsetId, got {','.join(header)}"
        )
    col = {name: header.index(name) for name in ("id", "synsetId", "subSynsetId", "split") if name in header}
    labels = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise SphcError(f"{path}:{line}: expected {len(header)} comma-separated fields, got {len(row)}")
        cell = {name: row[i].strip() for name, i in col.items()}
        if not cell["id"] or not cell["synsetId"]:
            raise SphcError(f"{path}:{line}: empty id or synsetId")
        labels[_id_key(cell["id"])] = (
            cell["synsetId"],
            cell.get("subSynsetId") or cell["synsetId"],
            cell.get("split", ""),
        )
    return labels


def _shrec_split_dir(root: Path, split: str, variant: str | None) -> Path:
    names = [f"{split}_{variant}"] if variant else [f"{split}_perturbed", f"{split}_normal", split]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise SphcError(f"SHREC'17 data at {root}: no directory {' or '.join(names)}")


def find_shrec17(
    root: str | Path, split: str, variant: str | None = None
) -> tuple[list[MeshRecord], tuple[str, ...]]:
    """The labelled meshes of one SHREC'17 split, and the class list (sorted synsetIds of all labels).

    Layout: ``root/{split}_perturbed/``, ``root/{split}_normal/`` or ``root/{split}/`` holding
    ``<id>.obj`` (``variant`` "perturbed" or "normal" picks one; by default perturbed, the paper's
    setting, then normal, then plain), and labels in ``root/{split}.csv`` or ``root/all.csv``
    (columns id, synsetId, subSynsetId, modelId, split). A mesh without a label is an error.
    """
    root = Path(root)
    if split not in SPLITS:
        raise SphcError(f"SHREC'17: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if variant not in (None, "perturbed", "normal"):
        raise SphcError(f"SHREC'17: variant must be 'perturbed' or 'normal', got {variant!r}")
    csvs = [root / "all.csv"] if (root / "all.csv").is_file() else [root / f"{s}.csv" for s in SPLITS]
    csvs = [p for p in csvs if p.is_file()]
    if not csvs:
        raise SphcError(f"SHREC'17 data at {root}: no label file (all.csv or {split}.csv)")
    labels: dict[str, tuple[str, str, str]] = {}
    for path in csvs:
        labels.update(_read_label_csv(path))
    directory = _shrec_split_dir(root, split, variant)
    files = _mesh_files(directory)
    if not files:
        raise SphcError(
            f"SHREC'17 data at {root}: {directory.name}/ holds no mesh files ({', '.join(MESH_SUFFIXES)})"
        )
    records = []
    for path in files:
        label = labels.get(_id_key(path.stem))
        if label is None:
            raise SphcError(f"{path}: id {path.stem!r} has no row in {', '.join(p.name for p in csvs)}")
        records.append(MeshRecord(path.stem, path, label[0], label[1]))
    return records, tuple(sorted({c for c, _, _ in labels.values()}))


def find_class_tree(root: str | Path, split: str | None = None) -> tuple[list[MeshRecord], tuple[str, ...]]:
    """The meshes of a ``root/<class>/*.{obj,off,ply,stl}`` tree, and the class list (sorted names).

    With ``split``, the files of ``root/<class>/<split>/`` (the ModelNet layout) are used instead.
    Ids are ``<class>/<file stem>``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SphcError(f"mesh data {root}: no such directory")
    if split is not None and split not in SPLITS:
        raise SphcError(f"mesh data: split must be one of {', '.join(SPLITS)} or None, got {split!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    records = []
    for name in classes:
        directory = root / name if split is None else root / name / split
        for path in _mesh_files(directory) if directory.is_dir() else ():
            records.append(MeshRecord(f"{name}/{path.stem}", path, name, name))
    if not records:
        where = "<class>/" if split is None else f"<class>/{split}/"
        raise SphcError(f"mesh data {root}: no mesh files ({', '.join(MESH_SUFFIXES)}) in {where}")
    return records, tuple(classes)


def _fingerprint(records: Sequence[MeshRecord], extra: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in [r.path for r in records] + list(extra):
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _rotation_seed(seed: int, split: str | None) -> int:
    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], 1]).generate_state(1, np.uint64)[0])


def labelled_signals(
    ids: Sequence[str],
    categories: Sequence[str],
    subcategories: Sequence[str],
    classes: Sequence[str],
    sources: Sequence[tuple[str, Callable[[], trimesh.Trimesh]]],
    L: int,
    rotations: np.ndarray | None,
    method: str,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Project ``sources`` (one per id) and gather the arrays of a ``ShapeSignals`` (as cached)."""
    x, kept, skipped = project_sources(sources, L, rotations, method, skip_broken=True, progress=progress)
    index = {c: i for i, c in enumerate(classes)}
    return {
        "x": x,
        "y": np.asarray([index[categories[i]] for i in kept], dtype=np.int64),
        "ids": np.asarray([ids[i] for i in kept], dtype=str),
        "category": np.asarray([categories[i] for i in kept], dtype=str),
        "subcategory": np.asarray([subcategories[i] for i in kept], dtype=str),
        "classes": np.asarray(classes, dtype=str),
        "skipped": np.asarray(skipped, dtype=str).reshape(-1, 2),
    }


def as_signals(arrays: dict[str, np.ndarray]) -> ShapeSignals:
    """The record for arrays made by ``labelled_signals`` (fresh or from the cache)."""
    return ShapeSignals(
        x=arrays["x"],
        y=arrays["y"],
        ids=arrays["ids"],
        category=arrays["category"],
        subcategory=arrays["subcategory"],
        classes=tuple(str(c) for c in arrays["classes"]),
        skipped=tuple((str(a), str(b)) for a, b in arrays["skipped"]),
    )


def mesh_dataset(
    root: str | Path,
    L: int,
    split: str | None = None,
    rotated: bool = False,
    seed: int = 0,
    layout: str = "auto",
    variant: str | None = None,
    method: str = DEFAULT_METHOD,
    progress: bool = True,
) -> ShapeSignals:
    """A labelled mesh collection projected onto the MW grid of bandlimit L (cached on disk).

    ``layout`` "shrec17" (see ``find_shrec17``; needs ``split``), "tree" (``find_class_tree``) or
    "auto" (shrec17 where ``root`` has ``all.csv`` or ``{split}.csv``). ``rotated`` rotates file i of
    the split by the i-th of ``random_rotations(n_files, ...)`` drawn from (``seed``, ``split``).
    Unusable files are skipped with a ``MeshSkippedWarning`` each and listed in ``skipped``.
    """
    root = Path(root).expanduser()
    _check_L(L, "mesh_dataset")
    if not isinstance(rotated, (bool, np.bool_)):
        raise SphcError(f"mesh_dataset: rotated must be True or False, got {rotated!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SphcError(f"mesh_dataset: seed must be a non-negative integer, got {seed!r}")
    if layout == "auto":
        has_csv = (root / "all.csv").is_file() or any((root / f"{s}.csv").is_file() for s in SPLITS)
        layout = "shrec17" if has_csv else "tree"
    if layout == "shrec17":
        if split is None:
            raise SphcError("mesh_dataset: the SHREC'17 layout needs a split (train, val or test)")
        records, classes = find_shrec17(root, split, variant)
        label_files = [p for p in (root / "all.csv", *(root / f"{s}.csv" for s in SPLITS)) if p.is_file()]
    elif layout == "tree":
        records, classes = find_class_tree(root, split)
        label_files = []
    else:
        raise SphcError(f"mesh_dataset: layout must be 'auto', 'shrec17' or 'tree', got {layout!r}")
    rotations = random_rotations(len(records), _rotation_seed(int(seed), split)) if rotated else None

    def compute() -> dict[str, np.ndarray]:
        return labelled_signals(
            [r.id for r in records],
            [r.category for r in records],
            [r.subcategory for r in records],
            classes,
            [(str(r.path), (lambda p=r.path: load_mesh(p))) for r in records],
            L,
            rotations,
            method,
            progress,
        )

    fingerprint = _fingerprint(records, label_files)
    seed_key = int(seed) if rotated else None
    key = (
        DATA_FORMAT_VERSION,
        layout,
        str(root.resolve()),
        split,
        variant,
        int(L),
        bool(rotated),
        seed_key,
        fingerprint,
    )
    return as_signals(load_or_compute("mesh-signals", key, compute))
