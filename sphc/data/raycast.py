"""Radial ray casting: what a ray from the unit sphere towards its centre first hits on a triangle mesh.

The spherical signal of a 3-D shape (Cohen et al. 2018) is read off rays that start at a point x of
the unit sphere and travel along -x through the centre to the antipode -x (a segment of length 2).
Per ray this module returns three numbers, the channels used by ``sphc.data.meshes``:

* ``distance`` — how far the ray travels before its first hit, in [0, 2]; a ray that hits nothing
  gets ``MISS_DISTANCE`` = 2, the length of the whole segment (it left the ball untouched);
* ``cos`` — n . x for the unit normal n of the hit triangle (from its winding, e1 x e2), so a surface
  facing the ray's origin, with consistently wound outward normals, gives +1; a miss gives 0;
* ``sin`` — |n x x| = sin of the same angle, in [0, 1]; a miss gives 0.

Three interchangeable methods (``METHODS``), equal up to float rounding and rays that graze an edge:

* ``"sphc"`` — numpy, float64, vectorised over (ray, triangle) candidate pairs and batched over
  meshes. Every ray is a line through the centre, so it meets triangle (a, b, c) only if x or -x
  lies in the cone spanned by a, b, c: three half-spaces bounded by planes through the centre. On
  each latitude of the ray grid such a cone covers one arc of longitudes (computed in closed form,
  never too small), so only the rays on those arcs become candidates, few more than the true
  intersections; each candidate runs a radial intersection test and the nearest hit per ray wins.
  On the MW grid rows and columns are exact latitudes and longitudes; other direction sets are
  binned into about one ray per (theta, phi) cell, with latitude bands as rows.
* ``"embree"`` — trimesh's ``embreex`` (Intel Embree, float32 BVH) picks the first triangle per ray;
* ``"trimesh"`` — trimesh's pure-numpy caster (an ``rtree`` of triangle boxes) picks it.

For the two trimesh methods the distance and angle are recomputed in float64 from the chosen
triangle's plane, so all methods agree to float64 rounding wherever they pick the same triangle.
``DEFAULT_METHOD`` is the fastest in ``benchmarks/bench_raycast.py``: embree where ``embreex`` is
installed, else sphc's own (the pure trimesh caster is the slowest by far).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import numpy as np
import trimesh

from sphc.data.mnist import mw_grid_points
from sphc.errors import SphcError

#: Distance reported for a ray that hits nothing: the full diameter of the unit ball.
MISS_DISTANCE = 2.0
#: Ray-casting implementations, see the module docstring.
METHODS = ("sphc", "embree", "trimesh")
#: The fastest method in benchmarks/bench_raycast.py where ``embreex`` is installed, else sphc's own.
DEFAULT_METHOD = "embree" if importlib.util.find_spec("embreex") is not None else "sphc"

#: Wider caps (radians) about a triangle's centroid do not bound its latitudes; all rows are tried.
_WIDE_CAP = 1.4
#: Slack for angles and barycentric tests: a ray through a shared edge still hits one neighbour.
_EPS = 1e-9
#: Upper bound on (triangle, ray) pairs tested at once (memory: ~150 bytes per pair).
_PAIR_BUDGET = 1 << 21


def cast_rays(
    meshes: Sequence[trimesh.Trimesh], directions: np.ndarray, method: str = DEFAULT_METHOD
) -> np.ndarray:
    """(distance, cos, sin) of rays from ``directions`` towards the centre: float64 (n_meshes, 3, P).

    ``directions`` (P, 3) are unit vectors (shared by all meshes); every mesh must lie in the unit
    ball (``sphc.data.meshes.normalize_mesh``), so all hits are within the ray's segment of length 2.
    """
    if method not in METHODS:
        raise SphcError(f"ray casting: method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    directions = np.asarray(directions, dtype=np.float64)
    if directions.ndim != 2 or directions.shape[1] != 3:
        raise SphcError(f"ray casting: directions must have shape (P, 3), got {directions.shape}")
    if not np.allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-9):
        raise SphcError("ray casting: directions must be unit vectors")
    out = np.empty((len(meshes), 3, len(directions)))
    if len(meshes) == 0 or len(directions) == 0:
        return out
    if method == "sphc":
        tris = [np.asarray(m.triangles, dtype=np.float64) for m in meshes]
        owner = np.repeat(np.arange(len(meshes)), [len(t) for t in tris])
        triangles = np.concatenate(tris)
        face = _first_hits(triangles, owner, directions, len(meshes))
        _fill(out, triangles, face, directions)
        return out
    for i, mesh in enumerate(meshes):
        face = _trimesh_first_hits(mesh, directions, method)
        _fill(out[i : i + 1], np.asarray(mesh.triangles, dtype=np.float64), face[None], directions)
    return out


def _trimesh_first_hits(mesh: trimesh.Trimesh, directions: np.ndarray, method: str) -> np.ndarray:
    """Index of the first face hit per ray, -1 for a miss, from trimesh's embree or rtree caster."""
    if method == "embree":
        if importlib.util.find_spec("embreex") is None:
            raise SphcError("ray casting: method 'embree' needs the embreex package (pip install embreex)")
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    else:
        from trimesh.ray.ray_triangle import RayMeshIntersector
    return np.asarray(RayMeshIntersector(mesh).intersects_first(directions, -directions), dtype=np.int64)


