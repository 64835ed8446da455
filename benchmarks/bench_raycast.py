"""Ray-casting benchmark: rays per second of the three casters in ``sphc.data.raycast``, CPU, same run.

Methods (all return the same (distance, cos, sin) per ray; ``tests/test_meshes.py`` checks they agree):

* ``sphc`` — sphc's own numpy caster: per triangle and grid row, the longitudes its cone of
  directions can cover, so (ray, triangle) candidate pairs are few more than the true intersections;
  a radial intersection test per pair; batched over all meshes;
* ``embree`` — trimesh's ``RayMeshIntersector`` on ``embreex`` (Intel Embree BVH, float32), one mesh
  at a time, first hit per ray (``intersects_first``);
* ``trimesh`` — trimesh's pure-numpy ``RayMeshIntersector`` (an rtree of triangle boxes), same calls.

Workloads: 26 procedural stand-in shapes (2 per class, 24-950 triangles each, normalised into the
unit ball) cast together, and one dense icosphere (5,120 or 81,920 triangles), on the MW grid of
bandlimit L (L (2L-1) rays per mesh). Each round visits the methods in a shuffled order; a method's
time is the median over rounds of one call after an untimed warm-up call. trimesh's pure caster is
timed once, on workloads of at most 20,000 rays and triangles only (it is 25-1000x slower).

Floor (for the sphc method): any caster built from sphc's radial test must at least run it on the
(ray, triangle) pairs that really intersect; their count times the per-pair cost of the test,
measured in this run on a large batch of pre-gathered pairs, bounds sphc's time from below (it
leaves out the per-triangle work, which dominates when triangles far outnumber rays). The table
shows candidate and true pairs per ray: the gap between them is what the pruning leaves.

The last table times the whole projection (``sphc.data.meshes.project_meshes``: normalise, convex
hull, cast mesh and hull) per mesh, which is what a data set build costs.

    /work/main/.venv/bin/python benchmarks/bench_raycast.py           # full, ~1 min
    /work/main/.venv/bin/python benchmarks/bench_raycast.py --quick   # smoke, ~30 s
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import fmt_s, interleaved, machine, median, table  # noqa: E402


def pair_counts(meshes, directions) -> tuple[int, int]:
    """(candidate pairs, truly intersecting pairs) of sphc's caster for these meshes and rays."""
    import numpy as np

    from sphc.data import raycast as rc

    triangles = np.concatenate([np.asarray(m.triangles, dtype=np.float64) for m in meshes])
    rows, offsets = rc._planes(triangles)
    candidates = true_pairs = 0
    for tri, ray in rc._candidates(rc._RayGrid(directions), triangles):
        _, ok = rc._radial_hits(rows[tri], offsets[tri], directions[ray])
        candidates += len(tri)
        true_pairs += int(ok.sum())
    return candidates, true_pairs


def seconds_per_pair(n: int = 2_000_000) -> float:
    """Per-pair cost of the radial test on pre-gathered random pairs (median of 5)."""
    import numpy as np

    from sphc.data import raycast as rc

    rng = np.random.default_rng(0)
    tri = rng.normal(size=(4096, 3, 3))
    rows, offsets = rc._planes(tri)
    idx = rng.integers(0, 4096, n)
    x = rng.normal(size=(n, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r, o = rows[idx], offsets[idx]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        rc._radial_hits(r, o, x)
        times.append(time.perf_counter() - t)
    return median(times) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L = 16 and the small icosphere only, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)

    import trimesh

    from sphc.data import meshes as M
    from sphc.data import synthetic_shapes
    from sphc.data.mnist import mw_grid_points
    from sphc.data.raycast import DEFAULT_METHOD, cast_rays

    shapes = [M.normalize_mesh(s.mesh()) for s in synthetic_shapes.synthetic_meshes("test", 2, 0)]
    levels = (4,) if args.quick else (4, 6)
    spheres = [trimesh.creation.icosphere(subdivisions=k, radius=0.9) for k in levels]
    workloads = [(f"26 stand-in shapes ({sum(len(m.faces) for m in shapes)} tri)", shapes, 16)]
    if not args.quick:
        workloads += [(workloads[0][0], shapes, 32), (workloads[0][0], shapes, 64)]
    for s in spheres:
        workloads.append((f"icosphere ({len(s.faces)} tri)", [s], 16 if args.quick else 64))

    per_pair = seconds_per_pair()
    print(machine())
    print(f"radial test: {per_pair * 1e9:.1f} ns per (ray, triangle) pair (median of 5 on 2M pairs)\n")
    rows = []
    for name, group, L in workloads:
        directions = mw_grid_points(L).reshape(-1, 3)
        n_rays = len(group) * len(directions)
        fns = {m: (lambda m=m, g=group, d=directions: cast_rays(g, d, m)) for m in ("sphc", "embree")}
        t = {k: median(v) for k, v in interleaved(fns, rounds, warmup=0).items()}
        if n_rays <= 20_000 and sum(len(g.faces) for g in group) <= 20_000:  # trimesh's own is slow
            start = time.perf_counter()
            cast_rays(group, directions, "trimesh")
            t["trimesh"] = time.perf_counter() - start
        candidates, true_pairs = pair_counts(group, directions)
        floor = true_pairs * per_pair
        fastest = min(t, key=t.get)
        rows.append(
            (
                name,
                L,
                n_rays,
                *(f"{n_rays / t[m] / 1e6:.3f} ({fmt_s(t[m])})" if m in t else "-" for m in METHODS_ORDER),
                f"{t['sphc'] / t['embree']:.1f}x",
                f"{candidates / n_rays:.1f} / {true_pairs / n_rays:.2f}",
                f"{n_rays / floor / 1e6:.2f} ({fmt_s(floor)})",
                fastest,
            )
        )
    print(
        table(
            (
                "workload",
                "L",
                "rays",
                *(f"{m}: M rays/s (time)" for m in METHODS_ORDER),
                "sphc / embree time",
                "pairs per ray: candidate / true",
                "sphc floor: M rays/s (time)",
                "fastest",
            ),
            rows,
            "ray casting, median over rounds",
        )
    )

    L = 16 if args.quick else 32
    fns = {m: (lambda m=m: M.project_meshes(shapes, L, method=m)) for m in ("sphc", "embree")}
    t = {k: median(v) for k, v in interleaved(fns, rounds, warmup=0).items()}
    start = time.perf_counter()
    M.project_meshes(shapes, L, method="trimesh")
    t["trimesh"] = time.perf_counter() - start
    print(
        table(
            ("method", "per mesh", "meshes/s", "vs embree"),
            [
                (m, fmt_s(t[m] / len(shapes)), f"{len(shapes) / t[m]:.1f}", f"{t[m] / t['embree']:.1f}x")
                for m in METHODS_ORDER
            ],
            f"whole projection of the 26 stand-in shapes (normalise, hull, cast mesh + hull), L = {L}",
        )
    )
    print(f"\nDEFAULT_METHOD = {DEFAULT_METHOD!r}")


METHODS_ORDER = ("sphc", "embree", "trimesh")

if __name__ == "__main__":
    main()
