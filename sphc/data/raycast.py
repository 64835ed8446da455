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
  meshes. Because every ray is a line through the centre, a ray can only hit a triangle whose
  central projection onto the sphere contains x or -x. Each triangle's projection lies in a cap
  (the normalised centroid c and the largest angle a to a vertex); the caps' (theta, phi) boxes are
  enumerated on a cell grid over the ray directions (about one ray per cell on the MW grid), giving
  a few candidate rays per triangle instead of all of them, and only those pairs run the
  Moller-Trumbore test. Triangles whose cap is too wide to bound (passing near the centre) are
  tested against every ray.
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

from sphc.errors import SphcError

#: Distance reported for a ray that hits nothing: the full diameter of the unit ball.
MISS_DISTANCE = 2.0
#: Ray-casting implementations, see the module docstring.
METHODS = ("sphc", "embree", "trimesh")
#: The fastest method in benchmarks/bench_raycast.py where ``embreex`` is installed, else sphc's own.
DEFAULT_METHOD = "embree" if importlib.util.find_spec("embreex") is not None else "sphc"

#: Caps wider than this (radians) are not bounded by a (theta, phi) box; such triangles meet every ray.
_WIDE_CAP = 1.4
#: Slack for the cap angle and the barycentric tests: rays through a shared edge hit a neighbour.
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
    if len(meshes) == 0:
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


