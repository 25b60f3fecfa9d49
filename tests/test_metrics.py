from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsidet.evaluation.metrics import evaluate_points, match_points, score_counts


def test_one_to_one_prefers_more_matches_then_shorter() -> None:
    truth = np.array([[0.0, 0.0], [0.0, 4.0]])
    # Greedy nearest would pair pred 0 with truth 1 (distance 1) and leave truth 0 unmatched.
    pred = np.array([[0.0, 3.0], [0.0, 6.0]])
    pairs, dist = match_points(pred, truth, radius=3.0)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    np.testing.assert_allclose(dist, [3.0, 2.0])


def test_radius_is_inclusive_and_outside_points_do_not_match() -> None:
    pairs, _ = match_points([[0, 0], [10, 10]], [[0, 6], [10, 16.01]], radius=6)
    assert pairs.tolist() == [[0, 0]]


def test_identical_points_match_at_zero_distance() -> None:
    pts = np.array([[1.0, 2.0], [5.0, 5.0]])
    pairs, dist = match_points(pts, pts, 1.0)
    assert pairs.tolist() == [[0, 0], [1, 1]] and dist.tolist() == [0.0, 0.0]


def test_ties_give_one_match_each() -> None:
    pairs, _ = match_points([[0, 0]], [[0, 2], [0, -2], [2, 0]], radius=2)
    assert len(pairs) == 1


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        ([], [], (0, 0, 0, 1.0, 1.0, 1.0)),
        ([[0, 0]], [], (0, 1, 0, 0.0, 0.0, 0.0)),
        ([], [[0, 0]], (0, 0, 1, 0.0, 0.0, 0.0)),
    ],
)
def test_empty_sets(pred, truth, expected) -> None:
    s = evaluate_points(pred, truth, radius=6)
    assert (s.tp, s.fp, s.fn, s.precision, s.recall, s.f1) == expected


def test_known_scores() -> None:
    truth = np.array([[0, 0], [0, 20], [0, 40], [0, 60]], float)
    pred = np.array([[1, 0], [0, 22], [0, 47], [30, 30], [0, 61]], float)
    s = evaluate_points(pred, truth, radius=6)
    assert (s.tp, s.fp, s.fn) == (3, 2, 1)
    assert s.precision == pytest.approx(3 / 5) and s.recall == pytest.approx(3 / 4)
    assert s.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert s.loc_median == pytest.approx(1.0) and s.count_error == 1
    assert score_counts(3, 2, 1).as_dict()["tp"] == 3


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        match_points(np.zeros((3, 3)), np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="radius"):
        match_points(np.zeros((1, 2)), np.zeros((1, 2)), 0)
    with pytest.raises(ValueError, match="NaN"):
        match_points([[np.nan, 0]], [[0, 0]], 1)


points = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=25)


@settings(max_examples=80)
@given(a=points, b=points, radius=st.sampled_from([1.0, 2.5, 4.0]))
def test_matching_is_symmetric_and_maximal(a, b, radius) -> None:
    a_arr, b_arr = np.array(a, float).reshape(-1, 2), np.array(b, float).reshape(-1, 2)
    ab, dab = match_points(a_arr, b_arr, radius)
    ba, dba = match_points(b_arr, a_arr, radius)
    assert len(ab) == len(ba)
    assert dab.sum() == pytest.approx(dba.sum())
    assert len(set(ab[:, 0])) == len(ab) and len(set(ab[:, 1])) == len(ab)  # one-to-one
    assert (dab <= radius).all()
    # Maximum cardinality: compare with a dense Hungarian solve over all pairs.
    from scipy.optimize import linear_sum_assignment

    if len(a_arr) and len(b_arr):
        d = np.linalg.norm(a_arr[:, None] - b_arr[None], axis=2)
        cost = np.where(d <= radius, 0.0, 1.0)
        r, c = linear_sum_assignment(cost)
        assert len(ab) == int((cost[r, c] == 0).sum())
