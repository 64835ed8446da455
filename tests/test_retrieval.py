"""SHREC'17 retrieval metrics on hand-computed rankings, against a plain-Python reference, and the
classifier-based ranking.

Expected values are exact fractions worked out by hand in each test; the reference implementation
below loops over plain lists and shares no code with ``sphc.apps.retrieval``. Floats are compared
to 1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sphc.apps import retrieval
from sphc.errors import SphcError


@pytest.fixture
def seed() -> int:
    return int(np.random.default_rng().integers(2**31))


def scores(report, which: str = "micro") -> list[float]:
    return list(getattr(report, which).as_dict().values())


def balanced(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    ids, cats = [], []
    for c, n in sizes.items():
        ids += [f"{c}{i}" for i in range(n)]
        cats += [c] * n
    return ids, cats


# ----------------------------------------------------------------------------- hand-computed


def test_an_oracle_list_scores_one_everywhere(seed):
    rng = np.random.default_rng(seed)
    ids, cats = balanced({c: int(rng.integers(1, 30)) for c in "abcde"})
    order = rng.permutation(len(ids))
    ids, cats = [ids[i] for i in order], [cats[i] for i in order]
    rankings = {q: [m for m, c in zip(ids, cats) if c == qc] for q, qc in zip(ids, cats)}
    report = retrieval.evaluate_rankings(rankings, ids, cats)
    assert scores(report) == pytest.approx([1.0] * 5, abs=1e-12), f"seed={seed}"
    assert scores(report, "macro") == pytest.approx([1.0] * 5, abs=1e-12), f"seed={seed}"
    assert report.per_query.shape == (len(ids), 5)


def test_an_oracle_sorted_by_grade_scores_one_with_subcategories():
    ids = ["q", "a", "b", "c", "d"]
    cats = ["A", "A", "A", "A", "B"]
    subs = ["A1", "A1", "A", "A2", "B"]
    report = retrieval.evaluate_rankings({"q": ["a", "q", "b", "c"]}, ids, cats, subs)
    assert scores(report) == pytest.approx([1.0] * 5, abs=1e-12)


@pytest.mark.parametrize("c", [1, 2, 7, 40])
def test_a_list_holding_only_the_query(c):
    """P = 1, R = AP = 1/c, F1 = 2 (1/c) / (1 + 1/c) = 2 / (c + 1); NDCG = 3/3 (depth min(R, N) = 1)."""
    ids, cats = balanced({"x": c, "y": 3})
    report = retrieval.evaluate_rankings({"x0": ["x0"]}, ids, cats)
    assert scores(report) == pytest.approx([1, 1 / c, 2 / (c + 1), 1 / c, 1], abs=1e-12)


def test_duplicates_and_unknown_ids_change_nothing(seed):
    rng = np.random.default_rng(seed)
    ids, cats = balanced({"a": 6, "b": 4, "c": 5})
    rankings = {q: list(rng.permutation(ids)[: rng.integers(1, len(ids))]) for q in ids}
    noisy = {}
    for q, listed in rankings.items():
        out = []
        for m in listed:
            out.append(m)
            if rng.random() < 0.4:
                out.append(str(rng.choice(out)))  # a repeat of something already listed
            if rng.random() < 0.2:
                out.append(f"unknown{rng.integers(100)}")
        noisy[q] = out
    clean = retrieval.evaluate_rankings(rankings, ids, cats)
    dirty = retrieval.evaluate_rankings(noisy, ids, cats)
    np.testing.assert_allclose(dirty.per_query, clean.per_query, atol=1e-12, err_msg=f"seed={seed}")


def test_graded_ndcg_precision_recall_and_ap_by_hand():
    """Query q (A, A1); models a (A, A1), b (A, no subcategory), c (A, A2), d (B).
    List [c, d, a, q] has grades [1, 0, 3, 3]; the relevant set {q, a, b, c} has R = 4 and ideal
    grades [3, 3, 2, 1]; N = 4.
    P = R = 3/4, F1 = 3/4; AP = (1/1 + 2/3 + 3/4) / 4 = 29/48;
    DCG = 1 + 0/log2 2 + 3/log2 3 + 3/log2 4, IDCG = 3 + 3/log2 2 + 2/log2 3 + 1/log2 4."""
    ids = ["q", "a", "b", "c", "d"]
    cats = ["A", "A", "A", "A", "B"]
    subs = ["A1", "A1", "A", "A2", "B"]
    report = retrieval.evaluate_rankings({"q": ["c", "d", "a", "q"]}, ids, cats, subs)
    dcg = 1 + 0 + 3 / math.log2(3) + 3 / 2
    idcg = 3 + 3 + 2 / math.log2(3) + 1 / 2
    assert scores(report) == pytest.approx([3 / 4, 3 / 4, 3 / 4, 29 / 48, dcg / idcg], abs=1e-12)
    np.testing.assert_array_equal(
        retrieval.relevance("A", "A1", np.array(cats), np.array(subs)), [3, 3, 2, 1, 0]
    )


def test_ndcg_depth_stops_at_r():
    """Category of 2 (R = 2): list [x1, y0, x0] has N = 3, so DCG and IDCG stop at depth 2:
    DCG = 3 + 0, IDCG = 3 + 3; P = 2/3, R = 1, F1 = 2 (2/3) / (5/3) = 4/5, AP = (1 + 2/3) / 2 = 5/6."""
    ids, cats = balanced({"x": 2, "y": 2})
    report = retrieval.evaluate_rankings({"x0": ["x1", "y0", "x0"]}, ids, cats)
    assert scores(report) == pytest.approx([2 / 3, 1, 4 / 5, 5 / 6, 1 / 2], abs=1e-12)


def test_micro_and_macro_differ_on_unbalanced_categories():
    """Three queries of a (perfect), one of b with list [a0, b0]: P = 1/2, R = 1, F1 = 2/3, AP = 1/2,
    and NDCG = 0 (depth min(R = 1, N = 2) = 1 holds only a0, grade 0).
    micro = (3 x 1 + b) / 4, macro = (1 + b) / 2."""
    ids, cats = balanced({"a": 3, "b": 1})
    rankings = {q: ["a0", "a1", "a2"] for q in ("a0", "a1", "a2")} | {"b0": ["a0", "b0"]}
    report = retrieval.evaluate_rankings(rankings, ids, cats)
    b = np.array([1 / 2, 1, 2 / 3, 1 / 2, 0])
    assert scores(report) == pytest.approx((3 + b) / 4, abs=1e-12)
    assert scores(report, "macro") == pytest.approx((1 + b) / 2, abs=1e-12)


def test_lists_are_cut_at_1000_and_r_is_capped_at_1000():
    """A category of 1,100 models: the full oracle list is cut to 1,000 hits, R = 1,000, so all 1;
    the same list with one wrong model in front loses its last hit to the cut."""
    ids, cats = balanced({"big": 1100, "small": 2})
    full = [f"big{i}" for i in range(1100)]
    report = retrieval.evaluate_rankings({"big0": full, "big1": ["small0"] + full}, ids, cats)
    assert report.per_query[0] == pytest.approx([1] * 5, abs=1e-12)
    ap = sum(k / (k + 1) for k in range(1, 1000)) / 1000
    assert report.per_query[1][:4] == pytest.approx([999 / 1000, 999 / 1000, 999 / 1000, ap], abs=1e-12)


def test_an_empty_list_scores_zero():
    ids, cats = balanced({"a": 2})
    report = retrieval.evaluate_rankings({"a0": [], "a1": ["nobody"]}, ids, cats)
    np.testing.assert_array_equal(report.per_query, 0.0)


# ------------------------------------------------------------------ against a plain reference


def reference(rankings, ids, cats, subs, cutoff=1000):
    """The evaluator's definitions written out with lists and loops."""
    cat = dict(zip(ids, cats))
    sub = dict(zip(ids, subs))

    def grade(q, m):
        if cat[m] != cat[q]:
            return 0
        if sub[m] == sub[q]:
            return 3
        return 2 if sub[m] == cat[q] else 1

    def dcg(g):
        return sum(x if k == 1 else x / math.log2(k) for k, x in enumerate(g, start=1))

    rows = {}
    for q, listed in rankings.items():
        kept = []
        for m in listed[:cutoff]:
            if m in cat and m not in kept:
                kept.append(m)
        members = [m for m in ids if cat[m] == cat[q]]
        r = min(len(members), cutoff)
        g = [grade(q, m) for m in kept]
        hits = sum(x > 0 for x in g)
        if not kept:
            rows[q] = [0.0] * 5
            continue
        p, rc = hits / len(kept), hits / r
        f1 = 2 * p * rc / (p + rc) if p + rc > 0 else 0.0
        ap, seen = 0.0, 0
        for k, x in enumerate(g, start=1):
            if x > 0:
                seen += 1
                ap += seen / k
        depth = min(r, len(kept))
        ideal = sorted((grade(q, m) for m in members), reverse=True)
        rows[q] = [p, rc, f1, ap / r, dcg(g[:depth]) / dcg(ideal[:depth])]
    micro = [sum(rows[q][i] for q in rows) / len(rows) for i in range(5)]
    by_cat = {}
    for q in rows:
        by_cat.setdefault(cat[q], []).append(rows[q])
    means = [[sum(r[i] for r in v) / len(v) for i in range(5)] for v in by_cat.values()]
    macro = [sum(m[i] for m in means) / len(means) for i in range(5)]
    return micro, macro


