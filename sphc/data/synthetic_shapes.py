"""A procedural stand-in for SHREC'17: labelled composite shapes (tables, chairs, mugs, ...) made here.

The real SHREC'17 release (51k ShapeNet meshes) cannot be fetched on a machine without network
access, so tests, examples and small experiments use this generator instead. It is a stand-in, not a
benchmark: numbers measured on it say nothing about SHREC'17.

Why it is built this way:

* **Classes** (``CLASSES``): 13 object kinds, each a union of ``trimesh.creation`` primitives (boxes,
  cylinders, cones, tori, capsules, surfaces of revolution) with random proportions. Some kinds come
  in variants (a round table, an armchair), which become SHREC-style subcategories
  ``"<class>.<variant>"``; the plain kind's subcategory is the class itself, so all three relevance
  grades of the SHREC'17 evaluator occur.
* **Hard enough.** Every shape then gets a global scale (the same range for all classes), an
  independent scale per axis, a smooth random wobble and per-vertex noise, so classes overlap in size
  and in proportions: no single global number (height, width, aspect ratio) separates them.
* **Upright.** Shapes stand on the z = 0 plane facing a canonical direction, as ShapeNet models do,
  so a model that is not rotation-equivariant can learn orientation cues that rotated copies break.
* **Valid meshes.** Each primitive is a closed, consistently wound surface and the noise moves
  vertices without changing connectivity, so every shape is watertight (its parts may intersect).
* **Deterministic.** Shape i of class c in a split is a pure function of (seed, split, c, i), so
  asking for more shapes per class only appends new ones; its rotation (``rotated=True``) is too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh
from trimesh.transformations import rotation_matrix

from sphc.cache import load_or_compute
from sphc.data.meshes import (
    DATA_FORMAT_VERSION,
    SPLITS,
    ShapeSignals,
    as_signals,
    labelled_signals,
)
from sphc.data.mnist import random_rotations
from sphc.data.raycast import DEFAULT_METHOD
from sphc.errors import SphcError

#: Bump when the generator changes any shape; cached data sets are then rebuilt.
GENERATOR_VERSION = 1

Parts = list[trimesh.Trimesh]


# ----------------------------------------------------------------------------------- primitives


def _box(size, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(centre))


def _rod(a, b, radius: float, sections: int = 12) -> trimesh.Trimesh:
    """A cylinder from point a to point b."""
    return trimesh.creation.cylinder(radius, segment=[a, b], sections=sections)


def _disc(radius: float, z0: float, z1: float, x: float = 0.0, y: float = 0.0, sections: int = 24):
    return _rod([x, y, z0], [x, y, z1], radius, sections)


def _cone(radius: float, height: float, z0: float, x: float = 0.0, y: float = 0.0) -> trimesh.Trimesh:
    """A cone standing on z = z0 with its apex up."""
    return trimesh.creation.cone(
        radius, height, sections=24, transform=trimesh.transformations.translation_matrix([x, y, z0])
    )


def _legs(xs, ys, height: float, thick: float) -> Parts:
    return [_box([thick, thick, height], [x, y, height / 2]) for x in xs for y in ys]


# -------------------------------------------------------------------------------- the classes


def _table(u, variant) -> Parts:
    w, d, h, t = u(0.8, 1.8), u(0.5, 1.1), u(0.45, 1.0), u(0.03, 0.08)
    if variant == "round":
        r = w / 2
        return [_disc(r, h - t, h), _disc(u(0.04, 0.1), 0, h - t), _disc(u(0.35, 0.7) * r, 0, 0.03)]
    top = _box([w, d, t], [0, 0, h - t / 2])
    inset = u(0.03, 0.12)
    if variant == "trestle":
        ends = [_box([0.05, 0.8 * d, h - t], [s * (w / 2 - inset), 0, (h - t) / 2]) for s in (-1, 1)]
        return [top, *ends, _box([w - 2 * inset, 0.05, 0.05], [0, 0, u(0.15, 0.4) * h])]
    lt = u(0.04, 0.09)
    return [top, *_legs([-(w / 2 - inset), w / 2 - inset], [-(d / 2 - inset), d / 2 - inset], h - t, lt)]


def _chair(u, variant) -> Parts:
    sw, sd, sh, st = u(0.4, 0.65), u(0.4, 0.6), u(0.38, 0.55), u(0.03, 0.08)
    bh, bt, lt = u(0.3, 0.7), u(0.03, 0.07), u(0.03, 0.06)
    parts = [_box([sw, sd, st], [0, 0, sh - st / 2]), _box([sw, bt, bh], [0, -(sd - bt) / 2, sh + bh / 2])]
    parts += _legs([-(sw - lt) / 2, (sw - lt) / 2], [-(sd - lt) / 2, (sd - lt) / 2], sh - st, lt)
    if variant == "arm":
        ah = u(0.18, 0.3)
        for s in (-1, 1):
            parts.append(_box([0.05, sd, 0.04], [s * sw / 2, 0, sh + ah]))
            parts.append(_rod([s * sw / 2, sd / 2 - 0.03, sh], [s * sw / 2, sd / 2 - 0.03, sh + ah], 0.015))
    return parts


def _stool(u, variant) -> Parts:
    r, h, st = u(0.15, 0.3), u(0.45, 0.85), u(0.03, 0.07)
    n = 3 if u(0, 1) < 0.5 else 4
    phase = u(0, 2 * math.pi / n)
    spread = u(1.0, 1.4)
    parts = [_disc(r, h - st, h)]
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        top = [0.7 * r * math.cos(a), 0.7 * r * math.sin(a), h - st]
        parts.append(_rod([spread * r * math.cos(a), spread * r * math.sin(a), 0], top, u(0.015, 0.03)))
    if variant == "ring":
        zr = u(0.25, 0.45) * h
        radius = r * (spread - (spread - 0.7) * zr / (h - st))
        parts.append(
            trimesh.creation.torus(
                radius, 0.015, 24, 8, transform=trimesh.transformations.translation_matrix([0, 0, zr])
            )
        )
    return parts


def _sofa(u, variant) -> Parts:
    w, d, sh, bh, bt = u(1.2, 2.2), u(0.7, 1.0), u(0.3, 0.45), u(0.3, 0.5), u(0.12, 0.25)
    parts = [_box([w, d, sh], [0, 0, sh / 2]), _box([w, bt, sh + bh], [0, -(d - bt) / 2, (sh + bh) / 2])]
    if variant != "armless":
        at, ah = u(0.1, 0.2), u(0.15, 0.3)
        parts += [_box([at, d, sh + ah], [s * (w - at) / 2, 0, (sh + ah) / 2]) for s in (-1, 1)]
    return parts


def _bed(u, variant) -> Parts:
    w, length, mh, lh, hh = u(0.9, 1.8), u(1.8, 2.2), u(0.2, 0.35), u(0.08, 0.3), u(0.3, 0.8)
    top = lh + mh
    parts = [
        _box([w, length, mh], [0, 0, lh + mh / 2]),
        _box([w, 0.06, top + hh], [0, -length / 2, (top + hh) / 2]),
    ]
    parts += _legs([-(w / 2 - 0.05), w / 2 - 0.05], [-(length / 2 - 0.05), length / 2 - 0.05], lh, 0.06)
    if variant == "footboard":
        fh = u(0.1, 0.35)
        parts.append(_box([w, 0.06, top + fh], [0, length / 2, (top + fh) / 2]))
    return parts


def _bookshelf(u, variant) -> Parts:
    w, d, h, t = u(0.6, 1.2), u(0.25, 0.4), u(0.8, 2.0), u(0.02, 0.04)
    n = int(u(2, 6))
    parts = [_box([t, d, h], [s * (w - t) / 2, 0, h / 2]) for s in (-1, 1)]
    parts += [_box([w - 2 * t, d, t], [0, 0, z]) for z in np.linspace(t / 2, h - t / 2, n + 2)]
    if variant == "back":
        parts.append(_box([w, t, h], [0, -(d - t) / 2, h / 2]))
    return parts


def _lamp(u, variant) -> Parts:
    rb, H, rs, hs = u(0.1, 0.25), u(0.4, 1.6), u(0.12, 0.3), u(0.15, 0.3)
    pole = u(0.012, 0.03)
    parts = [_disc(rb, 0, 0.03)]
    if variant == "desk":
        elbow = [0, 0, 0.6 * H]
        head = [u(0.2, 0.5) * H, 0, H]
        parts += [_rod([0, 0, 0], elbow, pole), _rod(elbow, head, pole), _cone(rs, hs, H - 0.6 * hs, head[0])]
    else:
        parts += [_rod([0, 0, 0], [0, 0, H], pole), _cone(rs, hs, H - 0.6 * hs)]
    return parts


def _mug(u, variant) -> Parts:
    r, h = u(0.3, 0.5), u(0.6, 1.1)
    major = u(0.15, 0.3) * h
    handle = rotation_matrix(math.pi / 2, [1, 0, 0])
    handle[:3, 3] = [r, 0, h / 2]
    parts = [_disc(r, 0, h), trimesh.creation.torus(major, u(0.03, 0.06), 24, 8, transform=handle)]
    if variant == "saucer":
        parts.append(_disc(u(1.4, 1.9) * r, -0.03, 0.0))
    return parts


def _bottle(u, variant) -> Parts:
    r, hb, hs, hn = u(0.15, 0.35), u(0.5, 1.2), u(0.1, 0.3), u(0.1, 0.35)
    rn = u(0.25, 0.45) * r
    parts = [_disc(r, 0, hb), _cone(r, hs, hb), _disc(rn, hb + 0.5 * hs, hb + hs + hn)]
    if variant == "cap":
        parts.append(_disc(1.3 * rn, hb + hs + hn, hb + hs + hn + u(0.03, 0.08)))
    return parts


def _vase(u, variant) -> Parts:
    h, r0 = u(0.6, 1.5), u(0.2, 0.45)
    z = np.linspace(0, h, 9)
    bulge = 1 + u(0.2, 0.6) * np.sin(math.pi * z / h * u(0.8, 1.6) + u(-0.5, 0.5))
    radius = np.maximum(r0 * bulge, 0.25 * r0)
    profile = np.concatenate([[[0.0, 0.0]], np.stack([radius, z], axis=1), [[0.0, h]]])
    parts = [trimesh.creation.revolve(profile, sections=24)]
    if variant == "amphora":
        for s in (-1, 1):
            ring = rotation_matrix(math.pi / 2, [1, 0, 0])
            ring[:3, 3] = [s * radius[6], 0, z[6]]
            parts.append(trimesh.creation.torus(u(0.08, 0.15) * h, 0.02, 16, 8, transform=ring))
    return parts


def _car(u, variant) -> Parts:
    length, w, bh, c, wr = u(1.5, 2.5), u(0.6, 1.0), u(0.25, 0.45), u(0.08, 0.2), u(0.12, 0.2)
    base = c + bh
    parts = [_box([length, w, bh], [0, 0, c + bh / 2])]
    if variant == "van":
        ch = u(0.35, 0.6)
        parts.append(_box([0.8 * length, 0.95 * w, ch], [-0.1 * length, 0, base + ch / 2]))
    else:
        ch = u(0.2, 0.4)
        parts.append(_box([u(0.4, 0.6) * length, 0.9 * w, ch], [u(-0.2, 0.1) * length, 0, base + ch / 2]))
    for x in (-(length / 2 - 1.3 * wr), length / 2 - 1.3 * wr):
        for y in (-w / 2, w / 2):
            parts.append(_rod([x, y - 0.05, wr], [x, y + 0.05, wr], wr, 16))
    return parts


def _airplane(u, variant) -> Parts:
    fl, fr, chord, span = u(1.5, 2.5), u(0.08, 0.18), u(0.25, 0.5), u(1.2, 2.4)
    z = fr
    body = rotation_matrix(math.pi / 2, [0, 1, 0])
    body[:3, 3] = [0, 0, z]
    fh = u(0.2, 0.45)
    wing_x = u(-0.1, 0.15) * fl
    parts = [
        trimesh.creation.capsule(height=fl - 2 * fr, radius=fr, count=[12, 12], transform=body),
        _box([chord, span, 0.03], [wing_x, 0, z]),
        _box([0.6 * chord, 0.03, fh], [-fl / 2 + 0.3 * chord, 0, z + fr + fh / 2 - 0.02]),
        _box([0.5 * chord, u(0.3, 0.5) * span, 0.025], [-fl / 2 + 0.25 * chord, 0, z + 0.3 * fr]),
    ]
    if variant == "jet":
        for s in (-1, 1):
            y = s * u(0.2, 0.35) * span
            parts.append(
                _rod(
                    [wing_x + 0.4 * chord, y, z - 0.6 * fr], [wing_x - 0.3 * chord, y, z - 0.6 * fr], 0.5 * fr
                )
            )
    return parts


def _rocket(u, variant) -> Parts:
    r, h, hn = u(0.1, 0.25), u(0.8, 2.0), u(0.2, 0.5)
    n = 3 if u(0, 1) < 0.5 else 4
    fin_len, fin_h = u(0.15, 0.35), u(0.2, 0.4)
    parts = [_disc(r, 0, h), _cone(r, hn, h)]
    for k in range(n):
        fin = rotation_matrix(2 * math.pi * k / n, [0, 0, 1])
        parts.append(
            _box([fin_len, 0.02, fin_h], [r + fin_len / 2 - 0.01, 0, fin_h / 2]).apply_transform(fin)
        )
    if variant == "booster":
        rb, hb = 0.4 * r, u(0.4, 0.7) * h
        for s in (-1, 1):
            parts += [_disc(rb, 0, hb, x=s * (r + rb)), _cone(rb, 2 * rb, hb, x=s * (r + rb))]
    return parts


#: class name -> (builder, variants with their probabilities; "" is the plain kind).
_BUILDERS: dict[str, tuple[Callable, dict[str, float]]] = {
    "airplane": (_airplane, {"": 0.6, "jet": 0.4}),
    "bed": (_bed, {"": 0.6, "footboard": 0.4}),
    "bookshelf": (_bookshelf, {"": 0.6, "back": 0.4}),
    "bottle": (_bottle, {"": 0.6, "cap": 0.4}),
    "car": (_car, {"": 0.7, "van": 0.3}),
    "chair": (_chair, {"": 0.6, "arm": 0.4}),
    "lamp": (_lamp, {"": 0.6, "desk": 0.4}),
    "mug": (_mug, {"": 0.7, "saucer": 0.3}),
    "rocket": (_rocket, {"": 0.7, "booster": 0.3}),
    "sofa": (_sofa, {"": 0.7, "armless": 0.3}),
    "stool": (_stool, {"": 0.6, "ring": 0.4}),
    "table": (_table, {"": 0.5, "round": 0.25, "trestle": 0.25}),
    "vase": (_vase, {"": 0.7, "amphora": 0.3}),
}
#: The classes, in label order.
CLASSES = tuple(sorted(_BUILDERS))


# ------------------------------------------------------------------------------ one shape


@dataclass(frozen=True)
class SyntheticShape:
    """One shape of the stand-in data set; the mesh and rotation are rebuilt from ``seed`` on demand."""

    id: str
    category: str
    subcategory: str
    key: tuple[int, ...]  # (seed, split, label, index)

    def mesh(self) -> trimesh.Trimesh:
        return make_shape(self.category, _rng(self.key, 0))[0]

    def rotation(self) -> np.ndarray:
        """A Haar-random rotation (3, 3) of its own, independent of the shape's random draws."""
        return random_rotations(1, np.random.SeedSequence([*self.key, 1]).generate_state(1, np.uint64)[0])[0]


