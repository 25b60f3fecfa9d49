"""Evaluating a detector on annotated images: matching, threshold choice, PR curves.

The network runs once per image; its maps are kept and decoded at every candidate threshold,
so a sweep costs decoding, not inference. Scores are pooled over images (true positives,
false positives and false negatives summed before computing precision, recall and F1). The
decoding threshold is chosen on validation data with :func:`choose_threshold` and then applied
unchanged to test data: a reported test figure never uses a threshold fitted on the test set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.evaluation.metrics import DetectionScores, match_points, score_counts
from wsidet.methods.base import Method

if TYPE_CHECKING:
    import torch

    from wsidet.annotations.sources import Source
    from wsidet.inference.detector import Detector
    from wsidet.slide.stain import StainStats


@dataclass(frozen=True, eq=False)
class Predictions:
    """A network's output maps on annotated images, ready to decode at any threshold.

    Attributes
    ----------
    keys : list of str
    maps : list of dict of str to Tensor (C, H, W), on the CPU
    truths : list of ndarray (n, 2)
        Annotated centres (yx pixel indices).
    """

    keys: list[str]
    maps: list[dict[str, torch.Tensor]]
    truths: list[npt.NDArray[np.float64]]


def predict(
    detector: Detector, sources: Sequence[Source], *, stain: StainStats | None = None
) -> Predictions:
    """Run ``detector`` over each whole source image and keep the maps.

    With ``stain`` (reference statistics), each image's colours are first normalised to them
    from its own statistics, as a slide's are from its tissue (:mod:`wsidet.slide.stain`).
    """
    from wsidet.slide.stain import Reinhard, stain_stats

    maps = []
    for source in sources:
        h, w = source.shape
        image = source.read(0, h, 0, w)
        normaliser = None
        if stain is not None:
            try:
                normaliser = Reinhard(stain_stats([image]), stain)
            except ValueError:  # nothing stained to measure: leave it as it is
                normaliser = None
        out = detector.predict(image, stain=normaliser)
        maps.append({k: v.detach().cpu() for k, v in out.items()})
    return Predictions([s.key for s in sources], maps, [s.points_yx for s in sources])


@dataclass(frozen=True)
class Evaluation:
    """Detection quality of one decoding setting over a set of images.

    Attributes
    ----------
    params : dict
        Decoding parameters used (the threshold among them).
    radius : float
        Matching radius (pixels).
    scores : DetectionScores
        Pooled over images.
    count_mae : float
        Mean absolute difference between predicted and true counts per image (the method's
        count aggregate, e.g. FCRN's density integral, where it has one; else points).
    per_image : list of dict
    """

    params: dict[str, Any]
    radius: float
    scores: DetectionScores
    count_mae: float
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {
            "params": self.params,
            "radius": self.radius,
            **self.scores.as_dict(),
            "count_mae": self.count_mae,
            "per_image": self.per_image,
        }


Decoded = list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]]


def _decode_all(method: Method, predictions: Predictions, **params: Any) -> Decoded:
    out = []
    for maps in predictions.maps:
        points, scores = method.decode(maps, **params)
        out.append((points.numpy().astype(np.float64), scores.numpy().astype(np.float32)))
    return out


def _evaluate_decoded(
    method: Method,
    predictions: Predictions,
    decoded: Decoded,
    counts: list[float | None],
    *,
    radius: float,
    params: dict[str, Any],
) -> Evaluation:
    tp = fp = fn = 0
    distances: list[npt.NDArray[np.float64]] = []
    abs_count = []
    per_image = []
    for key, (pts, _), truth, count in zip(
        predictions.keys, decoded, predictions.truths, counts, strict=True
    ):
        pairs, dist = match_points(pts, truth, radius)
        n_tp = len(pairs)
        tp, fp, fn = tp + n_tp, fp + len(pts) - n_tp, fn + len(truth) - n_tp
        distances.append(dist)
        predicted_count = float(len(pts)) if count is None else count
        abs_count.append(abs(predicted_count - len(truth)))
        per_image.append(
            {"key": key, "true": len(truth), "predicted": len(pts), "tp": n_tp,
             "count": predicted_count}
        )  # fmt: skip
    scores = score_counts(tp, fp, fn, np.concatenate(distances) if distances else ())
    return Evaluation(
        params=dict(params),
        radius=radius,
        scores=scores,
        count_mae=float(np.mean(abs_count)) if abs_count else float("nan"),
        per_image=per_image,
    )


def _counts(method: Method, predictions: Predictions) -> list[float | None]:
    """Each image's count from the method's aggregate (e.g. FCRN's density integral)."""
    out: list[float | None] = []
    for maps in predictions.maps:
        totals = method.aggregate(maps)
        out.append(float(totals["count"].sum()) if "count" in totals else None)
    return out


def evaluate_predictions(
    method: Method, predictions: Predictions, *, radius: float, **params: Any
) -> Evaluation:
    """Decode every image with ``params`` and score against the truth."""
    decoded = _decode_all(method, predictions, **params)
    return _evaluate_decoded(
        method, predictions, decoded, _counts(method, predictions), radius=radius, params=params
    )


def candidate_thresholds(
    method: Method, predictions: Predictions, n: int = 40, decoded: Decoded | None = None
) -> list[float]:
    """Thresholds spanning the scores the method gives at its most permissive setting."""
    if decoded is None:
        decoded = _decode_all(method, predictions, **{method.threshold_param: 0.0})
    scores = np.concatenate([s for _, s in decoded] or [np.zeros(0, np.float32)])
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return [0.0]
    quantiles = np.unique(np.quantile(scores, np.linspace(0.0, 0.995, n)))
    return sorted({method.threshold_for_score(float(q)) for q in quantiles})


def sweep(
    method: Method,
    predictions: Predictions,
    *,
    radius: float,
    thresholds: Sequence[float] | None = None,
    **params: Any,
) -> list[Evaluation]:
    """Evaluations over a range of thresholds (the precision-recall curve).

    Methods whose threshold only filters final scores (``threshold_filters_scores``) are
    decoded once per image; the others at every threshold.
    """
    configured = method.replace_decoding(**params) if params else method
    floor = _decode_all(configured, predictions, **{method.threshold_param: 0.0})
    values = (
        candidate_thresholds(configured, predictions, decoded=floor)
        if thresholds is None
        else thresholds
    )
    counts = _counts(configured, predictions)
    curve = []
    for value in values:
        setting = {**params, method.threshold_param: value}
        if configured.threshold_filters_scores:
            cut = configured.score_for_threshold(value)
            decoded = [(p[s > cut], s[s > cut]) for p, s in floor]
        else:
            decoded = _decode_all(configured, predictions, **{method.threshold_param: value})
        curve.append(
            _evaluate_decoded(
                configured, predictions, decoded, counts, radius=radius, params=setting
            )
        )
    return curve


def choose_threshold(
    method: Method, predictions: Predictions, *, radius: float, **params: Any
) -> tuple[float, list[Evaluation]]:
    """The threshold with the best pooled F1 on these (validation) predictions, and the sweep."""
    curve = sweep(method, predictions, radius=radius, **params)
    best = max(curve, key=lambda e: (e.scores.f1, -abs(e.scores.count_error)))
    return float(best.params[method.threshold_param]), curve


def write_pr_curve(
    curves: Mapping[str, Sequence[Evaluation]],
    path: str | Path,
    *,
    title: str = "",
    marks: Mapping[str, Evaluation] | None = None,
) -> Path:
    """Draw precision against recall for one or more sweeps as a PNG (with Pillow).

    Parameters
    ----------
    curves : mapping of label to evaluations
    path : path
        Output PNG.
    title : str
    marks : mapping of label to Evaluation, optional
        The operating point to circle on each curve (e.g. at the threshold chosen on
        validation data); default: the curve's best F1.
    """
    from PIL import Image, ImageDraw

    size, margin = 640, 60
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (margin, margin // 2, size - margin // 2, size - margin)
    x0, y0, x1, y1 = box

    def to_px(recall: float, precision: float) -> tuple[float, float]:
        return x0 + recall * (x1 - x0), y1 - precision * (y1 - y0)

    draw.rectangle(box, outline="black")
    for tick in np.linspace(0, 1, 6):
        x, _ = to_px(tick, 0)
        _, y = to_px(0, tick)
        draw.line([(x, y1), (x, y1 + 5)], fill="black")
        draw.line([(x0 - 5, y), (x0, y)], fill="black")
        draw.text((x - 8, y1 + 8), f"{tick:.1f}", fill="black")
        draw.text((x0 - 40, y - 6), f"{tick:.1f}", fill="black")
        draw.line([(x, y0), (x, y1)], fill=(230, 230, 230))
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
    draw.text(((x0 + x1) // 2 - 20, y1 + 28), "recall", fill="black")
    draw.text((8, y0 - 14), "precision", fill="black")
    if title:
        draw.text((x0 + 80, 4), title, fill="black")
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    for i, (label, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        pts = sorted((e.scores.recall, e.scores.precision) for e in curve)
        if len(pts) > 1:
            draw.line([to_px(r, p) for r, p in pts], fill=colour, width=2)
        mark = (marks or {}).get(label) or max(curve, key=lambda e: e.scores.f1)
        bx, by = to_px(mark.scores.recall, mark.scores.precision)
        draw.ellipse([bx - 4, by - 4, bx + 4, by + 4], outline=colour, width=2)
        draw.text((x0 + 10, y0 + 10 + 16 * i), f"{label}  F1 {mark.scores.f1:.3f}", fill=colour)
    from wsidet.output.files import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
    return path