def test_random_rankings_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    ids, cats, subs = [], [], []
    for c in range(int(rng.integers(2, 6))):
        for i in range(int(rng.integers(1, 12))):
            ids.append(f"m{c}_{i}")
            cats.append(f"c{c}")
            subs.append(str(rng.choice([f"c{c}", f"c{c}.s1", f"c{c}.s2"])))
    queries = rng.choice(ids, size=int(rng.integers(1, len(ids) + 1)), replace=False)
    rankings = {}
    for q in queries:
        listed = list(rng.choice(ids + ["ghost"], size=int(rng.integers(0, 2 * len(ids))), replace=True))
        rankings[str(q)] = listed
    cutoff = int(rng.integers(1, 2 * len(ids)))
    micro, macro = reference(rankings, ids, cats, subs, cutoff)
    report = retrieval.evaluate_rankings(rankings, ids, cats, subs, cutoff=cutoff)
    assert scores(report) == pytest.approx(micro, abs=1e-12), f"seed={seed}"
    assert scores(report, "macro") == pytest.approx(macro, abs=1e-12), f"seed={seed}"


# ------------------------------------------------------------------------- classifier ranking


def test_classifier_rankings_by_hand():
    """Two copies per shape, logits; the summed log-softmax decides the class and the order.
    Class 0: s0 sums -0.127 - 0.049 = -0.175, s2 (larger logits) -0.313 - 0.313 = -0.627, so s0 first.
    Class 1: s1 sums -0.313 - 0.127 = -0.440; s3 -0.007 - 1.313 = -1.320 (its class 0: -5.32)."""
    logits = np.array(
        [
            [[2.0, 0.0], [3.0, 0.0]],
            [[0.0, 1.0], [0.0, 2.0]],
            [[11.0, 10.0], [11.0, 10.0]],
            [[0.0, 5.0], [1.0, 0.0]],
        ]
    )
    ids = ["s0", "s1", "s2", "s3"]
    ranked = retrieval.classifier_rankings(logits, ids)
    assert ranked == {"s0": ["s0", "s2"], "s1": ["s1", "s3"], "s2": ["s0", "s2"], "s3": ["s1", "s3"]}
    assert list(ranked) == ids
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert retrieval.classifier_rankings(log_probs, ids) == ranked


