from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from wsidet.cli.main import main

from tests.conftest import make_blob_slide
from tests.synthetic import blob_image, random_points
from wsidet.annotations.files import AnnotationError, find_pairs, read_points, select_fold
from wsidet.annotations.sources import ImageSource, SlideSource, Window, load_source
from wsidet.errors import WeightsError
from wsidet.evaluation.evaluate import Predictions, choose_threshold, evaluate_predictions
from wsidet.inference.detector import weights_hash
from wsidet.methods import DEFAULT_METHOD, get_method
from wsidet.methods.base import Method
from wsidet.output.detections import detections_frame, read_detections, write_geoparquet
from wsidet.train.augment import Augment, dihedral, hed_jitter
from wsidet.train.checkpoint import save_weights
from wsidet.train.dataset import PointDataset
from wsidet.train.loop import TrainConfig, cosine_lr, lr_horizon, step_lr, train
from wsidet.weights import method_from_weights, resolve_method


def write_points(path: Path, xy: np.ndarray, kind: str) -> Path:
    if kind == "csv":
        path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in xy))
    else:
        feats = [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(x), float(y)]}}
            for x, y in xy
        ]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


# ---- sources ---------------------------------------------------------------------------------


def test_pairs_folds_and_point_files(tmp_path: Path) -> None:
    images, points = tmp_path / "images", tmp_path / "points"
    images.mkdir()
    points.mkdir()
    for i in (1, 2, 10):
        Image.new("RGB", (8, 8)).save(images / f"{i:03d}cell.png")
        write_points(points / f"{i:03d}.csv", np.array([[1.0, 2.0]]), "csv")
    Image.new("RGB", (8, 8)).save(images / "unannotated.png")
    pairs = find_pairs(images, points)
    assert [p.key for p in pairs] == ["1", "2", "10"]
    split = tmp_path / "split.csv"
    split.write_text("image,split\n001,train\n002,test\n010,train\n")
    assert [p.key for p in select_fold(pairs, split, "train")] == ["1", "10"]
    with pytest.raises(AnnotationError, match="values: test, train"):
        select_fold(pairs, split, "holdout")
    with pytest.raises(AnnotationError, match="no image"):
        find_pairs(images, tmp_path)
    # CSV x,y -> yx indices (1-based files shifted); GeoJSON level-0 -> indices (-0.5).
    np.testing.assert_allclose(read_points(points / "001.csv"), [[2.0, 1.0]])
    np.testing.assert_allclose(read_points(points / "001.csv", one_based=True), [[1.0, 0.0]])
    geo = write_points(tmp_path / "p.geojson", np.array([[10.5, 20.5]]), "geojson")
    np.testing.assert_allclose(read_points(geo), [[20.0, 10.0]])


def write_level0_points(path: Path, xy: np.ndarray, kind: str) -> Path:
    """Level-0 ``(x, y)`` (pixel centres at +0.5) in one of the point formats wsidet reads."""
    if kind == "geojson":
        return write_points(path.with_suffix(".geojson"), xy, "geojson")
    if kind == "csv-one-based":  # MATLAB-style pixel indices: the first pixel is 1
        return write_points(path.with_suffix(".csv"), xy - 0.5 + 1, "csv")
    assert kind == "parquet"
    frame = detections_frame(xy, np.ones(len(xy)), method="voca", slide_id=path.stem)
    return write_geoparquet(frame, path.with_suffix(".parquet"))


def patch_centre_errors(dataset: PointDataset, size: int) -> list[float]:
    """Distances between each encoded centre and the centroid of the dark nucleus around it.

    VOCA's targets encode each centre exactly (pixel + localisation vector), so the centres can
    be read back from the targets and compared with the dark nuclei in the patch's pixels.
    """
    errors = []
    gy, gx = np.mgrid[0:size, 0:size]
    for i in range(len(dataset)):
        image, targets = dataset[i]
        dark = (image.permute(1, 2, 0).numpy() * 255).sum(axis=2) < 450
        conf = targets["conf"][0].numpy() > 0.5
        yy, xx = np.nonzero(conf)
        loc = targets["loc"].numpy()
        centres = np.unique(
            np.round(np.stack([yy + loc[0, yy, xx], xx + loc[1, yy, xx]], 1), 3), axis=0
        )
        for cy, cx in centres:
            if not (12 <= cy < size - 12 and 12 <= cx < size - 12):
                continue  # the nucleus may be cut by the patch edge
            near = dark & (np.hypot(gy - cy, gx - cx) < 10)
            centroid = np.array([gy[near].mean(), gx[near].mean()])
            errors.append(float(np.hypot(*(centroid - [cy, cx]))))
    return errors


