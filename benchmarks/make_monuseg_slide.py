"""A 40x (0.25 µm/px) JPEG pyramid slide made of MoNuSeg images, with their nucleus points.

The 13 MoNuSeg training images that have nucleus centroids (1000 x 1000 px at about
0.25 µm/px, 7 organs) are laid side by side in a mosaic (4 per row by default) and written as
a tiled JPEG pyramid (levels 1, 4, 16); their points, shifted into the mosaic, are written as
``NAME.points.csv`` (x, y in level-0 pixels, pixel centres at +0.5). Used by
``bench_read_scale.py`` to measure reading a 40x slide for a 0.5 µm/px model.

    python benchmarks/make_monuseg_slide.py --out bench-out/monuseg-40x.tif
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "monuseg"
#: MoNuSeg's Aperio XML files state MicronsPerPixel of about 0.252.
MPP = 0.252


def main() -> None:
    from wsidet.slide.pyramid import write_pyramid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-row", type=int, default=4)
    args = parser.parse_args()
    stems = sorted(p.stem for p in (DATA / "points").glob("*.csv"))
    rows = -(-len(stems) // args.per_row)
    edge = 1000
    mosaic = np.full((rows * edge, args.per_row * edge, 3), 240, np.uint8)
    points = []
    for i, stem in enumerate(stems):
        r, c = divmod(i, args.per_row)
        image = np.asarray(Image.open(DATA / "images" / f"{stem}.png").convert("RGB"))
        h, w = image.shape[:2]
        mosaic[r * edge : r * edge + h, c * edge : c * edge + w] = image
        with open(DATA / "points" / f"{stem}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                # 0-based pixel indices -> level-0 coordinates (pixel centres at +0.5)
                points.append((float(row["x"]) + c * edge + 0.5, float(row["y"]) + r * edge + 0.5))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(args.out, mosaic, mpp=MPP, downsamples=(1, 4, 16))
    with open(args.out.with_suffix(".points.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y"])
        writer.writerows(points)
    print(f"wrote {args.out} ({mosaic.shape[1]} x {mosaic.shape[0]} px, {len(points)} points)")


if __name__ == "__main__":
    main()
