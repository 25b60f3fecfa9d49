"""``wsidet train`` and ``wsidet evaluate``: argument parsing and printing around wsidet.train."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wsidet.inference.precision import PRECISIONS
from wsidet.limits import MPP

from .args import PICKLE_HELP, bounded, limited, parse_params

EXIT_OK = 0


RADIUS_HELP = "matching radius: µm, or with a unit, e.g. 3um, 6px (pixels of the images)"


def radius_arg(text: str) -> tuple[float, str]:
    """``3``, ``3um``, ``3µm`` (micrometres) or ``6px`` as (value, unit)."""
    value = text.strip().lower()
    unit = "um"
    for suffix, name in (("µm", "um"), ("um", "um"), ("px", "px")):
        if value.endswith(suffix):
            value, unit = value[: -len(suffix)].strip(), name
            break
    number = bounded(float, 0.01, 1000.0)(value)
    return float(number), unit


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", metavar="DIR", help="images or slides")
    parser.add_argument("--points", metavar="DIR", help="x,y CSV / GeoJSON / GeoParquet per image")
    parser.add_argument("--split", metavar="FILE", help="CSV: image id, fold column")
    parser.add_argument("--fold", help="use the images of this fold (with --split)")
    parser.add_argument(
        "--fold-column", help="fold column of --split (default: the one named *fold*)"
    )
    parser.add_argument(
        "--one-based", action="store_true", help="CSV coordinates are 1-based (MATLAB, CRCHisto)"
    )
    parser.add_argument(
        "--image-mpp",
        type=limited(float, MPP),
        help="µm/px of the images (required for PNG/JPEG; slides state their own)",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--debug", action="store_true")


def add_parsers(sub: Any) -> None:
    train = sub.add_parser("train", help="train a method on annotated images or slides")
    train.add_argument("--method", required=True)
    add_data_arguments(train)
    train.add_argument(
        "--sources",
        metavar="FILE",
        help="TOML file of several datasets, each with its pixel size and share "
        "(instead of --images/--points; see wsidet.train.collection)",
    )
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--epochs", type=bounded(int, 1, 100_000), default=100)
    train.add_argument(
        "--minutes",
        type=bounded(float, 0.01, 1e6),
        help="time budget in minutes, checked between steps (the epoch is then validated)",
    )
    train.add_argument("--samples-per-epoch", type=bounded(int, 1, 10**8), default=512)
    train.add_argument("--batch-size", type=bounded(int, 1, 4096), default=8)
    train.add_argument(
        "--patch",
        type=bounded(int, 16, 8192, "patches are cut at the method's scale"),
        default=128,
    )
    train.add_argument("--lr", type=bounded(float, 1e-9, 10.0), default=1e-3)
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    train.add_argument(
        "--schedule",
        choices=["cosine", "plateau"],
        default="cosine",
        help="cosine over --epochs (or --minutes), or /10 after --plateau-wait validations "
        "without improvement (to convergence, with --patience to stop)",
    )
    train.add_argument("--plateau-wait", type=bounded(int, 1, 100_000), default=4)
    train.add_argument("--patience", type=bounded(int, 1, 100_000), default=15)
    train.add_argument(
        "--val-fraction",
        type=bounded(float, 0.01, 0.9),
        default=0.15,
        help="of the training images",
    )
    train.add_argument(
        "--radius",
        type=radius_arg,
        default=(3.0, "um"),
        help="validation matching radius in µm, e.g. 3 or 3um (default 3: 6 px at 0.5 µm/px)",
    )
    train.add_argument(
        "--select-on",
        choices=["f1", "count"],
        default="f1",
        help="keep the weights with the best validation F1, or the lowest count error",
    )
    train.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0)
    train.add_argument("--resume", action="store_true")
    train.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights (fine-tuning); 'bundled' for the ones wsidet ships",
    )
    train.add_argument(
        "--hed-jitter", type=bounded(float, 0.0, 1.0), default=0.05, help="stain jitter amplitude"
    )
    train.add_argument(
        "--intensity-jitter",
        type=bounded(float, 0.0, 1.0),
        default=0.1,
        help="brightness/contrast amplitude",
    )
    train.add_argument(
        "--scale-jitter",
        type=bounded(float, 0.0, 0.9),
        default=0.0,
        help="patches resized by U(1 ± this)",
    )
    train.add_argument(
        "--stain-normalise",
        action="store_true",
        help="train on colours normalised to the training data's (each image from its own "
        "statistics); the weights then normalise at inference by default",
    )
    train.add_argument(
        "--domain-shift",
        action="store_true",
        help="the generalist's augmentation: stain ±10%%, intensity, gamma, blur, JPEG, "
        "scale ±25%% (overrides the three jitters above)",
    )
    train.add_argument("-q", "--quiet", action="store_true")
    train.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="training arithmetic: auto (fp16 with a gradient scaler on CUDA; bf16 on CPUs "
        "that compute it natively, else fp32), fp32, bf16, fp16",
    )

    evaluate = sub.add_parser(
        "evaluate", help="score a method (its weights) against annotated images"
    )
    evaluate.add_argument(
        "--weights",
        help="trained weights, or the name of bundled ones (default: the method's bundled "
        "weights; none for untrained methods)",
    )
    evaluate.add_argument(
        "--method", help="method (default: the one the weights name, else wsidet's default)"
    )
    evaluate.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    evaluate.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="network arithmetic (as for wsidet run)",
    )
    add_data_arguments(evaluate)
    evaluate.add_argument(
        "--radius",
        type=radius_arg,
        action="append",
        help=f"{RADIUS_HELP} (repeatable; default 3 µm)",
    )
    evaluate.add_argument(
        "--stain-normalise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="normalise each image's colours to those the weights were trained on "
        "(default: as the weights ask)",
    )
    evaluate.add_argument("--out", metavar="DIR", help="write evaluation.json and pr.png here")


def _pairs(args: argparse.Namespace) -> list[Any]:
    from wsidet.annotations.files import find_pairs, select_fold

    if not args.images or not args.points:
        raise ValueError(
            "give --images and --points" + (" (or --sources)" if args.command == "train" else "")
        )
    pairs = find_pairs(args.images, args.points)
    if args.split:
        if args.fold is None:
            raise ValueError("--split needs --fold")
        pairs = select_fold(pairs, args.split, args.fold, column=args.fold_column)
    elif args.fold is not None:
        raise ValueError("--fold needs --split")
    return pairs


def _data_record(args: argparse.Namespace) -> dict[str, Any]:
    """Where the annotated images came from and how their points were read.

    A record without ``one_based`` and ``image_mpp`` could not be reproduced.
    """
    return {
        "images": str(args.images),
        "points": str(args.points),
        "split": args.split,
        "fold": args.fold,
        "one_based": args.one_based,
        "image_mpp": args.image_mpp,
    }


def cmd_train(args: argparse.Namespace) -> int:
    from wsidet.annotations.sources import load_sources
    from wsidet.errors import WeightsError
    from wsidet.methods import get_method
    from wsidet.train.augment import Augment
    from wsidet.train.loop import TrainConfig, train
    from wsidet.weights import bundled_weights, method_from_weights

    init = args.init
    if init == "bundled":
        init = bundled_weights(args.method)
        if init is None:
            raise WeightsError(f"wsidet ships no weights for method {args.method!r}")
    if init is not None:
        # The network is fixed by the weights; --param may change decoding only.
        method = method_from_weights(
            init, args.method, allow_pickle=args.allow_pickle, **parse_params(args.param)
        )
    else:
        method = get_method(args.method, **parse_params(args.param))
    weights: Any = None
    radius, unit = args.radius
    if unit != "um":
        raise ValueError("train --radius is in µm (images of several pixel sizes may train)")
    if args.sources:
        given = [
            flag
            for flag, value in (
                ("--images", args.images), ("--points", args.points), ("--split", args.split),
                ("--fold", args.fold), ("--image-mpp", args.image_mpp),
                ("--one-based", args.one_based),
            )
            if value
        ]  # fmt: skip
        if given:
            raise ValueError(
                f"give --sources or {', '.join(given)}, not both (the sources file says "
                "each dataset's folders, pixel size, fold and coordinates)"
            )
        from wsidet.train.collection import load_sets, read_sets

        data = load_sets(
            read_sets(args.sources), method, val_fraction=args.val_fraction, seed=args.seed
        )
        train_sources, val_sources, weights = data.train, data.validation, data.weights
        record = {"sources_file": str(args.sources), **data.record}
        what = f"{len(data.record['datasets'])} datasets"
    else:
        from wsidet.train.collection import hold_out

        train_pairs, val_pairs = hold_out(_pairs(args), args.val_fraction, args.seed)
        load = {"one_based": args.one_based, "image_mpp": args.image_mpp}
        train_sources = [s for p in train_pairs for s in load_sources(p, method, **load)]
        val_sources = [s for p in val_pairs for s in load_sources(p, method, **load)]
        record = {**_data_record(args), "validation_keys": [p.key for p in val_pairs]}
        what = f"{len(train_pairs)} images, validating on {len(val_pairs)}"
    augment = (
        Augment.domain_shift()
        if args.domain_shift
        else Augment(hed=args.hed_jitter, intensity=args.intensity_jitter, scale=args.scale_jitter)
    )
    config = TrainConfig(
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        plateau_wait=args.plateau_wait,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        augment=augment,
        radius=radius / method.mpp,
        max_minutes=args.minutes,
        select_on=args.select_on,
        precision=args.precision,
        stain_normalise=args.stain_normalise,
    )
    print(f"training {method.name} on {what} -> {args.out}")

    def show(log: Any) -> None:
        if not args.quiet:
            mark = " *" if log.improved else ""
            print(
                f"epoch {log.epoch:3d}  lr {log.lr:.2e}  loss {log.loss:.4f}  "
                f"val F1 {log.val_f1:.4f} "
                f"(P {log.val_precision:.3f} R {log.val_recall:.3f} at {log.threshold:.4g})  "
                f"{log.seconds:.0f} s{mark}",
                flush=True,
            )

    result = train(
        method,
        train_sources,
        val_sources,
        config,
        args.out,
        resume=args.resume,
        init_weights=init,
        allow_pickle=args.allow_pickle,
        on_epoch=show,
        data_record=record,
        train_weights=weights,
    )
    what = "validation F1" if config.select_on == "f1" else "validation count MAE"
    value = result.best_score if config.select_on == "f1" else -result.best_score
    print(f"best epoch {result.best_epoch}: {what} {value:.4f} -> {result.weights}")
    return EXIT_OK


def _radius_px(radius: tuple[float, str], image_mpp: float, method_mpp: float) -> float:
    """A radius (value, unit) as the method's working pixels, where matching happens."""
    value, unit = radius
    microns = value * image_mpp if unit == "px" else value
    return microns / method_mpp


