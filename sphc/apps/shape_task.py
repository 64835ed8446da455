"""3-D shape classification and SHREC'17 retrieval (``sphc train --data synthetic-shapes|shapes``).

Why it is built this way:

* **A classifier, as Cohen et al. train it**: cross-entropy over the categories (not the
  subcategories) on the 6-channel ray-cast signals (``sphc.data.meshes``), one signal per shape.
* **Retrieval from the classifier** (``sphc.apps.retrieval.classifier_rankings``): each query's list
  is every test shape predicted in the query's class, sorted by that class's score — how the
  classifier-based SHREC'17 entries (Cohen et al.'s s2cnn, Kondor et al.'s CGNet) ranked. Scored
  with the SHREC'17 evaluator's P@N, R@N, F1@N, mAP and NDCG, micro- and macro-averaged.
* **Data.** ``synthetic-shapes`` is the procedural stand-in (``sphc.data.synthetic_shapes``, 13
  classes; ``--subset`` / ``--test-subset`` count shapes, drawn class-balanced); ``shapes`` reads a
  SHREC'17 release (``train``/``test`` directories and label CSVs; the ``normal`` meshes when present,
  since ``r`` rotates them here) or a ``DIR/<class>/`` tree — with ``train``/``test`` subdirectories
  per class (ModelNet) or without (then a seeded, class-stratified 80/20 split). Test splits NR and R
  hold the same shapes, R each rotated by its own Haar-random rotation.
* **More outputs than classes** (``examples/shrec17.sph`` has SHREC'17's 55 on the 13-class stand-in):
  the first ``classes`` outputs are the logits and the rest are never used.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sphc.apps.tasks import (
    PlanarCNN,
    Task,
    check_splits,
    compiled_model,
    invariance_lines,
    invariance_probe,
    output_size,
    predict,
    refuse_set_model,
    run_heading,
    seeded_choice,
)
from sphc.errors import SphcError

#: Stand-in shapes per class when --subset / --test-subset are not given.
DEFAULT_TRAIN_PER_CLASS = 100
DEFAULT_TEST_PER_CLASS = 50
#: A plain class tree (no train/test subdirectories) holds this fraction of each class out for testing.
TEST_FRACTION = 0.2
RANKING_METHOD = (
    "classifier: each query returns the test shapes predicted in its class, sorted by that class's "
    "log-softmax score (as the s2cnn and CGNet SHREC'17 entries)"
)
_PURPOSE_TRAIN, _PURPOSE_TEST, _PURPOSE_SPLIT = 21, 22, 23
_VARIANT_SUFFIXES = ("", "_normal", "_perturbed")


def take(data, index: np.ndarray):
    """The shapes of a ``ShapeSignals`` at ``index``."""
    return dataclasses.replace(
        data,
        x=data.x[index],
        y=data.y[index],
        ids=data.ids[index],
        category=data.category[index],
        subcategory=data.subcategory[index],
    )


def stratified_split(category: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``TEST_FRACTION`` of each class (at least one where it has two) tested."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_SPLIT]))
    test = []
    for c in np.unique(category):
        members = np.flatnonzero(category == c)
        k = min(len(members) - 1, max(1, round(TEST_FRACTION * len(members))))
        test.extend(rng.permutation(members)[:k])
    mask = np.zeros(len(category), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _split_dirs(root: Path) -> bool:
    return any((p / "train").is_dir() for p in root.iterdir() if p.is_dir())


def _shrec_variant(root: Path) -> str | None:
    return "normal" if (root / "train_normal").is_dir() else None


def _is_shrec(root: Path) -> bool:
    return (root / "all.csv").is_file() or any(
        (root / f"{s}.csv").is_file() for s in ("train", "val", "test")
    )


class ShapeTask(Task):
    """One signal per shape in, class scores out; retrieval lists made from the scores."""

    data_sets = ("synthetic-shapes", "shapes")
    network_baselines = ("planar",)
    pictures = ("shapes.png", "retrieval.png", "curves.png", "accuracy.png")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        check_splits(config)
        if config.data == "synthetic-shapes" and config.data_path is not None:
            raise SphcError(
                "--data synthetic-shapes makes its shapes and takes no --data-path; "
                "use --data shapes --data-path DIR for a SHREC'17 release or a DIR/<class>/ mesh tree"
            )
        if config.data == "shapes" and (config.data_path is None or not Path(config.data_path).is_dir()):
            raise SphcError(
                "--data shapes needs --data-path DIR: a SHREC'17 release or a DIR/<class>/ mesh tree"
                + (f" ({config.data_path} is not a directory)" if config.data_path else "")
            )

    def classes(self) -> tuple[str, ...]:
        """The class list, known before any mesh is projected."""
        from sphc.data.meshes import find_class_tree, find_shrec17
        from sphc.data.synthetic_shapes import CLASSES

        if self.config.data == "synthetic-shapes":
            return CLASSES
        root = Path(self.config.data_path)
        if _is_shrec(root):
            return find_shrec17(root, "train", _shrec_variant(root))[1]
        return find_class_tree(root, "train" if _split_dirs(root) else None)[1]

    def build_model(self) -> nn.Module:
        model = compiled_model(self.config)
        if self.config.baseline == "planar":
            return PlanarCNN(model.input_shape, len(self.classes()))
        return model

    # ------------------------------------------------------------------------------ the data

    def _load_splits(self, L: int, progress: bool):
        """(train, {kind: test}) ``ShapeSignals``, and a note on where they came from."""
        from sphc.data.meshes import mesh_dataset
        from sphc.data.synthetic_shapes import CLASSES, synthetic_shapes

        c = self.config
        if c.data == "synthetic-shapes":

            def per_class(k: int | None, default: int) -> int:
                return default if k is None else math.ceil(k / len(CLASSES))

            n_train, n_test = (
                per_class(c.subset, DEFAULT_TRAIN_PER_CLASS),
                per_class(c.test_subset, DEFAULT_TEST_PER_CLASS),
            )
            train = synthetic_shapes("train", L, c.train == "r", c.seed, n_train, progress=progress)
            tests = {
                k: synthetic_shapes("test", L, k == "r", c.seed, n_test, progress=progress) for k in c.test
            }
            note = f"synthetic stand-in, seed {c.seed}: {n_train} train / {n_test} test shapes per class"
        else:
            root = Path(c.data_path)

            def load(split, rotated, layout, variant=None):
                return mesh_dataset(root, L, split, rotated, c.seed, layout, variant, progress=progress)

            if _is_shrec(root):
                variant = _shrec_variant(root)
                test_split = "test" if any((root / f"test{v}").is_dir() for v in _VARIANT_SUFFIXES) else "val"
                train = load("train", c.train == "r", "shrec17", variant)
                tests = {k: load(test_split, k == "r", "shrec17", variant) for k in c.test}
                note = f"SHREC'17 at {root} ({variant or 'default'} meshes), tested on {test_split}"
            elif _split_dirs(root):
                train = load("train", c.train == "r", "tree")
                tests = {k: load("test", k == "r", "tree") for k in c.test}
                note = f"mesh tree {root} with train/test directories"
            else:
                whole = {kind: load(None, kind == "r", "tree") for kind in {c.train, *c.test}}
                tr, te = stratified_split(next(iter(whole.values())).category, c.seed)
                train = take(whole[c.train], tr)
                tests = {k: take(whole[k], te) for k in c.test}
                note = f"mesh tree {root}, seeded class-stratified split ({TEST_FRACTION:.0%} tested)"
        train = take(train, seeded_choice(len(train.y), c.subset, c.seed, _PURPOSE_TRAIN))
        first = next(iter(tests.values()))
        chosen = seeded_choice(len(first.y), c.test_subset, c.seed, _PURPOSE_TEST)
        tests = {k: take(v, chosen) for k, v in tests.items()}
        return train, tests, note

    def load(self, model: nn.Module, progress: bool) -> None:
        from sphc.data.meshes import CHANNELS

        c = self.config
        C, L, _ = model.input_shape
        refuse_set_model(model, c, "a shape is one sphere")
        if len(CHANNELS) != C:
            raise SphcError(
                f"{c.model} expects {C} input channels, but shape signals have {len(CHANNELS)} "
                f"({', '.join(CHANNELS)}): use Input s2 L=... C={len(CHANNELS)}"
            )
        self.train, self.tests, self.note = self._load_splits(L, progress)
        self.class_names = self.train.classes
        if any(t.classes != self.class_names for t in self.tests.values()):
            raise SphcError("the training and test shapes have different class lists")
        outputs = output_size(model)
        if outputs < len(self.class_names):
            raise SphcError(
                f"{c.model} has {outputs} outputs but the data has {len(self.class_names)} classes: "
                f"end the model with Dense {len(self.class_names)}"
            )
        if outputs > len(self.class_names) and progress:
            print(
                f"note: {c.model} has {outputs} outputs for {len(self.class_names)} classes; "
                f"the first {len(self.class_names)} are used",
                file=sys.stderr,
            )
        self.n_train = len(self.train.y)
        if self.n_train == 0 or any(len(t.y) == 0 for t in self.tests.values()):
            raise SphcError(f"no usable shapes to train or test on ({self.note})")

    def batch(self, index):
        return (torch.from_numpy(self.train.x[index]),), torch.from_numpy(self.train.y[index])

    def losses(self, output, target):
        return F.cross_entropy(output[:, : len(self.class_names)], target, reduction="none")

    # -------------------------------------------------------------------------- evaluation

    def evaluate(self, model, device, out):
        from sphc.apps.retrieval import classifier_rankings, evaluate_rankings

        accuracy, retrieval = {}, {}
        for kind, data in self.tests.items():
            scores = predict(
                model, lambda i, x=data.x: (torch.from_numpy(x[i]),), len(data.y), device, self.config.batch
            )[:, : len(self.class_names)]
            regime = f"{self.config.train}/{kind}"
            accuracy[regime] = float((scores.argmax(1) == data.y).mean())
            report = evaluate_rankings(
                classifier_rankings(scores, data.ids), data.ids, data.category, data.subcategory
            )
            retrieval[regime] = {"micro": report.micro.as_dict(), "macro": report.macro.as_dict()}
        skipped = sorted({s for d in (self.train, *self.tests.values()) for s in d.skipped})
        metrics = {
            "data_note": self.note,
            "classes": list(self.class_names),
            "train_size": self.n_train,
            "test_size": {k: len(v.y) for k, v in self.tests.items()},
            "skipped_meshes": [list(s) for s in skipped],
            "accuracy": accuracy,
            "retrieval": retrieval,
            "retrieval_method": RANKING_METHOD,
        }
        if self.config.baseline is None:
            metrics.update(invariance_probe(model, self.config.seed))
        return metrics

    # ------------------------------------------------------------------- reading the results

    @staticmethod
    def summary(metrics):
        lines = [
            run_heading(metrics, f"training shapes ({len(metrics['classes'])} classes)"),
            f"  {'train/test':10s} {'acc %':>6s} | micro {'P@N':>5s} {'R@N':>5s} {'F1@N':>5s} {'mAP':>5s} "
            f"{'NDCG':>5s} | macro {'P@N':>5s} {'R@N':>5s} {'F1@N':>5s} {'mAP':>5s} {'NDCG':>5s}",
        ]
        for regime, r in metrics["retrieval"].items():
            micro = " ".join(f"{v:5.3f}" for v in r["micro"].values())
            macro = " ".join(f"{v:5.3f}" for v in r["macro"].values())
            acc = 100 * metrics["accuracy"][regime]
            lines.append(f"  {regime.upper():10s} {acc:6.2f} |       {micro} |       {macro}")
        if metrics.get("skipped_meshes"):
            lines.append(
                f"  {len(metrics['skipped_meshes'])} unusable mesh files skipped (listed in metrics.json)"
            )
        return lines + invariance_lines(metrics)

    def test_meshes(self) -> dict:
        """Test shape id -> a function building its (unrotated) mesh, for pictures."""
        from sphc.data.meshes import find_class_tree, find_shrec17, load_mesh
        from sphc.data.synthetic_shapes import CLASSES, synthetic_meshes

        c = self.config
        if c.data == "synthetic-shapes":
            per_class = (
                DEFAULT_TEST_PER_CLASS if c.test_subset is None else math.ceil(c.test_subset / len(CLASSES))
            )
            return {s.id: s.mesh for s in synthetic_meshes("test", per_class, c.seed)}
        root = Path(c.data_path)
        if _is_shrec(root):
            variant = _shrec_variant(root)
            split = "test" if any((root / f"test{v}").is_dir() for v in _VARIANT_SUFFIXES) else "val"
            records = find_shrec17(root, split, variant)[0]
        else:
            records = find_class_tree(root, "test" if _split_dirs(root) else None)[0]
        return {r.id: (lambda p=r.path: load_mesh(p)) for r in records}

    @staticmethod
    def draw(runs, run_dirs, out):
        from sphc.apps import plots
        from sphc.apps.train import TrainConfig

        L = plots.input_L(runs[0], run_dirs[0])
        task = ShapeTask(TrainConfig(**{**runs[0]["config"], "test": ("nr",)}, out=str(run_dirs[0])))
        signals = task._load_splits(L, progress=False)[1]["nr"]
        return [
            plots.plot_shapes(out / "shapes.png", signals, task.test_meshes()),
            plots.plot_retrieval(out / "retrieval.png", runs),
            plots.plot_curves(out / "curves.png", runs),
            plots.plot_accuracy(out / "accuracy.png", runs),
        ]
