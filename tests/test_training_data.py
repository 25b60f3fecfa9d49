"""Several datasets in one run (pixel sizes, shares, the sources file) and the augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.synthetic import BlobLayout, blob_image, blob_layouts, random_points
from wsidet.annotations.files import AnnotationError
from wsidet.annotations.sources import ImageSource
from wsidet.methods import get_method
from wsidet.slide.nucleus_scale import haematoxylin_density
from wsidet.train.augment import (
    Augment,
    blur,
    brightness_contrast,
    dihedral,
    gamma,
    hed_jitter,
    jpeg,
)
from wsidet.train.collection import AnnotatedSet, hold_out, load_sets, read_sets
from wsidet.train.dataset import PointDataset, mixture_weights


def _write_blob_set(folder: Path, rng: np.random.Generator, n: int, size: int, cells: int) -> None:
    """``n`` images of ``cells`` blobs each, with their CSV points, as a dataset folder."""
    images, points = [], []
    for _ in range(n):
        pts = random_points(rng, (size, size), cells, min_sep=20, margin=10)
        images.append(blob_image((size, size), pts, 6.0, rng=rng))
        points.append(pts)
    _write_set(folder, images, points)


def _write_set(folder: Path, images: list[np.ndarray], points: list[np.ndarray]) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "points").mkdir()
    for i, (image, pts) in enumerate(zip(images, points, strict=True)):
        Image.fromarray(image).save(folder / "images" / f"img{i}.png")
        rows = "".join(f"{x},{y}\n" for y, x in pts)
        (folder / "points" / f"img{i}.csv").write_text("x,y\n" + rows)


# ---- pixel sizes -----------------------------------------------------------------------------


@settings(max_examples=10)
@given(y=st.floats(30, 170), x=st.floats(30, 170))
def test_a_point_of_a_quarter_micron_source_lands_on_its_target_pixel(
    tmp_path_factory: pytest.TempPathFactory, y: float, x: float
) -> None:
    """At 0.25 µm/px, a nucleus drawn at (y, x) is at ((y, x) + 0.5) / 2 - 0.5 for a 0.5 model."""
    folder = tmp_path_factory.mktemp("quarter")
    centre = np.array([[y, x]])
    image = blob_image((200, 200), centre, 8.0, rng=np.random.default_rng(0), noise=0.0)
    _write_set(folder, [image, image], [centre, centre])
    method = get_method("voca", width=4)  # works at 0.5 µm/px
    dataset = AnnotatedSet("quarter", folder / "images", folder / "points", mpp=0.25)
    (source,) = dataset.load(method, dataset.pairs()[:1])
    assert source.shape == (100, 100)
    expected = (centre + 0.5) / 2 - 0.5
    np.testing.assert_allclose(source.points_yx, expected, atol=1e-9)
    # The nucleus is where the point is: its haematoxylin centroid.
    density = haematoxylin_density(source.read(0, 100, 0, 100))
    mask = density > density.max() / 2
    yy, xx = np.nonzero(mask)
    weights = density[mask]
    centroid = np.array([np.average(yy, weights=weights), np.average(xx, weights=weights)])
    np.testing.assert_allclose(centroid, expected[0], atol=0.35)
    # The target puts the point's pixel at the point (VOCA: offset < half a pixel).
    targets = method.encode(source.points_yx, source.shape)
    py, px = np.floor(expected[0] + 0.5).astype(int)
    assert targets["conf"][0, py, px] == 1
    offset = targets["loc"][:, py, px]
    np.testing.assert_allclose(offset, expected[0] - [py, px], atol=1e-6)


# ---- shares ----------------------------------------------------------------------------------


def test_mixture_weights_give_each_dataset_its_share() -> None:
    big = [
        ImageSource(f"b{i}", np.zeros((100, 100, 3), np.uint8), np.zeros((0, 2))) for i in range(9)
    ]
    small = [ImageSource("s", np.zeros((50, 50, 3), np.uint8), np.zeros((0, 2)))]
    w = mixture_weights([big, small], [1.0, 3.0])
    assert w.shape == (10,) and w.sum() == pytest.approx(1.0)
    assert w[:9].sum() == pytest.approx(0.25) and w[9] == pytest.approx(0.75)
    np.testing.assert_allclose(w[:9], 0.25 / 9)
    with pytest.raises(ValueError, match="shares"):
        mixture_weights([big, small], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 datasets but 1"):
        mixture_weights([big, small], [1.0])


def test_patches_are_drawn_by_the_weights() -> None:
    dark = ImageSource("dark", np.zeros((64, 64, 3), np.uint8), np.zeros((0, 2)))
    light = ImageSource("light", np.full((256, 256, 3), 255, np.uint8), np.zeros((0, 2)))
    method = get_method("voca", width=4)
    ds = PointDataset([dark, light], method, patch=32, samples=600, weights=[0.8, 0.2], seed=3)
    dark_share = np.mean([float(ds[i][0].mean()) < 0.5 for i in range(len(ds))])
    # Binomial(600, 0.8): 4 standard deviations is 0.065. By area it would be 1/17.
    assert abs(dark_share - 0.8) < 0.065
    with pytest.raises(ValueError, match="one finite"):
        PointDataset([dark, light], method, patch=32, weights=[1.0])


def test_load_sets_holds_out_every_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    method = get_method("voca", width=4)
    sets = []
    for name, mpp, size in (("a", 0.5, 80), ("b", 0.25, 160)):
        _write_blob_set(tmp_path / name, rng, 4, size, 5)
        sets.append(AnnotatedSet(name, tmp_path / name / "images", tmp_path / name / "points", mpp))
    data = load_sets(sets, method, val_fraction=0.25, seed=0)
    assert len(data.train) == 6 and len(data.validation) == 2
    assert all(s.shape == (80, 80) for s in data.train + data.validation)  # b resampled
    np.testing.assert_allclose(data.weights, 1 / 6)  # equal shares, equal areas
    held = [d["validation_keys"] for d in data.record["datasets"]]
    assert [len(k) for k in held] == [1, 1]


def test_hold_out_needs_two_and_is_seeded() -> None:
    from wsidet.annotations.files import Annotated

    pairs = [Annotated(str(i), Path(f"{i}.png"), Path(f"{i}.csv")) for i in range(10)]
    train, val = hold_out(pairs, 0.2, seed=4)
    assert len(val) == 2 and not set(train) & set(val)
    assert hold_out(pairs, 0.2, seed=4) == (train, val)
    with pytest.raises(AnnotationError, match="at least 2"):
        hold_out(pairs[:1], 0.2, seed=0)


def test_sources_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "points").mkdir()
    path = tmp_path / "sources.toml"
    path.write_text(
        '[[dataset]]\nname = "a"\nimages = "a/images"\npoints = "a/points"\nmpp = 0.25\n'
        "share = 2\none_based = true\n"
        '[[dataset]]\nimages = "b/images"\npoints = "b/points"\nmpp = 0.5\n'
        'split = "splits.csv"\nfold = 1\n'
    )
    a, b = read_sets(path)
    assert a.images == tmp_path / "a" / "images" and a.mpp == 0.25 and a.share == 2.0
    assert a.one_based and b.split == tmp_path / "splits.csv" and b.fold == "1"
    assert b.name == "b"
    for text, message in (
        ('[[dataset]]\nimages = "x"\npoints = "y"\n', "needs mpp"),
        ('[[dataset]]\nimages = "x"\npoints = "y"\nmpp = 0.5\ncolour = 1\n', "unknown keys"),
        ('[[dataset]]\nimages = "x"\npoints = "y"\nmpp = 50\n', "mpp"),
        ('[[dataset]]\nimages = "x"\npoints = "y"\nmpp = 0.5\nfold = 1\n', "split and fold"),
        ("title = 1\n", "no \\[\\[dataset\\]\\]"),
        ("[[dataset\n", "cannot read"),
    ):
        path.write_text(text)
        with pytest.raises(AnnotationError, match=message):
            read_sets(path)


# ---- augmentations ---------------------------------------------------------------------------


COLOUR = {
    "hed": lambda im, rng: hed_jitter(im, rng, scale=0.1, shift=0.1),
    "brightness_contrast": lambda im, rng: brightness_contrast(im, rng),
    "gamma": lambda im, rng: gamma(im, rng, amplitude=0.3),
    "blur": lambda im, rng: blur(im, rng, max_sigma=1.5),
    "jpeg": lambda im, rng: jpeg(im, rng, min_quality=30),
}


@pytest.mark.parametrize("name", sorted(COLOUR))
@settings(max_examples=5)
@given(
    layout=blob_layouts((96, 96), min_points=1, max_points=6, min_sep=24, radius=6.0, margin=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_colour_augmentations_are_seeded_and_keep_the_nuclei(
    name: str, layout: BlobLayout, seed: int
) -> None:
    """Same seed, same pixels; shape and dtype kept; nuclei stay where they were."""
    pts, image = layout.points_yx, layout.image()
    a = COLOUR[name](image, np.random.default_rng(seed))
    b = COLOUR[name](image, np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8
    # Every nucleus centre is still darker in haematoxylin than the background.
    density = haematoxylin_density(a)
    centres = np.rint(pts).astype(int)
    assert (density[centres[:, 0], centres[:, 1]] > np.median(density)).all()


def test_domain_shift_preset_and_checks() -> None:
    preset = Augment.domain_shift()
    assert preset.scale >= 0.25 and preset.gamma > 0 and preset.blur > 0 and preset.jpeg
    with pytest.raises(ValueError, match="scale jitter"):
        Augment(scale=1.0)
    with pytest.raises(ValueError, match="jpeg quality"):
        Augment(jpeg=100)
    with pytest.raises(ValueError, match=">= 0"):
        Augment(gamma=-0.1)


@settings(max_examples=12)
@given(
    layout=blob_layouts((200, 200), min_points=1, max_points=14, min_sep=30, radius=8.0, margin=12),
    seed=st.integers(0, 10_000),
    index=st.integers(0, 50),
)
def test_scale_jittered_patches_keep_points_on_their_nuclei(
    layout: BlobLayout, seed: int, index: int
) -> None:
    """Geometry (±25 % scale, flips) moves points exactly with the pixels."""
    source = ImageSource("a", layout.image(noise=0.0), layout.points_yx)
    method = get_method("voca", width=4)
    augment = Augment(hed=0, intensity=0, scale=0.25)
    ds = PointDataset([source], method, patch=64, samples=64, augment=augment, seed=seed)
    # The draws __getitem__ makes for this item: the source, the cut, the dihedral transform.
    patch_rng = np.random.default_rng([seed, 0, index])
    patch_rng.choice(1, p=ds._weights)
    image, points = ds._cut(source, patch_rng)
    image, points = dihedral(image, points, int(patch_rng.integers(8)))
    item = ds[index][0].permute(1, 2, 0).numpy() * 255.0
    np.testing.assert_allclose(item, image, atol=1e-3)  # the very patch training sees
    inside = ((points >= 2) & (points <= 61)).all(axis=1)
    density = haematoxylin_density(image)
    threshold = density.max() / 2
    for y, x in np.rint(points[inside]).astype(int):
        assert density[y, x] > threshold


def test_train_command_takes_a_sources_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from wsidet.cli.main import main

    rng = np.random.default_rng(4)
    for name, size in (("a", 96), ("b", 192)):
        _write_blob_set(tmp_path / name, rng, 3, size, 6)
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[[dataset]]\nname = "a"\nimages = "a/images"\npoints = "a/points"\nmpp = 0.5\n'
        '[[dataset]]\nname = "b"\nimages = "b/images"\npoints = "b/points"\nmpp = 0.25\n'
        "share = 3\n"
    )
    args = [
        "train", "--method", "voca", "--param", "width=4", "--sources", str(sources),
        "--out", str(tmp_path / "m"), "--epochs", "1", "--samples-per-epoch", "8",
        "--batch-size", "4", "--patch", "64", "--device", "cpu", "--domain-shift",
    ]  # fmt: skip
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "on 2 datasets" in out
    record = json.loads((tmp_path / "m" / "voca.json").read_text())
    datasets = record["data"]["datasets"]
    assert [d["name"] for d in datasets] == ["a", "b"] and datasets[1]["share"] == 3.0
    assert record["train"]["augment"]["jpeg"] == Augment.domain_shift().jpeg
    assert record["validation"]["radius"] == pytest.approx(6.0)  # 3 µm at 0.5 µm/px
    assert main([*args, "--images", str(tmp_path)]) == 1
    assert "give --sources or --images, not both" in capsys.readouterr().err
    assert main([*args, "--image-mpp", "0.5"]) == 1
    assert "--image-mpp, not both" in capsys.readouterr().err
    assert main([*args, "--radius", "6px"]) == 1
    assert "train --radius is in µm" in capsys.readouterr().err


def test_a_slide_states_its_own_pixel_size(tmp_path: Path) -> None:
    """The file's pixel size is used; a different one given is refused; a missing one is taken."""
    from tests.conftest import make_blob_slide
    from wsidet.annotations.files import Annotated
    from wsidet.annotations.sources import load_source

    method = get_method("voca", width=4)
    stated = make_blob_slide(
        tmp_path / "a.tif", shape=(300, 300), mpp=0.25, physical_mpp=0.25, seed=0, n=6
    )
    bare = make_blob_slide(
        tmp_path / "b.tif", shape=(300, 300), mpp=None, physical_mpp=0.25, seed=0, n=6
    )
    for truth in (stated, bare):
        rows = "".join(f"{x - 0.5},{y - 0.5}\n" for x, y in truth.points_xy)
        truth.path.with_suffix(".csv").write_text("x,y\n" + rows)
    item = Annotated("a", stated.path, stated.path.with_suffix(".csv"))
    assert load_source(item, method).shape == (150, 150)
    assert load_source(item, method, image_mpp=0.26).shape == (150, 150)  # within 5%
    with pytest.raises(AnnotationError, match=r"states 0\.25 µm/px but 0\.5 was given"):
        load_source(item, method, image_mpp=0.5)
    item = Annotated("b", bare.path, bare.path.with_suffix(".csv"))
    with pytest.raises(AnnotationError, match="states no pixel size"):
        load_source(item, method)
    assert load_source(item, method, image_mpp=0.25).shape == (150, 150)


