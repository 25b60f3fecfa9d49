"""Detection metrics: one-to-one matching within a radius, precision, recall, F1, errors.

Matching is the Hungarian algorithm on Euclidean distances, restricted to pairs within the
radius: it first maximises the number of matched pairs, then minimises their total distance.
The candidate graph is split into connected components and each is solved on its own, so a
slide-sized point set costs about as much as its densest cluster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _as_points(points: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    pts = np.asarray(points, np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return pts


def match_points(
    predicted: npt.ArrayLike, truth: npt.ArrayLike, radius: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """One-to-one matching of predicted to true points within ``radius``.

    Parameters
    ----------
    predicted : array_like, shape (n, 2)
    truth : array_like, shape (m, 2)
        Both in the same coordinates and order (``yx`` or ``xy``).
    radius : float
        A pair matches only if its distance is <= radius.

    Returns
    -------
    pairs : ndarray, shape (k, 2), int64
        ``(index into predicted, index into truth)``, sorted by predicted index.
    distances : ndarray, shape (k,)
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    pred = _as_points(predicted, "predicted")
    true = _as_points(truth, "truth")
    n, m = len(pred), len(true)
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    dist = cKDTree(pred).sparse_distance_matrix(cKDTree(true), radius, output_type="coo_matrix")
    if dist.nnz == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    rows, cols = dist.row, dist.col
    # Exact zero distances are dropped by sparse matrices; recompute from coordinates.
    values = np.linalg.norm(pred[rows] - true[cols], axis=1)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n)), shape=(n + m, n + m))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels[rows], kind="stable")
    rows, cols, values = rows[order], cols[order], values[order]
    bounds = np.flatnonzero(np.diff(labels[rows])) + 1
    out_p, out_t, out_d = [], [], []
    for r, c, v in zip(
        np.split(rows, bounds), np.split(cols, bounds), np.split(values, bounds), strict=True
    ):
        pu, pi = np.unique(r, return_inverse=True)
        tu, ti = np.unique(c, return_inverse=True)
        # Forbidden pairs cost more than any set of allowed ones, so cardinality comes first.
        big = radius * (min(len(pu), len(tu)) + 1) + 1.0
        cost = np.full((len(pu), len(tu)), big)
        cost[pi, ti] = v
        a, b = linear_sum_assignment(cost)
        ok = cost[a, b] <= radius
        out_p.append(pu[a[ok]])
        out_t.append(tu[b[ok]])
        out_d.append(cost[a[ok], b[ok]])
    p_idx, t_idx, d = np.concatenate(out_p), np.concatenate(out_t), np.concatenate(out_d)
    order = np.argsort(p_idx, kind="stable")
    return np.stack([p_idx[order], t_idx[order]], axis=1).astype(np.int64), d[order]


@dataclass(frozen=True)
class DetectionScores:
    """Counts and rates of a matched detection result.

    Attributes
    ----------
    tp, fp, fn : int
    precision, recall, f1 : float
        0 when undefined (no predictions / no truth), except that an empty prediction of an
        empty truth scores 1.
    loc_median, loc_q1, loc_q3 : float
        Quartiles of matched-pair distances (NaN without matches).
    count_error : float
        ``n_predicted - n_true``.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    loc_median: float
    loc_q1: float
    loc_q3: float
    count_error: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)


def score_counts(tp: int, fp: int, fn: int, distances: npt.ArrayLike = ()) -> DetectionScores:
    """Precision, recall, F1 and localisation quartiles from match counts.

    Parameters
    ----------
    tp, fp, fn : int
    distances : array_like, shape (tp,)
        Distances of the matched pairs.
    """
    if tp + fp + fn == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    d = np.asarray(distances, np.float64)
    q1, med, q3 = np.percentile(d, [25, 50, 75]) if d.size else (np.nan,) * 3
    return DetectionScores(
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        loc_median=float(med),
        loc_q1=float(q1),
        loc_q3=float(q3),
        count_error=float((tp + fp) - (tp + fn)),
    )


def evaluate_points(
    predicted: npt.ArrayLike, truth: npt.ArrayLike, radius: float
) -> DetectionScores:
    """Match and score one image's predictions.

    Parameters
    ----------
    predicted : array_like, shape (n, 2)
    truth : array_like, shape (m, 2)
    radius : float

    Returns
    -------
    DetectionScores
    """
    pred = _as_points(predicted, "predicted")
    true = _as_points(truth, "truth")
    pairs, dist = match_points(pred, true, radius)
    tp = len(pairs)
    return score_counts(tp, len(pred) - tp, len(true) - tp, dist)