SLIDE_SCALES = pytest.mark.parametrize(
    ("file_mpp", "downsamples", "expected_level", "resampled"),
    [(0.25, (1, 2, 4), 1, False), (0.2, (1, 2), 1, True), (0.5, (1,), 0, False)],
)


def slide_alignment(
    tmp_path: Path, file_mpp: float, downsamples: tuple[int, ...], kind: str, shift: float = 0.0
) -> tuple[SlideSource, list[float]]:
    """A synthetic slide's training source (points written as ``kind``) and its centre errors."""
    from wsidet.annotations.files import Annotated

    path = tmp_path / "s.tif"
    truth = make_blob_slide(
        path, shape=(640, 720), mpp=file_mpp, physical_mpp=file_mpp, seed=5, n=30,
        downsamples=downsamples,
    )  # fmt: skip
    pts_file = write_level0_points(tmp_path / "s", truth.points_xy + shift, kind)
    method = get_method("voca", width=4)
    source = load_source(Annotated("s", path, pts_file), method, one_based=kind == "csv-one-based")
    assert len(source.points_yx) == len(truth.points_xy)
    # A slide without drawn regions is cut to the box around its points.
    slide = source.source if isinstance(source, Window) else source
    assert isinstance(slide, SlideSource)
    dataset = PointDataset([source], method, patch=96, samples=12, augment=None, seed=3)
    return slide, patch_centre_errors(dataset, 96)


@pytest.mark.parametrize("kind", ["geojson", "csv-one-based", "parquet"])
@SLIDE_SCALES
def test_slide_patches_line_up_with_their_points(
    tmp_path: Path, file_mpp: float, downsamples, expected_level: int, resampled: bool, kind: str
) -> None:
    """A point at (x, y) in a slide lands on its nucleus in the patch, at any level or mpp.

    Correct points miss the centroid of their nucleus by about 0.1 px (its pixels are
    quantised); the tolerance is tight enough to see half a level-0 pixel of convention error
    (see the next test).
    """
    slide, errors = slide_alignment(tmp_path, file_mpp, downsamples, kind)
    assert slide.scale.level.index == expected_level
    assert (slide.scale.factor != 1.0) == resampled
    assert len(errors) >= 5
    assert max(errors) < 0.25


@SLIDE_SCALES
def test_the_alignment_check_sees_half_a_pixel(
    tmp_path: Path, file_mpp: float, downsamples, expected_level: int, resampled: bool
) -> None:
    """Points shifted by +0.5 level-0 px (a pixel-centre convention error) fail the check above."""
    _, errors = slide_alignment(tmp_path, file_mpp, downsamples, "geojson", shift=0.5)
    assert max(errors) > 0.25


def test_image_sources_read_windows() -> None:
    rng = np.random.default_rng(0)
    pts = random_points(rng, (200, 240), 10, min_sep=30, margin=15)
    image = blob_image((200, 240), pts, 8.0, rng=rng)
    source = ImageSource("a", image, pts)
    assert source.shape == (200, 240)
    np.testing.assert_array_equal(source.read(10, 20, 30, 50), image[10:20, 30:50])


def test_padding_mirrors_points_with_pixels() -> None:
    """A source smaller than the patch is mirrored to fit: its points must be mirrored too.

    Each nucleus is one marked pixel; every mark in the patch (copies in the padding included)
    must be an encoded centre, and every encoded centre a mark.
    """
    h, w, size = 21, 30, 64  # both axes padded, the rows over more than one period
    rng = np.random.default_rng(9)
    flat = rng.choice(h * w, 12, replace=False)
    pts = np.stack(np.unravel_index(flat, (h, w)), axis=1).astype(np.float64)
    image = np.zeros((h, w, 3), np.uint8)
    image[pts[:, 0].astype(int), pts[:, 1].astype(int)] = 255
    method = get_method("voca", width=4)
    dataset = PointDataset([ImageSource("small", image, pts)], method, patch=size, samples=1,
                           augment=None)  # fmt: skip
    patch, targets = dataset[0]
    marks = {(int(y), int(x)) for y, x in np.argwhere(patch[0].numpy() > 0.5)}
    yy, xx = np.nonzero(targets["conf"][0].numpy() > 0.5)
    loc = targets["loc"].numpy()
    centres = np.rint(np.stack([yy + loc[0, yy, xx], xx + loc[1, yy, xx]], 1)).astype(int)
    inside = ((centres >= 0) & (centres < size)).all(axis=1)
    assert len(marks) > len(pts)
    assert {(int(y), int(x)) for y, x in centres[inside]} == marks