def test_hold_out_keeps_the_tiles_of_one_image_together() -> None:
    from wsidet.annotations.files import Annotated

    pairs = [
        Annotated(f"train_{i}_{t:03d}", Path(f"{i}_{t}.jpg"), Path(f"{i}_{t}.csv"))
        for i in range(10)
        for t in range(4)
    ]
    for seed in range(5):
        train, val = hold_out(pairs, 0.2, seed=seed, group="^train_[0-9]+")
        originals = {p.key.rsplit("_", 1)[0] for p in val}
        assert len(val) == 8 and len(originals) == 2
        assert not originals & {p.key.rsplit("_", 1)[0] for p in train}
        assert len(train) + len(val) == len(pairs)
    with pytest.raises(AnnotationError, match="2 annotated images"):
        hold_out(pairs[:4], 0.2, seed=0, group="^train_[0-9]+")  # one original only


def test_training_on_normalised_colours_asks_inference_to_normalise(tmp_path: Path) -> None:

    from wsidet.annotations.sources import normalise_sources
    from wsidet.slide.stain import stain_stats
    from wsidet.train.loop import TrainConfig, train
    from wsidet.weights import normalises_stain, resolve_stain

    rng = np.random.default_rng(9)
    sources = []
    for i, tint in enumerate((0, 40, -30)):
        pts = random_points(rng, (96, 96), 6, min_sep=20, margin=10)
        image = blob_image((96, 96), pts, 6.0, rng=rng).astype(int)
        image[..., 0] = np.clip(image[..., 0] + tint, 0, 255)  # a lab's tint
        sources.append(ImageSource(str(i), image.astype(np.uint8), pts))
    reference = stain_stats([s.read(0, 96, 0, 96) for s in sources])
    normalised = normalise_sources(sources, reference)
    for source in normalised:  # every image now has the reference's colour statistics
        own = stain_stats([source.read(0, 96, 0, 96)])
        np.testing.assert_allclose(own.mean, reference.mean, atol=1.5)
    for source, original in zip(normalised, sources, strict=True):  # colours only change
        np.testing.assert_array_equal(source.points_yx, original.points_yx)
        assert source.shape == original.shape and source.key == original.key
    method = get_method("voca", width=4)
    config = TrainConfig(
        epochs=1, samples_per_epoch=4, batch_size=2, patch=64, device="cpu", stain_normalise=True
    )
    result = train(method, sources[:2], sources[2:], config, tmp_path / "sn")
    assert normalises_stain(result.weights)
    # What inference normalises to: the colours of the training images (the validation one's
    # are not among them).
    trained_on = stain_stats([s.read(0, 96, 0, 96) for s in sources[:2]])
    assert resolve_stain(None, result.weights, "voca") == trained_on
    assert resolve_stain(None, result.weights, "voca") != reference
    assert resolve_stain(False, result.weights, "voca") is None
    plain = train(method, sources[:2], sources[2:], TrainConfig(
        epochs=1, samples_per_epoch=4, batch_size=2, patch=64, device="cpu"
    ), tmp_path / "plain")  # fmt: skip
    assert not normalises_stain(plain.weights)
    assert resolve_stain(None, plain.weights, "voca") is None