def _rng(key: tuple[int, ...], purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*key, purpose]))


def _variant(cls: str, rng: np.random.Generator) -> str:
    variants = _BUILDERS[cls][1]
    return str(rng.choice(list(variants), p=list(variants.values())))


def make_shape(cls: str, rng: np.random.Generator) -> tuple[trimesh.Trimesh, str]:
    """One random shape of class ``cls`` (upright, base near z = 0) and its subcategory."""
    if cls not in _BUILDERS:
        raise SphcError(f"synthetic shapes: unknown class {cls!r}; the classes are {', '.join(CLASSES)}")
    variant = _variant(cls, rng)

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    mesh = trimesh.util.concatenate(_BUILDERS[cls][0](u, variant))
    v = mesh.vertices
    size = float(np.ptp(v, axis=0).max())
    wobble = rng.normal(0.0, 3.0 / size, (3, 3))
    v = v + u(0.0, 0.02) * size * np.sin(v @ wobble + rng.uniform(0, 2 * math.pi, 3))
    v = v + rng.normal(0.0, 0.002 * size, v.shape)
    v = v * rng.uniform(0.8, 1.25, 3) * u(0.5, 2.0) / size
    return trimesh.Trimesh(v, mesh.faces, process=False, validate=False), (
        f"{cls}.{variant}" if variant else cls
    )