def test_classifier_rankings_cap_and_a_perfect_classifier(seed):
    rng = np.random.default_rng(seed)
    ids, cats = balanced({"a": 7, "b": 12, "c": 3})
    labels = np.array(["abc".index(c) for c in cats])
    logits = rng.normal(size=(len(ids), 3))
    logits[np.arange(len(ids)), labels] += 20
    ranked = retrieval.classifier_rankings(logits, ids, cutoff=5)
    assert all(len(v) == min(5, cats.count(cats[ids.index(q)])) for q, v in ranked.items())
    full = retrieval.classifier_rankings(logits, ids)
    assert scores(retrieval.evaluate_rankings(full, ids, cats)) == pytest.approx([1.0] * 5, abs=1e-12)


def test_rankings_round_trip_through_files(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(8)]
    rankings = {q: list(rng.permutation(ids)[: rng.integers(0, 8)]) for q in ids}
    retrieval.write_rankings(rankings, tmp_path / "test_perturbed")
    assert retrieval.read_rankings(tmp_path / "test_perturbed") == rankings


def test_bad_input_is_reported():
    ids, cats = balanced({"a": 2})
    with pytest.raises(SphcError, match="query 'zz' is not a model of this split"):
        retrieval.evaluate_rankings({"zz": ["a0"]}, ids, cats)
    with pytest.raises(SphcError, match="must be 1-D of one length"):
        retrieval.evaluate_rankings({"a0": []}, ids, cats[:1])
    with pytest.raises(SphcError, match="model ids must be unique"):
        retrieval.evaluate_rankings({"a0": []}, ["a0", "a0"], cats)
    with pytest.raises(SphcError, match="no rankings"):
        retrieval.evaluate_rankings({}, ids, cats)
    with pytest.raises(SphcError, match=r"scores must be \(n, classes\)"):
        retrieval.classifier_rankings(np.zeros((3, 2)), ids)
    with pytest.raises(SphcError, match="NaN or infinity"):
        retrieval.classifier_rankings(np.full((2, 2), np.nan), ids)
    with pytest.raises(SphcError, match="cannot be a file name"):
        retrieval.write_rankings({"../x": []}, "/tmp/never-written")