# ---- augmentation ------------------------------------------------------------------------------


@settings(max_examples=40)
@given(
    k=st.integers(0, 7),
    marks=st.lists(
        st.tuples(st.integers(0, 16), st.integers(0, 16)), min_size=1, max_size=5, unique=True
    ),
)
def test_dihedral_moves_points_with_pixels(k: int, marks: list[tuple[int, int]]) -> None:
    """Each point is one marked pixel; it must come out on its own mark."""
    image = np.zeros((17, 17, 3), np.uint8)
    pts = np.array(marks, np.float64)
    for i, (y, x) in enumerate(marks):
        image[y, x] = (i + 1) * 40
    out, moved = dihedral(image, pts, k)
    assert out.shape == image.shape and np.count_nonzero(out) == np.count_nonzero(image)
    for i, (y, x) in enumerate(np.rint(moved).astype(int)):
        assert out[y, x, 0] == (i + 1) * 40


def test_hed_jitter_is_small_and_reproducible() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    a = hed_jitter(image, np.random.default_rng(1))
    b = hed_jitter(image, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - image).mean() < 25
    np.testing.assert_array_equal(
        hed_jitter(image, np.random.default_rng(1), scale=0, shift=0), image
    )


def test_dataset_is_reproducible_per_seed_epoch_index() -> None:
    rng = np.random.default_rng(2)
    pts = random_points(rng, (150, 160), 12, min_sep=25, margin=10)
    source = ImageSource("a", blob_image((150, 160), pts, 7.0, rng=rng), pts)
    method = get_method("voca", width=4)
    ds = PointDataset([source], method, patch=64, samples=4, augment=Augment(scale=0.1), seed=7)
    first = ds[2]
    assert torch.equal(first[0], ds[2][0])
    ds.set_epoch(1)
    assert not torch.equal(first[0], ds[2][0])
    assert set(first[1]) == {"conf", "loc", "wt"} and first[1]["loc"].shape == (2, 64, 64)


# ---- evaluation --------------------------------------------------------------------------------


def test_known_predictions_give_known_scores() -> None:
    method = get_method("fcrn_a")
    truth = np.array([[20.0, 20.0 + 20 * i] for i in range(10)])  # 10 nuclei in a row
    # 8 found (1 px off), 2 missed, 3 false detections far from any nucleus.
    predicted = np.concatenate(
        [truth[:8] + np.array([1.0, 0.0]), [[60.0, 30.0], [60.0, 90.0], [60.0, 150.0]]]
    )
    shape = (80, 220)
    maps = {k: torch.from_numpy(v) for k, v in method.encode(predicted, shape).items()}
    result = evaluate_predictions(method, Predictions(["a"], [maps], [truth]), radius=6.0)
    s = result.scores
    assert (s.tp, s.fp, s.fn) == (8, 3, 2)
    assert s.precision == pytest.approx(8 / 11) and s.recall == pytest.approx(0.8)
    assert s.f1 == pytest.approx(16 / 21)
    assert s.loc_median == pytest.approx(1.0, abs=0.05)
    assert result.count_mae == pytest.approx(1.0, abs=1e-3)  # the density integrates to 11


def test_threshold_is_chosen_for_the_best_f1() -> None:
    method = get_method("fcrn_a")
    truth = np.array([[20.0, 20.0 + 25 * i] for i in range(6)])
    strong = method.encode(truth, (60, 170))["density"]
    weak = 0.3 * method.encode(np.array([[45.0, 40.0], [45.0, 110.0]]), (60, 170))["density"]
    maps = {"density": torch.from_numpy(strong + weak)}
    threshold, curve = choose_threshold(method, Predictions(["a"], [maps], [truth]), radius=6.0)
    best = max(curve, key=lambda e: e.scores.f1)
    assert best.scores.f1 == 1.0
    assert 0.3 * strong.max() <= threshold < strong.max()


# ---- training and checkpoints ------------------------------------------------------------------


def test_checkpoints_carry_their_method(tmp_path: Path) -> None:
    method = get_method("voca", width=4, threshold=0.42)
    path = save_weights(method.build_network(), method, tmp_path / "v.safetensors")
    assert method_from_weights(path) == method
    assert method_from_weights(path, "voca", threshold=0.5).threshold == 0.5  # type: ignore[attr-defined]
    with pytest.raises(WeightsError, match="trained for method 'voca'"):
        method_from_weights(path, "mapde")
    resolved, weights = resolve_method(None, path)
    assert resolved == method and weights == path