def _fill(out: np.ndarray, triangles: np.ndarray, face: np.ndarray, directions: np.ndarray) -> None:
    """Write (distance, cos, sin) into ``out`` (B, 3, P) from the hit face per ray (``face`` (B, P), -1 = miss).

    The distance is the float64 ray-plane intersection of the hit triangle: with origin x, direction
    -x and plane n . p = n . v0, t = (n . x - n . v0) / (n . x).
    """
    hit = face >= 0
    tri = triangles[np.where(hit, face, 0)]  # (B, P, 3, 3)
    n = np.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-300)
    cos = np.einsum("bpk,pk->bp", n, directions)
    safe = np.where(np.abs(cos) > 1e-12, cos, 1.0)
    t = (cos - np.einsum("bpk,bpk->bp", n, tri[..., 0, :])) / safe
    sin = np.linalg.norm(np.cross(n, directions[None]), axis=-1)
    out[:, 0] = np.where(hit, np.clip(t, 0.0, MISS_DISTANCE), MISS_DISTANCE)
    out[:, 1] = np.where(hit, cos, 0.0)
    out[:, 2] = np.where(hit, sin, 0.0)


# ------------------------------------------------------------------------------- the sphc method


class _RayGrid:
    """The ray directions on a (theta, phi) grid of rows and columns; each cell lists its rays.

    On the MW grid (``exact``) a row is one latitude theta_t and a column one longitude phi_p, so a
    cell is one ray. Any other direction set is binned into equiangular cells (about one ray per
    cell) whose rows are latitude bands.
    """

    def __init__(self, directions: np.ndarray):
        n_rays = len(directions)
        L = round((1 + math.sqrt(1 + 8 * n_rays)) / 4)
        self.exact = L >= 1 and n_rays == L * (2 * L - 1)
        self.exact = self.exact and np.allclose(
            directions, mw_grid_points(L).reshape(-1, 3), rtol=0, atol=1e-12
        )
        if self.exact:
            self.n_rows, self.n_cols = L, 2 * L - 1
            theta = np.pi * (2 * np.arange(L) + 1) / (2 * L - 1)
            self.band = np.stack([theta, theta], axis=1)
            self.rays = np.arange(n_rays)
            self.count = np.ones(n_rays, dtype=np.int64)
        else:
            self.n_rows = max(1, round(math.sqrt(n_rays / 2)))
            self.n_cols = 2 * self.n_rows
            edges = np.linspace(0.0, math.pi, self.n_rows + 1)
            self.band = np.stack([edges[:-1], edges[1:]], axis=1)
            theta = np.arccos(np.clip(directions[:, 2], -1.0, 1.0))
            phi = np.arctan2(directions[:, 1], directions[:, 0]) % (2 * math.pi)
            row = np.minimum((theta / (math.pi / self.n_rows)).astype(np.int64), self.n_rows - 1)
            col = np.minimum((phi / (2 * math.pi / self.n_cols)).astype(np.int64), self.n_cols - 1)
            cell = row * self.n_cols + col
            self.rays = np.argsort(cell, kind="stable")  # ray ids grouped by cell
            self.count = np.bincount(cell, minlength=self.n_rows * self.n_cols)
        self.start = np.cumsum(self.count) - self.count
        self.d_phi = 2 * math.pi / self.n_cols

    def rows(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first row, number of rows) whose latitudes meet [lo, hi]."""
        if self.exact:  # theta_t = pi (2t + 1) / (2L - 1)
            scale = (2 * self.n_rows - 1) / math.pi
            first = np.ceil(((lo - _EPS) * scale - 1) / 2)
            last = np.floor(((hi + _EPS) * scale - 1) / 2)
        else:
            first = np.floor(lo / (math.pi / self.n_rows))
            last = np.floor(hi / (math.pi / self.n_rows))
        first = np.clip(first, 0, self.n_rows - 1).astype(np.int64)
        last = np.clip(last, -1, self.n_rows - 1).astype(np.int64)
        return first, np.maximum(last - first + 1, 0)

    def columns(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first column, number of columns, wrapping) whose longitudes meet the arc [lo, hi]."""
        if self.exact:
            first = np.ceil((lo - _EPS) / self.d_phi)
            last = np.floor((hi + _EPS) / self.d_phi)
        else:
            first = np.floor(lo / self.d_phi)
            last = np.floor(hi / self.d_phi)
        n = np.clip(last - first + 1, 0, self.n_cols).astype(np.int64)
        return first.astype(np.int64) % self.n_cols, n


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items repeated ``counts`` times: (owner index, position within the owner) of every copy."""
    owner = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, local


def _sides(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cones of directions that can hit each triangle: (triangle id, walls, theta lo, theta hi).

    A ray x meets triangle (a, b, c) iff x or -x lies in the cone spanned by a, b, c, so each triangle
    has two "sides" (the cone and its antipode). A cone is {x : x . w >= 0 for its three unit walls
    w}, the planes through the centre and an edge. Its latitudes are bounded by a cap about the
    normalised centroid when that cap is narrow, else by the whole range [0, pi].
    """
    cross = np.stack(
        [
            np.cross(triangles[:, 1], triangles[:, 2]),
            np.cross(triangles[:, 2], triangles[:, 0]),
            np.cross(triangles[:, 0], triangles[:, 1]),
        ],
        axis=1,
    )
    orient = np.sign(np.einsum("tk,tk->t", triangles[:, 0], cross[:, 0]))
    walls = cross / np.maximum(np.linalg.norm(cross, axis=2, keepdims=True), 1e-300) * orient[:, None, None]
    c = triangles.mean(axis=1)
    c_norm = np.linalg.norm(c, axis=1)
    c_hat = c / np.maximum(c_norm, 1e-300)[:, None]
    v_norm = np.linalg.norm(triangles, axis=2)
    v_hat = triangles / np.maximum(v_norm, 1e-300)[..., None]
    angle = np.arccos(np.clip(np.einsum("tk,tvk->tv", c_hat, v_hat).min(axis=1), -1.0, 1.0)) + _EPS
    unbounded = (angle > _WIDE_CAP) | (c_norm < 1e-12) | (v_norm < 1e-12).any(axis=1)
    walls[(v_norm < 1e-12).any(axis=1)] = 0.0  # a triangle at the centre: every direction (all walls pass)
    out_tri, out_walls, out_lo, out_hi = [], [], [], []
    for sign in (1.0, -1.0):
        theta = np.arccos(np.clip(sign * c_hat[:, 2], -1.0, 1.0))
        out_tri.append(np.arange(len(triangles)))
        out_walls.append(sign * walls)
        out_lo.append(np.where(unbounded, 0.0, theta - angle))
        out_hi.append(np.where(unbounded, math.pi, theta + angle))
    keep = np.tile(orient != 0, 2)  # a triangle in a plane through the centre is met edge-on only
    return tuple(np.concatenate(a)[keep] for a in (out_tri, out_walls, out_lo, out_hi))


