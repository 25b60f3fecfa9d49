"""Calibrate and check the pixel-size estimate from nucleus scale (wsidet.slide.nucleus_scale).

1. The characteristic σ (µm) of every image of the datasets of known pixel size
   (CRCHisto 0.5 µm/px, MoNuSeg 0.252 µm/px): NUCLEUS_SIGMA_UM is their geometric mean.
2. CoNSeP's pixel size, which its tiles do not state: the LoG σ of its annotated nuclei
   against CRCHisto's annotated nuclei (same hospital, same tissue), and its characteristic σ.
3. The slide estimate (wsidet.slide.scale_check.estimate_slide_mpp) on the sample slide, on it
   resampled to 2× and 1/2× its pixel size, and on the 40× MoNuSeg slide when it exists
   (benchmarks/make_monuseg_slide.py).

Writes benchmarks/results/nucleus_scale.json.

    python benchmarks/nucleus_scale.py
"""

from __future__ import annotations

import glob
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"
RESULTS = ROOT / "benchmarks" / "results" / "nucleus_scale.json"


def _rgb(path: str | Path) -> Any:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def characteristic(images: list[str], mpp: float) -> dict[str, Any]:
    from wsidet.slide.nucleus_scale import characteristic_sigma, scale_energy

    values = np.array([characteristic_sigma(scale_energy(_rgb(p))) * mpp for p in images])
    values = values[np.isfinite(values)]
    return {
        "images": len(images),
        "median_sigma_um": round(float(np.median(values)), 3),
        "q25_q75": [round(float(v), 3) for v in np.percentile(values, [25, 75])],
    }


def annotated(images: list[str], points: list[str], mpp: float, one_based: bool) -> float:
    from wsidet.annotations.files import read_points
    from wsidet.slide.nucleus_scale import blob_sigmas

    per_image = []
    for image, pts in zip(images, points, strict=True):
        sigmas = blob_sigmas(_rgb(image), read_points(pts, one_based=one_based))
        if len(sigmas):  # a tile whose few nuclei all sit outside the σ range has none
            per_image.append(np.median(sigmas))
    return float(np.median(per_image)) * mpp


def resampled_slide(source: Path, factor: float, out: Path) -> tuple[Path, float]:
    """The sample slide resampled by ``factor`` (2: pixels twice as large) as a tiled TIFF."""
    import tifffile

    from wsidet.slide.resample import resample_weights, resample_window, resampled_size
    from wsidet.slide.wsi import open_slide

    slide = open_slide(source)
    assert slide.mpp is not None
    rgb = slide.read_region(0, 0, *slide.shape)
    h, w = rgb.shape[:2]
    oh, ow = resampled_size(h, factor), resampled_size(w, factor)
    _, _, wy = resample_weights(0, oh, factor, h)
    _, _, wx = resample_weights(0, ow, factor, w)
    tifffile.imwrite(out, resample_window(rgb, wy, wx), tile=(256, 256), compression="jpeg")
    return out, slide.mpp * factor


def main() -> None:
    from wsidet.slide.nucleus_scale import NUCLEUS_SIGMA_UM
    from wsidet.slide.scale_check import estimate_slide_mpp
    from wsidet.slide.wsi import open_slide

    start = time.perf_counter()
    crc = [str(DATA / f"crchisto/images/img{i}.png") for i in range(1, 101)]
    crc_pts = [str(DATA / f"crchisto/detection/img{i}.csv") for i in range(1, 101)]
    mon = sorted(glob.glob(str(DATA / "monuseg/images/*.png")))
    mon_pts = sorted(glob.glob(str(DATA / "monuseg/points/*.csv")))
    con_pts = sorted(glob.glob(str(DATA / "consep/points/*/*.csv")))[::4]
    con = [p.replace("/points/", "/images/").replace(".csv", ".jpg") for p in con_pts]
    calibration = {
        "crchisto (0.5 µm/px)": characteristic(crc, 0.5),
        "monuseg (0.252 µm/px)": characteristic(mon, 0.252),
        "consep (taken as 0.25 µm/px)": characteristic(con, 0.25),
    }
    a, b = (calibration[k]["median_sigma_um"] for k in list(calibration)[:2])
    fitted = float(np.sqrt(a * b))
    crc_annotated = annotated(crc[::4], crc_pts[::4], 0.5, True)
    consep_annotated = annotated(con, con_pts, 0.25, False)
    monuseg_annotated = annotated(
        [p.replace("/points/", "/images/").replace(".csv", ".png") for p in mon_pts],
        mon_pts,
        0.252,
        False,
    )
    slides: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(SAMPLE, None, "CMU-1 sample (file: 0.499)")]
        for factor in (2.0, 0.5):
            path, mpp = resampled_slide(SAMPLE, factor, Path(tmp) / f"sample-{factor}.tif")
            cases.append((path, mpp, f"CMU-1 resampled to {mpp:.3g} µm/px"))
        monuseg_slide = ROOT / "bench-out" / "monuseg-40x.tif"
        if monuseg_slide.is_file():
            cases.append((monuseg_slide, None, "MoNuSeg 40x slide (file: 0.252)"))
        for path, mpp, label in cases:
            slide = open_slide(path, mpp=mpp)
            t = time.perf_counter()
            estimate = estimate_slide_mpp(slide)
            truth = slide.mpp
            assert truth is not None
            slides[label] = {
                "true_mpp": round(truth, 4),
                "estimate": round(estimate.mpp, 4),
                "error": round(estimate.mpp / truth - 1, 3),
                "windows": estimate.windows,
                "spread": round(estimate.spread, 2),
                "seconds": round(time.perf_counter() - t, 2),
            }
            print(label, slides[label], flush=True)
    doc = {
        "nucleus_sigma_um_in_code": NUCLEUS_SIGMA_UM,
        "fitted_geometric_mean": round(fitted, 3),
        "calibration": calibration,
        "annotated_nucleus_sigma_um": {
            "crchisto at 0.5": round(crc_annotated, 3),
            "monuseg at 0.252": round(monuseg_annotated, 3),
            "consep at 0.25": round(consep_annotated, 3),
            "consep mpp implied by crchisto (same hospital)": round(
                0.25 * crc_annotated / consep_annotated, 3
            ),
        },
        "slides": slides,
        "hardware": f"{platform.processor() or platform.machine()} (CPU)",
        "date": time.strftime("%Y-%m-%d"),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "command": "python " + " ".join(sys.argv),
    }
    RESULTS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: doc[k] for k in ("fitted_geometric_mean", "annotated_nucleus_sigma_um")}))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