class _DirectionCells:
    """The ray directions sorted into an equiangular (theta, phi) cell grid, about one ray per cell."""

    def __init__(self, directions: np.ndarray):
        n_rays = len(directions)
        self.n_theta = max(1, round(math.sqrt(n_rays / 2)))
        self.n_phi = 2 * self.n_theta
        self.d_theta = math.pi / self.n_theta
        self.d_phi = 2 * math.pi / self.n_phi
        theta = np.arccos(np.clip(directions[:, 2], -1.0, 1.0))
        phi = np.arctan2(directions[:, 1], directions[:, 0]) % (2 * math.pi)
        row = np.minimum((theta / self.d_theta).astype(np.int64), self.n_theta - 1)
        col = np.minimum((phi / self.d_phi).astype(np.int64), self.n_phi - 1)
        cell = row * self.n_phi + col
        self.rays = np.argsort(cell, kind="stable")  # ray ids grouped by cell
        self.count = np.bincount(cell, minlength=self.n_theta * self.n_phi)
        self.start = np.cumsum(self.count) - self.count

    def boxes(self, centre: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cell boxes (row0, n_rows, col0, n_cols) holding every direction within ``angle`` of ``centre``.

        A cap of angular radius a < pi/2 about (theta_c, phi_c) spans theta_c +- a, and, unless it
        contains a pole, phi_c +- asin(sin a / sin theta_c).
        """
        theta = np.arccos(np.clip(centre[:, 2], -1.0, 1.0))
        phi = np.arctan2(centre[:, 1], centre[:, 0]) % (2 * math.pi)
        lo, hi = theta - angle, theta + angle
        polar = (lo <= 0) | (hi >= math.pi)
        ratio = np.sin(angle) / np.maximum(np.sin(theta), 1e-300)
        half = np.where(polar, math.pi, np.arcsin(np.clip(ratio, 0.0, 1.0)))
        row0 = np.clip(np.floor(lo / self.d_theta), 0, self.n_theta - 1).astype(np.int64)
        row1 = np.clip(np.floor(hi / self.d_theta), 0, self.n_theta - 1).astype(np.int64)
        col0 = np.floor((phi - half) / self.d_phi).astype(np.int64)
        n_cols = np.floor((phi + half) / self.d_phi).astype(np.int64) - col0 + 1
        full = polar | (n_cols >= self.n_phi)
        return row0, row1 - row0 + 1, np.where(full, 0, col0), np.where(full, self.n_phi, n_cols)


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items repeated ``counts`` times: (owner index, position within the owner) of every copy."""
    owner = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, local


def _candidate_sides(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caps bounding each triangle's central projection and its antipode: (triangle id, centre, angle).

    A ray x can hit triangle T only if x or -x lies in T's cap, so each triangle yields two "sides".
    Triangles with a wide or undefined cap get one side covering the whole sphere (angle = pi).
    """
    c = triangles.mean(axis=1)
    c_norm = np.linalg.norm(c, axis=1)
    c_hat = c / np.maximum(c_norm, 1e-300)[:, None]
    v_hat = triangles / np.maximum(np.linalg.norm(triangles, axis=2, keepdims=True), 1e-300)
    angle = np.arccos(np.clip(np.einsum("tk,tvk->tv", c_hat, v_hat).min(axis=1), -1.0, 1.0)) + _EPS
    near_origin = (np.linalg.norm(triangles, axis=2) < 1e-12).any(axis=1)
    wide = (angle > _WIDE_CAP) | (c_norm < 1e-12) | near_origin
    ids = np.arange(len(triangles))
    narrow = ~wide
    tri = np.concatenate([ids[narrow], ids[narrow], ids[wide]])
    centre = np.concatenate([c_hat[narrow], -c_hat[narrow], np.tile([0.0, 0.0, 1.0], (int(wide.sum()), 1))])
    angle = np.concatenate([angle[narrow], angle[narrow], np.full(int(wide.sum()), math.pi)])
    return tri, centre, angle


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


def _first_hits(
    triangles: np.ndarray, owner: np.ndarray, directions: np.ndarray, n_meshes: int
) -> np.ndarray:
    """Index into ``triangles`` of the first triangle hit by each (mesh, ray): int64 (n_meshes, P), -1 = miss.

    ``owner[k]`` is the mesh of triangle k; every mesh is cast with the same ``directions``.
    """
    n_rays = len(directions)
    best_t = np.full(n_meshes * n_rays, np.inf)
    best_face = np.full(n_meshes * n_rays, -1, dtype=np.int64)
    area2 = np.linalg.norm(
        np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1
    )
    keep = np.flatnonzero(area2 > 1e-14)  # degenerate triangles cannot be hit
    if len(keep) == 0:
        return best_face.reshape(n_meshes, n_rays)
    rows, offsets = _planes(triangles[keep])
    cells = _DirectionCells(directions)
    side_tri, centre, angle = _candidate_sides(triangles[keep])
    row0, n_rows, col0, n_cols = cells.boxes(centre, angle)
    n_cells = n_rows * n_cols
    # sides in chunks of at most _PAIR_BUDGET cells (about one ray per cell)
    bounds = np.searchsorted(np.cumsum(n_cells), np.arange(_PAIR_BUDGET, n_cells.sum(), _PAIR_BUDGET))
    for sides in np.split(np.arange(len(side_tri)), bounds):
        side, k = _expand(n_cells[sides])
        side = sides[side]
        cell = (row0[side] + k // n_cols[side]) * cells.n_phi + (col0[side] + k % n_cols[side]) % cells.n_phi
        pair_cell, j = _expand(cells.count[cell])
        tri = side_tri[side[pair_cell]]
        ray = cells.rays[cells.start[cell[pair_cell]] + j]
        t, ok = _radial_hits(rows[tri], offsets[tri], directions[ray])
        tri, t = keep[tri[ok]], t[ok]
        slot = owner[tri] * n_rays + ray[ok]
        order = np.lexsort((t, slot))
        slot, t, tri = slot[order], t[order], tri[order]
        first = np.r_[True, slot[1:] != slot[:-1]]
        slot, t, tri = slot[first], t[first], tri[first]
        better = t < best_t[slot]
        best_t[slot[better]] = t[better]
        best_face[slot[better]] = tri[better]
    return best_face.reshape(n_meshes, n_rays)


__all__ = ["DEFAULT_METHOD", "METHODS", "MISS_DISTANCE", "cast_rays"]
