"""SHREC'17 shape retrieval: the official evaluator's metrics, and rankings made from a classifier.

**Metrics** — a re-implementation, from its published definitions, of the SHREC'17 evaluator (the
``evaluate.js`` of 2017-02-23 that the challenge and later papers report), for one split:

* Each query's ranked list is cut to its first ``CUTOFF`` = 1,000 entries, then repeated ids and ids
  not in the split are dropped; N is the length of what remains.
* A retrieved model's relevance grade to the query is 3 if they share the subcategory, 2 if the
  retrieved model's subcategory is the query's category (it has no finer label), 1 for another
  subcategory of the same category, 0 for another category. P, R and AP count grade > 0 as relevant;
  only NDCG uses the grades. A model without a subcategory has ``subcategory == category``.
* The relevant set is every model of the query's category in the split, the query included;
  R = min(its size, 1,000).
* Per query: P@N = hits / N, R@N = hits / R, F1@N = 2PR / (P + R) (0 when P + R = 0),
  AP = (sum of precision@k over the ranks k of relevant entries) / R,
  DCG = g_1 + sum_{k=2}^{min(R,N)} g_k / log2 k over the list's grades g, IDCG the same over the
  relevant set's grades sorted high to low, NDCG = DCG / IDCG. An empty list scores 0 throughout.
* **micro** = the plain mean over queries; **macro** = the mean within each query category, then the
  unweighted mean over categories (F1 is averaged per query in both, never recomputed from the mean
  P and R).

**Ranking from a classifier** (``classifier_rankings``) — how the classifier-based SHREC'17 entries
built their lists: Cohen et al.'s s2cnn (``examples/shrec17/test.py`` of jonkhler/s2cnn) and Kondor
et al.'s Clebsch-Gordan nets (``Shrec17/`` of zlin7/CGNet) sum each shape's log-softmax outputs over
its augmented copies, predict the arg-max class, and return for a query every test shape predicted
in the same class (the query included), sorted by its summed score for that class, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from sphc.errors import SphcError

#: The evaluator's list length limit, also the cap on R.
CUTOFF = 1000
#: Metric names in the order of ``RetrievalReport.per_query`` columns.
METRICS = ("P@N", "R@N", "F1@N", "mAP", "NDCG")


@dataclass(frozen=True)
class RetrievalScores:
    """The five SHREC'17 metrics, each in [0, 1]."""

    precision: float
    recall: float
    f1: float
    mean_ap: float
    ndcg: float

    def as_dict(self) -> dict[str, float]:
        return dict(zip(METRICS, (self.precision, self.recall, self.f1, self.mean_ap, self.ndcg)))


@dataclass(frozen=True)
class RetrievalReport:
    """Micro- and macro-averaged scores; ``per_query`` float64 (Q, 5) in ``METRICS`` order for ``queries``."""

    micro: RetrievalScores
    macro: RetrievalScores
    queries: np.ndarray
    per_query: np.ndarray


def relevance(
    query_category: str, query_subcategory: str, category: np.ndarray, subcategory: np.ndarray
) -> np.ndarray:
    """Relevance grades (3, 2, 1 or 0, int64) of models with ``category``/``subcategory`` to one query."""
    same = category == query_category
    grade = np.where(subcategory == query_subcategory, 3, np.where(subcategory == query_category, 2, 1))
    return np.where(same, grade, 0).astype(np.int64)


def _dcg(grades: np.ndarray) -> float:
    """g_1 + sum_{k>=2} g_k / log2 k."""
    if len(grades) == 0:
        return 0.0
    return float(grades[0] + (grades[1:] / np.log2(np.arange(2, len(grades) + 1))).sum())