def _arcs(walls: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude arc [lo, hi] (hi - lo <= 2 pi; lo > hi if empty) of a cone within a latitude band.

    Wall w admits x(theta, phi) iff rho sin(theta) cos(phi - psi) >= -w_z cos(theta), rho and psi
    being w's length and angle in the xy-plane: an arc psi +- acos(k), k = -w_z cot(theta) / rho,
    widest at the band's end with the smaller k (k is monotone in theta). The three walls' arcs are
    intersected; where that leaves two pieces their hull is kept, so the arc is never too small.
    """
    sin = np.sin(band)[:, None, :]
    num = -walls[..., 2:3] * np.cos(band)[:, None, :]  # (n, 3, 2): at both band ends
    rho = np.hypot(walls[..., 0], walls[..., 1])[..., None]
    den = rho * sin
    k = np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), np.where(num <= 1e-12, -np.inf, np.inf))
    k = k.min(axis=2) - _EPS
    half = np.arccos(np.clip(k, -1.0, 1.0)) + _EPS
    half = np.where(k > 1.0, -1.0, np.where(k <= -1.0, math.pi, half))  # -1: empty
    psi = np.arctan2(walls[..., 1], walls[..., 0])
    order = np.argsort(half, axis=1)  # narrowest arc first, then cut it with the others
    half = np.take_along_axis(half, order, axis=1)
    psi = np.take_along_axis(psi, order, axis=1)
    lo, hi = psi[:, 0] - half[:, 0], psi[:, 0] + half[:, 0]
    for j in (1, 2):
        lo, hi = _cut(lo, hi, psi[:, j], half[:, j])
    empty = (half < 0).any(axis=1)
    return np.where(empty, 1.0, lo), np.where(empty, 0.0, hi)


def _cut(lo: np.ndarray, hi: np.ndarray, psi: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] minus the complement of the arc psi +- half, trimmed at the ends only."""
    length = hi - lo
    gap = np.where(half >= math.pi, -1.0, math.pi - half)  # half-width of the excluded arc
    centre = (psi + math.pi - lo) % (2 * math.pi)  # relative to lo
    start, end = np.zeros_like(lo), length
    for shift in (-2 * math.pi, 0.0):
        a, b = centre + shift - gap, centre + shift + gap
        start = np.where((gap >= 0) & (a <= start) & (start <= b), b, start)
    for shift in (0.0, -2 * math.pi):
        a, b = centre + shift - gap, centre + shift + gap
        end = np.where((gap >= 0) & (a <= end) & (end <= b), a, end)
    return lo + start, lo + end


def _planes(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle, rows (n, a, b) and offsets (n.v0, a.v0, b.v0) for the radial intersection test.

    n = e1 x e2 is the plane normal; a = (e2 x n)/|n|^2 and b = (n x e1)/|n|^2 are the dual vectors of
    the edges, so a point p of the plane has barycentric coordinates u = a.(p - v0), v = b.(p - v0).
    """
    v0 = triangles[:, 0]
    e1 = triangles[:, 1] - v0
    e2 = triangles[:, 2] - v0
    n = np.cross(e1, e2)
    nn = np.maximum(np.einsum("tk,tk->t", n, n), 1e-300)[:, None]
    rows = np.stack([n, np.cross(e2, n) / nn, np.cross(n, e1) / nn], axis=1)  # (T, 3, 3)
    return rows, np.einsum("tik,tk->ti", rows, v0)


def _radial_hits(rows: np.ndarray, offsets: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray origin x, direction -x against planes from ``_planes``: (t, hit with 0 <= t <= 2).

    The ray's points are s x; the plane n.p = n.v0 is met at s = n.v0 / n.x, i.e. t = 1 - s, and the
    barycentric coordinates there are u = s a.x - a.v0, v = s b.x - b.v0.
    """
    y = np.einsum("pik,pk->pi", rows, x)
    ok = np.abs(y[:, 0]) > 1e-14
    s = offsets[:, 0] / np.where(ok, y[:, 0], 1.0)
    u = s * y[:, 1] - offsets[:, 1]
    v = s * y[:, 2] - offsets[:, 2]
    ok &= (u >= -_EPS) & (v >= -_EPS) & (u + v <= 1 + _EPS) & (np.abs(s) <= 1 + _EPS)
    return 1.0 - s, ok


def _chunks(sizes: np.ndarray) -> list[np.ndarray]:
    """Consecutive index ranges whose ``sizes`` sum to about ``_PAIR_BUDGET`` each."""
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(_PAIR_BUDGET, sizes.sum(), _PAIR_BUDGET))
    return np.split(np.arange(len(sizes)), bounds)


def _candidates(grid: _RayGrid, triangles: np.ndarray):
    """Yield (triangle, ray) candidate pairs in chunks: every pair that can intersect, few that cannot."""
    side_tri, walls, theta_lo, theta_hi = _sides(triangles)
    row0, n_rows = grid.rows(theta_lo, theta_hi)
    for sides in _chunks(n_rows):
        side, k = _expand(n_rows[sides])
        side = sides[side]
        row = row0[side] + k
        lo, hi = _arcs(walls[side], grid.band[row])
        col0, n_cols = grid.columns(lo, hi)
        for strips in _chunks(n_cols):
            strip, j = _expand(n_cols[strips])
            strip = strips[strip]
            cell = row[strip] * grid.n_cols + (col0[strip] + j) % grid.n_cols
            pair_cell, m = _expand(grid.count[cell])
            yield side_tri[side[strip[pair_cell]]], grid.rays[grid.start[cell[pair_cell]] + m]


def _first_hits(
    triangles: np.ndarray, owner: np.ndarray, directions: np.ndarray, n_meshes: int
) -> np.ndarray:
    """Index into ``triangles`` of the first triangle hit by each (mesh, ray): int64 (n_meshes, P), -1 = miss.

    ``owner[k]`` is the mesh of triangle k; every mesh is cast with the same ``directions``.
    """
    n_rays = len(directions)
    best_t = np.full(n_meshes * n_rays, np.inf)
    best_face = np.full(n_meshes * n_rays, -1, dtype=np.int64)
    e = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    keep = np.flatnonzero(np.linalg.norm(e, axis=1) > 1e-14)  # degenerate triangles cannot be hit
    if len(keep) == 0:
        return best_face.reshape(n_meshes, n_rays)
    rows, offsets = _planes(triangles[keep])
    for tri, ray in _candidates(_RayGrid(directions), triangles[keep]):
        t, ok = _radial_hits(rows[tri], offsets[tri], directions[ray])
        tri, t = keep[tri[ok]], t[ok]
        slot = owner[tri] * n_rays + ray[ok]
        np.minimum.at(best_t, slot, t)
        nearest = t == best_t[slot]  # best so far; a later chunk that comes nearer overwrites it
        best_face[slot[nearest]] = tri[nearest]
    return best_face.reshape(n_meshes, n_rays)


__all__ = ["DEFAULT_METHOD", "METHODS", "MISS_DISTANCE", "cast_rays"]