def _image_mpp(args: argparse.Namespace, pairs: list[Any]) -> float:
    """The images' pixel size: --image-mpp, else the one the slides state (all the same)."""
    if args.image_mpp is not None:
        return float(args.image_mpp)
    from wsidet.annotations.files import SLIDE_SUFFIXES, AnnotationError
    from wsidet.annotations.sources import plain_image_without_mpp
    from wsidet.slide.wsi import open_slide

    found = set()
    for pair in pairs:
        if pair.image.suffix.lower() not in SLIDE_SUFFIXES:
            raise plain_image_without_mpp(pair.image)
        mpp = open_slide(pair.image).mpp
        if mpp is None:
            raise AnnotationError(f"{pair.image.name} states no pixel size: give --image-mpp")
        found.add(round(mpp, 4))
    if len(found) != 1:
        raise AnnotationError(
            f"the slides have different pixel sizes ({sorted(found)}); evaluate them apart"
        )
    return found.pop()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wsidet.annotations.sources import load_sources
    from wsidet.errors import WeightsError
    from wsidet.evaluation.evaluate import evaluate_predictions, predict, sweep, write_pr_curve
    from wsidet.inference.detector import Detector
    from wsidet.output.files import atomic_path
    from wsidet.weights import resolve_method, resolve_stain

    # Weights fix the method; a trainable method alone (or nothing named: wsidet's default)
    # gets its bundled weights; a method with nothing to train runs as its parameters say.
    method, weights = resolve_method(
        args.method, args.weights, allow_pickle=args.allow_pickle, **parse_params(args.param)
    )
    if method.trainable and weights is None:
        raise WeightsError(
            f"method {method.name!r} needs trained weights and wsidet ships none: give --weights"
        )
    pairs = _pairs(args)
    image_mpp = _image_mpp(args, pairs)
    sources = [
        s
        for p in pairs
        for s in load_sources(p, method, one_based=args.one_based, image_mpp=image_mpp)
    ]
    reference = resolve_stain(
        args.stain_normalise, weights, method.name, allow_pickle=args.allow_pickle
    )
    detector = Detector(
        method,
        weights=weights,
        device=args.device,
        allow_pickle=args.allow_pickle,
        precision=args.precision,
    )
    predictions = predict(detector, sources, stain=reference)
    report: dict[str, Any] = {
        "method": method.name,
        "params": method.params(),
        "weights": None if weights is None else str(weights),
        "stain_normalise": reference is not None,
        "threshold": {method.threshold_param: getattr(method, method.threshold_param)},
        "images": len(sources),
        "image_mpp": image_mpp,
        "method_mpp": method.mpp,
        "data": {**_data_record(args), "image_mpp": image_mpp},
        "radii": {},
    }
    curves, marks = {}, {}
    for radius in args.radius or [(3.0, "um")]:
        value, unit = radius
        r_px = _radius_px(radius, image_mpp, method.mpp)
        microns = r_px * method.mpp
        label = f"{value:g} {'µm' if unit == 'um' else 'px'}"
        result = evaluate_predictions(method, predictions, radius=r_px)
        curve = sweep(method, predictions, radius=r_px)
        tuned = max(curve, key=lambda e: e.scores.f1)
        s = result.scores
        to_um = method.mpp
        print(
            f"{method.name} radius {label} ({microns:.3g} µm): precision {s.precision:.4f} "
            f"recall {s.recall:.4f} F1 {s.f1:.4f} | localisation median "
            f"{s.loc_median * to_um:.2f} µm (Q1 {s.loc_q1 * to_um:.2f}, Q3 "
            f"{s.loc_q3 * to_um:.2f}) | count MAE {result.count_mae:.2f} | best F1 on these "
            f"images {tuned.scores.f1:.4f} (threshold tuned on them, not a test figure)"
        )
        report["radii"][label] = {
            "radius_um": microns,
            "radius_working_px": r_px,
            **result.as_dict(),
            "localisation_um": {
                "median": s.loc_median * to_um,
                "q1": s.loc_q1 * to_um,
                "q3": s.loc_q3 * to_um,
            },
            "tuned_on_test_data": {
                "note": "the threshold with the best F1 on these same images: optimistic, "
                "not a test figure",
                "threshold": tuned.params.get(method.threshold_param),
                "precision": tuned.scores.precision,
                "recall": tuned.scores.recall,
                "f1": tuned.scores.f1,
            },
        }
        curves[label], marks[label] = curve, result
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_pr_curve(
            curves,
            out / "pr.png",
            title=f"{method.name}: one curve per radius (circle: the weights' threshold)",
            marks=marks,
        )
        with atomic_path(out / "evaluation.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {out / 'evaluation.json'} and {out / 'pr.png'}")
    return EXIT_OK