def test_short_training_lowers_the_loss_and_its_weights_run(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(4)
    sources = []
    for i in range(3):
        pts = random_points(rng, (160, 160), 14, min_sep=28, margin=8)
        sources.append(ImageSource(str(i), blob_image((160, 160), pts, 7.0, rng=rng), pts))
    method = get_method("voca", width=4)
    probe = PointDataset(sources, method, patch=64, samples=8, augment=None, seed=99)
    images = torch.stack([probe[i][0] for i in range(8)])
    targets = {k: torch.stack([probe[i][1][k] for i in range(8)]) for k in probe[0][1]}
    torch.manual_seed(0)
    initial = method.build_network().eval()
    with torch.no_grad():
        before = float(method.loss(initial(images), targets))
    config = TrainConfig(
        epochs=2, samples_per_epoch=64, batch_size=8, patch=64, lr=3e-3, device="cpu", seed=0
    )
    result = train(method, sources[:2], sources[2:], config, tmp_path / "ckpt")
    assert len(result.history) == 2 and result.weights.is_file()
    trained = result.method.build_network()
    from safetensors.torch import load_file

    trained.load_state_dict(load_file(str(result.weights)))
    trained.eval()
    with torch.no_grad():
        after = float(method.loss(trained(images), targets))
    assert after < before
    record = json.loads((tmp_path / "ckpt" / "voca.json").read_text())
    assert record["method"] == "voca" and record["params"]["width"] == 4
    assert "threshold" in record and record["data"]["train"]["sources"] == ["0", "1"]
    # The colours it learnt from, for stain normalisation: in the record and the header.
    from wsidet.weights import stain_reference

    assert record["stain_reference"]["pixels"] > 0
    assert stain_reference(result.weights).as_dict() == record["stain_reference"]  # type: ignore[union-attr]
    # The checkpoint runs through the CLI, its parameters (width 4) taken from the weights.
    slide = tmp_path / "slide.tif"
    make_blob_slide(slide, shape=(200, 240), mpp=0.5, physical_mpp=0.5, seed=1, n=8)
    code = main(
        ["run", str(slide), "--weights", str(result.weights), "--out", str(tmp_path / "o"), "-q"]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    assert read_detections(tmp_path / "o" / "slide.parquet").attrs["wsidet"]["method"] == "voca"


def resume_setup() -> tuple[Method, list[ImageSource]]:
    """A small method and one image, used for training and for validation."""
    rng = np.random.default_rng(5)
    pts = random_points(rng, (128, 128), 10, min_sep=25, margin=8)
    source = ImageSource("a", blob_image((128, 128), pts, 7.0, rng=rng), pts)
    return get_method("voca", width=4), [source, source]


def small_config(epochs: int, **changes: Any) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, samples_per_epoch=8, batch_size=4, patch=64, device="cpu", **changes
    )


def test_training_resumes_from_its_state(tmp_path: Path) -> None:
    """1 epoch, then resumed to 3, gives the very weights (and schedule) of 3 epochs straight."""
    method, sources = resume_setup()
    straight = train(method, sources[:1], sources[1:], small_config(3), tmp_path / "straight")
    first = train(method, sources[:1], sources[1:], small_config(1), tmp_path / "resumed")
    resumed = train(
        method, sources[:1], sources[1:], small_config(3), tmp_path / "resumed", resume=True
    )
    assert [h.epoch for h in resumed.history] == [0, 1, 2]
    assert resumed.history[0] == first.history[0]
    # The learning rate follows the cosine of the new horizon, not the first session's.
    lr = small_config(3).lr
    expected = [lr / 50 + (lr - lr / 50) * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)]
    np.testing.assert_allclose([h.lr for h in straight.history], expected, rtol=1e-12)
    assert [h.lr for h in resumed.history] == [h.lr for h in straight.history]
    states = [torch.load(d / "state.pt", weights_only=True) for d in (tmp_path / "straight",
              tmp_path / "resumed")]  # fmt: skip
    a, b = states[0]["network"], states[1]["network"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.loss for h in resumed.history] == [h.loss for h in straight.history]
    assert [h.val_f1 for h in resumed.history] == [h.val_f1 for h in straight.history]
    assert not list(tmp_path.glob("*/.*.tmp"))  # atomic writes leave no temporary files