def synthetic_meshes(
    split: str, per_class: int, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> list[SyntheticShape]:
    """``per_class`` shapes of each class (meshes are built only when asked for)."""
    _check(split, per_class, seed)
    out = []
    for cls in classes:
        if cls not in _BUILDERS:
            raise SphcError(f"synthetic shapes: unknown class {cls!r}; the classes are {', '.join(CLASSES)}")
        for i in range(per_class):
            key = (int(seed), SPLITS.index(split), CLASSES.index(cls), i)
            variant = _variant(cls, _rng(key, 0))  # the first draw of make_shape
            sub = f"{cls}.{variant}" if variant else cls
            out.append(SyntheticShape(f"{cls}-{split}-{i:05d}", cls, sub, key))
    return out


def _check(split: str, per_class: int, seed: int) -> None:
    if split not in SPLITS:
        raise SphcError(f"synthetic shapes: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise SphcError(f"synthetic shapes: per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SphcError(f"synthetic shapes: seed must be a non-negative integer, got {seed!r}")


def synthetic_shapes(
    split: str,
    L: int,
    rotated: bool,
    seed: int = 0,
    per_class: int = 100,
    method: str = DEFAULT_METHOD,
    progress: bool = True,
) -> ShapeSignals:
    """The stand-in data set projected onto the MW grid of bandlimit L (``sphc.data.meshes.CHANNELS``).

    ``per_class`` shapes of each of the 13 classes; ``rotated`` rotates every shape by its own
    Haar-random rotation. Train, val and test splits draw from disjoint seeds. Cached on disk.
    """
    _check(split, per_class, seed)
    if not isinstance(rotated, (bool, np.bool_)):
        raise SphcError(f"synthetic shapes: rotated must be True or False, got {rotated!r}")

    def compute() -> dict[str, np.ndarray]:
        shapes = synthetic_meshes(split, int(per_class), int(seed))
        return labelled_signals(
            [s.id for s in shapes],
            [s.category for s in shapes],
            [s.subcategory for s in shapes],
            CLASSES,
            [(s.id, s.mesh) for s in shapes],
            L,
            np.stack([s.rotation() for s in shapes]) if rotated else None,
            method,
            progress,
        )

    key = (GENERATOR_VERSION, DATA_FORMAT_VERSION, split, int(L), bool(rotated), int(seed), int(per_class))
    return as_signals(load_or_compute("synthetic-shapes", key, compute))


__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "SyntheticShape",
    "make_shape",
    "synthetic_meshes",
    "synthetic_shapes",
]