def _labels(ids: Sequence[str], categories: Sequence[str], subcategories: Sequence[str] | None):
    ids = np.asarray(ids, dtype=str)
    category = np.asarray(categories, dtype=str)
    subcategory = category if subcategories is None else np.asarray(subcategories, dtype=str)
    if ids.ndim != 1 or category.shape != ids.shape or subcategory.shape != ids.shape:
        raise SphcError(
            f"retrieval: ids, categories and subcategories must be 1-D of one length, got "
            f"{ids.shape}, {category.shape}, {subcategory.shape}"
        )
    if len(set(ids.tolist())) != len(ids):
        raise SphcError("retrieval: model ids must be unique")
    return ids, category, subcategory


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    ids: Sequence[str],
    categories: Sequence[str],
    subcategories: Sequence[str] | None = None,
    cutoff: int = CUTOFF,
) -> RetrievalReport:
    """Score one ranked list per query (``rankings[query id]``) against the split's labels.

    ``ids``, ``categories`` and (optionally) ``subcategories`` label every model of the split; every
    query must be one of them. See the module docstring for the definitions.
    """
    ids, category, subcategory = _labels(ids, categories, subcategories)
    if not rankings:
        raise SphcError("retrieval: no rankings to evaluate")
    index = {m: i for i, m in enumerate(ids.tolist())}
    size = {c: n for c, n in zip(*np.unique(category, return_counts=True))}
    ideal: dict[tuple[str, str], np.ndarray] = {}
    queries = list(rankings)
    scores = np.zeros((len(queries), len(METRICS)))
    for row, query in enumerate(queries):
        q = index.get(query)
        if q is None:
            raise SphcError(f"retrieval: query {query!r} is not a model of this split")
        listed = [index[m] for m in dict.fromkeys(list(rankings[query])[:cutoff]) if m in index]
        n = len(listed)
        if n == 0:
            continue
        qc, qs = category[q], subcategory[q]
        grades = relevance(qc, qs, category[listed], subcategory[listed])
        relevant = grades > 0
        r = min(size[qc], cutoff)
        hits = int(relevant.sum())
        precision, recall = hits / n, hits / r
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        ap = float((np.cumsum(relevant) / np.arange(1, n + 1))[relevant].sum() / r)
        if (qc, qs) not in ideal:
            members = category == qc
            ideal[qc, qs] = np.sort(relevance(qc, qs, category[members], subcategory[members]))[::-1]
        depth = min(r, n)
        ndcg = _dcg(grades[:depth]) / _dcg(ideal[qc, qs][:depth])
        scores[row] = precision, recall, f1, ap, ndcg
    query_category = category[[index[q] for q in queries]]
    per_category = np.stack([scores[query_category == c].mean(axis=0) for c in np.unique(query_category)])
    return RetrievalReport(
        micro=RetrievalScores(*map(float, scores.mean(axis=0))),
        macro=RetrievalScores(*map(float, per_category.mean(axis=0))),
        queries=np.asarray(queries, dtype=str),
        per_query=scores,
    )


def classifier_rankings(scores: np.ndarray, ids: Sequence[str], cutoff: int = CUTOFF) -> dict[str, list[str]]:
    """Each shape's ranked list from class scores (n, C), or (n, copies, C) for augmented copies.

    ``scores`` are one model output per copy, logits or log-probabilities (log-softmax is applied per
    copy, which leaves log-probabilities unchanged), then summed over copies; see the module
    docstring. Ties keep the order of ``ids``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(ids, dtype=str)
    if scores.ndim not in (2, 3) or len(scores) != len(ids) or scores.shape[-1] < 1:
        raise SphcError(
            f"classifier_rankings: scores must be (n, classes) or (n, copies, classes) with n = {len(ids)}, "
            f"got {scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise SphcError("classifier_rankings: scores contain NaN or infinity")
    total = log_softmax(scores, axis=-1)
    if total.ndim == 3:
        total = total.sum(axis=1)
    predicted = total.argmax(axis=1)
    out: dict[str, list[str]] = {}
    for c in np.unique(predicted):
        members = np.flatnonzero(predicted == c)
        ranked = ids[members[np.argsort(-total[members, c], kind="stable")]][:cutoff].tolist()
        for m in members:
            out[str(ids[m])] = ranked
    return {str(m): out[str(m)] for m in ids}


def write_rankings(rankings: Mapping[str, Sequence[str]], directory: str | Path) -> None:
    """One file per query named by its id, one retrieved id per line (the official evaluator's input)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for query, listed in rankings.items():
        if not query or "/" in query or query.startswith("."):
            raise SphcError(f"write_rankings: query id {query!r} cannot be a file name")
        (directory / query).write_text("".join(f"{m}\n" for m in listed))


def read_rankings(directory: str | Path) -> dict[str, list[str]]:
    """Ranked lists from a directory of result files (first token of each non-empty line is an id)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SphcError(f"read_rankings: {directory} is not a directory")
    out = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SphcError(f"{path}: cannot read ranked list ({type(e).__name__}: {e})") from None
        out[path.name] = [line.split()[0] for line in lines if line.strip()]
    return out


__all__ = [
    "CUTOFF",
    "METRICS",
    "RetrievalReport",
    "RetrievalScores",
    "classifier_rankings",
    "evaluate_rankings",
    "read_rankings",
    "relevance",
    "write_rankings",
]
