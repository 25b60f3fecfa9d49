"""Build a large pyramidal JPEG slide from real tissue, to measure wsidet at scale.

The slide is a mosaic of random crops (random flips and 90° turns) of real H&E tissue: the
tissue areas of the bundled CMU-1-Small-Region.svs and, when present, the CRCHisto images.
Tissue fills an ellipse covering about 60% of the slide; the rest is glass, as on a real slide,
so tissue detection has something to skip.

    python benchmarks/make_synthetic_slide.py --size 20000 --out bench-out/synthetic-20k.tif
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsidet.slide.pyramid import write_pyramid
from wsidet.slide.wsi import open_slide

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"
CRCHISTO = ROOT.parent / "shared" / "data" / "crchisto" / "images"


def tissue_sources(patch: int) -> list[np.ndarray]:
    """Real tissue images to crop from: the sample slide's tissue and CRCHisto images."""
    slide = open_slide(SAMPLE)
    image = slide.read_region(0, 0, *slide.shape)
    mask = slide.tissue_mask()
    sources = []
    dy, dx = mask.downsample
    for y in range(0, image.shape[0] - patch, patch // 2):
        for x in range(0, image.shape[1] - patch, patch // 2):
            box = np.array([[y, x, y + patch, x + patch]], float)
            rows = slice(int(y / dy), int((y + patch) / dy))
            cols = slice(int(x / dx), int((x + patch) / dx))
            if mask.any_in_boxes(box)[0] and mask.mask[rows, cols].mean() > 0.9:
                sources.append(image[y : y + patch, x : x + patch])
    if CRCHISTO.is_dir():
        for path in sorted(CRCHISTO.glob("*.png")):
            sources.append(np.asarray(Image.open(path).convert("RGB"))[:patch, :patch])
    return [s for s in sources if s.shape[:2] == (patch, patch)]


def build(size: int, patch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sources = tissue_sources(patch)
    canvas = np.full((size, size, 3), 242, np.uint8)
    noise = rng.integers(-3, 4, (patch, patch, 3), dtype=np.int16)
    cy = cx = size / 2
    ry, rx = 0.46 * size, 0.42 * size
    for y in range(0, size, patch):
        for x in range(0, size, patch):
            centre = ((y + patch / 2 - cy) / ry) ** 2 + ((x + patch / 2 - cx) / rx) ** 2
            h, w = min(patch, size - y), min(patch, size - x)
            if centre <= 1.0:
                crop = sources[rng.integers(len(sources))]
                crop = np.rot90(crop, rng.integers(4))
                if rng.random() < 0.5:
                    crop = crop[::-1]
                canvas[y : y + h, x : x + w] = crop[:h, :w]
            else:
                glass = np.clip(242 + noise[:h, :w], 0, 255).astype(np.uint8)
                canvas[y : y + h, x : x + w] = glass
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="edge in pixels (default 20000)")
    parser.add_argument("--patch", type=int, default=500)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/synthetic-20k.tif"))
    args = parser.parse_args()
    started = time.perf_counter()
    canvas = build(args.size, args.patch, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(args.out, canvas, mpp=args.mpp, downsamples=(1, 4, 16), tile=256, quality=80)
    print(
        f"wrote {args.out} ({args.size} x {args.size} px, {args.out.stat().st_size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