def test_the_time_budget_counts_every_session_of_a_run(tmp_path: Path) -> None:
    method, sources = resume_setup()
    train(method, sources[:1], sources[1:], small_config(1), tmp_path)
    spent = json.loads((tmp_path / "voca.json").read_text())["minutes"]
    assert spent > 0
    # The first session already trained longer than this budget: nothing is left for a second.
    result = train(
        method, sources[:1], sources[1:], small_config(3, max_minutes=spent / 2), tmp_path,
        resume=True,
    )  # fmt: skip
    assert [h.epoch for h in result.history] == [0]
    with pytest.raises(ValueError, match="max_minutes"):
        small_config(3, max_minutes=0)


def test_records_say_which_code_made_them(tmp_path: Path, monkeypatch) -> None:
    """The commit and dirtiness of wsidet's checkout (here a scratch repository standing in
    for it), None where they cannot be told."""
    import shutil
    import subprocess

    from wsidet.train import checkpoint

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "checkout"
    (repo / "sub").mkdir(parents=True)

    def git(*args: str) -> str:
        identity = ("-c", "user.name=test", "-c", "user.email=test@example.org")
        out = subprocess.run(
            ["git", "-C", str(repo), *identity, *args], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def record(**keys: Any) -> dict[str, Any]:
        return json.loads(checkpoint.save_record(keys, tmp_path / "r.json").read_text())

    git("init", "-q")
    (repo / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(checkpoint, "_SOURCE_ROOT", repo.resolve())
    clean = record(a=1)
    assert clean["a"] == 1 and clean["git_commit"] == head and clean["git_dirty"] is False
    (repo / "notes.txt").write_text("untracked files do not count")
    assert record()["git_dirty"] is False
    (repo / "code.py").write_text("a = 2\n")
    assert record()["git_commit"] == head and record()["git_dirty"] is True
    # The record's own keys win: a training loop passes the state it started from.
    assert record(git_dirty=False, git_commit="abc")["git_dirty"] is False
    # An installed wsidet inside some other repository (a venv in a project) is no checkout.
    monkeypatch.setattr(checkpoint, "_SOURCE_ROOT", (repo / "sub").resolve())
    assert (record()["git_commit"], record()["git_dirty"]) == (None, None)

    def no_git(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("git")

    # Without git the record is still written, saying it cannot tell.
    monkeypatch.setattr(checkpoint, "_SOURCE_ROOT", repo.resolve())
    monkeypatch.setattr(checkpoint.subprocess, "run", no_git)
    assert (record()["git_commit"], record()["git_dirty"]) == (None, None)


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(7)
    pts = random_points(rng, (128, 128), 10, min_sep=25, margin=8)
    sources = [ImageSource("a", blob_image((128, 128), pts, 7.0, rng=rng), pts)] * 2
    method = get_method("voca", width=4)
    torch.manual_seed(3)
    start = save_weights(method.build_network(), method, tmp_path / "start.safetensors")
    # lr 0: the parameters cannot move, so the result is exactly where training started
    # (and not the seed's fresh initialisation).
    config = TrainConfig(epochs=1, samples_per_epoch=8, batch_size=4, patch=64, lr=0.0)
    result = train(method, sources[:1], sources[1:], config, tmp_path / "ft", init_weights=start)
    from safetensors.torch import load_file

    before, after = load_file(str(start)), load_file(str(result.weights))
    names = [n for n, _ in method.build_network().named_parameters()]
    assert names and all(torch.equal(before[n], after[n]) for n in names)
    record = json.loads((tmp_path / "ft" / "voca.json").read_text())
    assert record["init_weights"]["hash"] == weights_hash(start)
    with pytest.raises(WeightsError, match="do not match method"):
        train(get_method("voca", width=8), sources[:1], sources[1:], config, tmp_path / "x",
              init_weights=start)  # fmt: skip
    code = main([
        "train", "--method", "mapde", "--init", "bundled", "--images", str(tmp_path),
        "--points", str(tmp_path), "--out", str(tmp_path / "m"),
    ])  # fmt: skip
    _, err = capsys.readouterr()
    assert code != 0 and "ships no weights for method 'mapde'" in err


def annotated_folder(tmp_path: Path, n: int, rng: np.random.Generator) -> tuple[Path, Path]:
    """``n`` 128 px images of 10 blobs each, with their CSV points, as `wsidet train` reads."""
    images, points = tmp_path / "images", tmp_path / "points"
    images.mkdir()
    points.mkdir()
    for i in range(n):
        pts = random_points(rng, (128, 128), 10, min_sep=25, margin=8)
        Image.fromarray(blob_image((128, 128), pts, 7.0, rng=rng)).save(images / f"img{i}.png")
        write_points(points / f"img{i}.csv", pts[:, ::-1], "csv")
    return images, points


def test_train_and_evaluate_commands(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(6)
    images, points = annotated_folder(tmp_path, 4, rng)
    code = main([
        "train", "--method", "voca", "--param", "width=4", "--images", str(images),
        "--points", str(points), "--out", str(tmp_path / "m"), "--epochs", "1",
        "--samples-per-epoch", "8", "--batch-size", "4", "--patch", "64", "--device", "cpu",
        "--image-mpp", str(get_method("voca").mpp),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "validating on 1" in out and "best epoch 0" in out
    # How the points were read is part of the record, not only of the command line.
    data = json.loads((tmp_path / "m" / "voca.json").read_text())["data"]
    assert data["one_based"] is False and data["image_mpp"] == get_method("voca").mpp
    evaluate = [
        "evaluate", "--weights", str(tmp_path / "m" / "voca.safetensors"), "--images", str(images),
        "--points", str(points), "--out", str(tmp_path / "e"),
    ]  # fmt: skip
    # The images' pixel size is never assumed.
    assert main(evaluate) == 1
    assert "pixel size of plain images must be given" in capsys.readouterr().err
    # Radii in µm, or in the images' pixels: at 0.25 µm/px, 6 px is 1.5 µm (3 working px).
    code = main([*evaluate, "--image-mpp", "0.25", "--radius", "6px", "--radius", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "radius 6 px (1.5 µm)" in out and "radius 3 µm (3 µm)" in out
    assert "not a test figure" in out
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert set(report["radii"]) == {"6 px", "3 µm"} and (tmp_path / "e" / "pr.png").is_file()
    six = report["radii"]["6 px"]
    assert six["radius_um"] == pytest.approx(1.5) and six["radius_working_px"] == pytest.approx(3)
    assert "optimistic" in six["tuned_on_test_data"]["note"]
    assert report["image_mpp"] == 0.25
    code = main([
        "train", "--method", "log", "--images", str(images), "--points", str(points),
        "--out", str(tmp_path / "x"), "--image-mpp", "0.5",
    ])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1 and "nothing to train" in err


def test_evaluate_runs_a_method_without_weights(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(8)
    images, points = annotated_folder(tmp_path, 2, rng)
    data = [
        "--images", str(images), "--points", str(points), "--device", "cpu", "--image-mpp", "0.5",
    ]  # fmt: skip
    # LoG has nothing to train: its parameters are all it needs.
    code = main(
        ["evaluate", "--method", "log", "--param", "threshold=0.1", *data, "--out", str(tmp_path)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "log radius 3 µm (3 µm)" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["weights"] is None and report["params"]["threshold"] == 0.1
    assert report["data"]["one_based"] is False
    # A trainable method still needs weights (MapDe ships none), and something must be named.
    code = main(["evaluate", "--method", "mapde", *data])
    _, err = capsys.readouterr()
    assert code == 1 and "needs trained weights" in err and "--weights" in err
    # Nothing named: wsidet's default method with its bundled weights, as `wsidet run`.
    code = main(["evaluate", *data])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{DEFAULT_METHOD} radius 3 µm")


def test_a_time_budget_anneals_the_learning_rate_by_the_time_it_runs_out() -> None:
    """Under max_minutes the cosine's horizon is what the budget buys at the pace so far."""
    budgeted = small_config(400, max_minutes=1.0)
    assert lr_horizon(budgeted, []) == 400  # nothing measured yet: epoch 0 is at full rate anyway
    assert lr_horizon(budgeted, [10.0, 10.0]) == 6  # 60 s at 10 s an epoch
    assert lr_horizon(budgeted, [10.0, 20.0]) == 4  # the mean pace, 15 s
    assert lr_horizon(budgeted, [10.0] * 9) == 10  # over budget: never behind the current epoch
    assert lr_horizon(small_config(4, max_minutes=1.0), [1.0]) == 4  # epochs still bound it
    assert lr_horizon(small_config(400), [10.0] * 3) == 400  # no budget: the epochs
    # The last epoch the budget pays for runs below a tenth of the starting rate.
    lr = budgeted.lr
    assert cosine_lr(5, lr_horizon(budgeted, [10.0] * 5), lr) < 0.1 * lr


def test_a_time_budget_is_kept_inside_the_first_epoch(tmp_path: Path) -> None:
    """An epoch far longer than the budget is cut between steps, and the rate has annealed."""
    method, sources = resume_setup()
    budget_minutes = 0.05  # 3 s; one epoch of 4000 patches takes far longer on any machine
    config = TrainConfig(
        epochs=50, samples_per_epoch=4000, batch_size=4, patch=64, device="cpu",
        max_minutes=budget_minutes,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(method, sources[:1], sources[1:], config, tmp_path)
    wall = time.perf_counter() - started
    assert [h.epoch for h in result.history] == [0]
    trained = json.loads((tmp_path / "voca.json").read_text())["minutes"]
    assert 0.8 * budget_minutes <= trained <= 1.2 * budget_minutes, trained
    assert wall < budget_minutes * 60 + 10  # set-up and writing the weights on top
    # The last step ran near the cosine's floor: the budget, not the epochs, set the schedule.
    assert step_lr(config, 0.5, budget_minutes * 60, []) < 0.05 * config.lr


@pytest.mark.parametrize(
    "patch",
    [
        # 64 px patches: a quarter of the pixels per step, the same check (~12 s on 2 cores).
        pytest.param(64, id="patch64"),
        # The recipe's own 128 px patches (~30 s on 2 cores).
        pytest.param(128, id="patch128", marks=pytest.mark.slow),
    ],
)
def test_two_epochs_of_fcrn_a_on_four_vgg_images_lower_the_training_count_error(
    tmp_path: Path, patch: int
) -> None:
    """Issue 16: the counting recipe learns at all (the training MAE falls from the untrained
    network's), measured by the learning-curve monitor the diagnosis uses."""
    from tests.conftest import SHARED_DATA
    from wsidet.annotations.sources import load_sources
    from wsidet.evaluation.evaluate import predict
    from wsidet.inference.detector import Detector
    from wsidet.train.loop import monitor_figures

    vgg = SHARED_DATA / "vgg_cells"
    if not (vgg / "images").is_dir():
        pytest.skip(f"VGG cells not found at {vgg}")
    method = get_method("fcrn_a")
    pairs = find_pairs(vgg / "images", vgg / "points")
    pairs = select_fold(pairs, vgg / "splits.csv", "train_pool")
    sources = [s for p in pairs[:4] for s in load_sources(p, method, image_mpp=method.mpp)]
    torch.manual_seed(1)
    untrained = Detector(method, network=method.build_network(), device="cpu")
    before = monitor_figures(method, predict(untrained, sources), radius=6.0)["count_mae"]
    config = TrainConfig(
        epochs=2,
        samples_per_epoch=64,
        batch_size=8,
        patch=patch,
        lr=1e-3,
        device="cpu",
        seed=1,
        augment=Augment(hed=0.0, intensity=0.1),
        select_on="count",
    )
    result = train(
        method, sources, sources[:1], config, tmp_path / "fcrn", monitor={"train": sources}
    )
    curve = [h.monitor["train"]["count_mae"] for h in result.history]
    assert len(curve) == 2 and all(h.monitor_seconds > 0 for h in result.history)
    # Four images of 74-317 cells: the untrained density integrates to far from the truth
    # (72 cells off); two short epochs take 10-20 cells off (72 -> 61 with 128 px patches,
    # 72 -> 49 with 64 px ones, when written; other seeds: 96 -> 65, 197 -> 114).
    assert before > 20
    assert curve[-1] < before - 3, (before, curve)
    record = json.loads((tmp_path / "fcrn" / "fcrn_a.json").read_text())
    assert record["history"][-1]["monitor"]["train"]["count_mae"] == pytest.approx(curve[-1])


@given(
    yx=st.lists(st.tuples(st.floats(0, 63), st.floats(0, 63)), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25)
def test_density_patches_keep_every_dot_of_the_image_whole(
    yx: list[tuple[float, float]], seed: int
) -> None:
    """A whole-image patch of FCRN targets integrates to the image's dot count (edges mirrored);
    with the paper's cut-off edges it falls short by what crossed them."""
    points = np.array(yx)
    source = ImageSource("a", np.full((64, 64, 3), 200, np.uint8), points)
    totals = {}
    for edges in ("reflect", "cut"):
        method = get_method("fcrn_a", edges=edges)
        data = PointDataset([source], method, patch=64, samples=1, augment=None, seed=seed)
        _, target = data[0]
        totals[edges] = float(target["density"].sum()) / method.scale
    assert totals["reflect"] == pytest.approx(len(points), abs=2e-3 * len(points))
    # A dot closer than sigma (2 px) to an edge loses more than 15.9 % of its mass across it.
    if np.minimum(points + 0.5, 63.5 - points).min() < 2.0:
        assert totals["cut"] < totals["reflect"] - 0.15
    else:
        assert totals["cut"] <= totals["reflect"] + 1e-4


@pytest.mark.parametrize("edge", [40, 66])
def test_density_patches_mirror_only_real_image_edges(edge: int) -> None:
    """An image smaller than the patch (padded by mirroring, points with it) gets no extra
    reflections; one larger gets them at whichever of its edges the patch touches."""
    rng = np.random.default_rng(edge)
    points = rng.uniform(0, edge - 1, (12, 2))
    source = ImageSource("a", np.full((edge, edge, 3), 200, np.uint8), points)
    reflect, cut = (
        PointDataset(
            [source], get_method("fcrn_a", edges=e), patch=64, samples=4, augment=None, seed=3
        )
        for e in ("reflect", "cut")
    )
    for i in range(4):
        mirrored, plain = reflect[i][1]["density"], cut[i][1]["density"]
        if edge < 64:  # padding already holds the mirrored dots: the targets are the same
            torch.testing.assert_close(mirrored, plain)
        else:  # never less mass, and more wherever a touched edge cut a Gaussian
            assert float(mirrored.sum()) >= float(plain.sum()) - 1e-3
            assert torch.all(mirrored >= plain - 1e-5)


def test_the_plateau_schedule_drops_tenfold_after_each_wait_without_improvement() -> None:
    from wsidet.train.loop import plateau_lr

    assert plateau_lr([], 1e-3, 3) == 1e-3
    # Two flat epochs, an improvement (count restarts), then three flat: one decay.
    assert plateau_lr([True, False, False, True, False, False, False], 1e-3, 3) == 1e-4
    # Six flat epochs in a row: two decays (the count restarts after each).
    assert plateau_lr([True] + [False] * 6, 1e-3, 3) == pytest.approx(1e-5)


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 6))
def test_the_plateau_rate_never_rises_and_is_a_power_of_ten_below_the_start(
    improved: list[bool], wait: int
) -> None:
    from wsidet.train.loop import plateau_lr

    rates = [plateau_lr(improved[:n], 1.0, wait) for n in range(len(improved) + 1)]
    assert all(b <= a for a, b in itertools.pairwise(rates))
    decays = -np.log10(rates[-1])
    assert decays == pytest.approx(round(decays)) and decays <= len(improved) / wait


def test_a_plateau_run_decays_on_its_logged_improvements(tmp_path: Path) -> None:
    method, sources = resume_setup()
    config = small_config(4, schedule="plateau", plateau_wait=1, patience=10, lr=1e-3)
    result = train(method, sources[:1], sources[1:], config, tmp_path / "run")
    rates = [h.lr for h in result.history]
    flags = [h.improved for h in result.history]
    from wsidet.train.loop import plateau_lr

    assert rates == [pytest.approx(plateau_lr(flags[:i], 1e-3, 1)) for i in range(len(flags))]
    # The optimiser trained at that rate too (each step sets it), and a resume continues it.
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(rates[-1])
    longer = train(
        method, sources[:1], sources[1:], dataclasses.replace(config, epochs=6),
        tmp_path / "run", resume=True,
    )  # fmt: skip
    flags = [h.improved for h in longer.history]
    assert [h.lr for h in longer.history][4:] == [
        pytest.approx(plateau_lr(flags[:i], 1e-3, 1)) for i in (4, 5)
    ]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="before its rate ever drops"):
        TrainConfig(schedule="plateau", plateau_wait=5, patience=5)


def test_an_averaged_run_validates_and_saves_the_moving_average(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    method, sources = resume_setup()
    # One epoch of two steps: the first validation always improves, so its weights are kept.
    result = train(method, sources[:1], sources[1:], small_config(1, ema=0.5), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    raw = state["network"]
    average = {k[len("module.") :]: v for k, v in state["ema"].items() if k.startswith("module.")}
    assert average.keys() == raw.keys() and int(state["ema"]["n_averaged"]) == 2
    assert result.history[0].improved
    assert any(not torch.equal(average[k], raw[k]) for k in raw if raw[k].is_floating_point())
    saved = load_file(str(result.weights))
    assert saved.keys() == raw.keys()
    assert all(torch.equal(saved[k], average[k].contiguous()) for k in saved)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
