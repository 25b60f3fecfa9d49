"""Train a detector on CRCHisto fold 1 and evaluate it on fold 2 (the VOCA split).

    python examples/train_crchisto.py [--method voca] [--minutes 20] [--out runs/voca-fold1]

The same as two commands:

    wsidet train --method voca --images DATA/images --points DATA/detection --image-mpp 0.5 \\
        --split DATA/splits.csv --fold 1 --one-based --out runs/voca-fold1 --minutes 20
    wsidet evaluate --weights runs/voca-fold1/voca.safetensors --images DATA/images \\
        --points DATA/detection --image-mpp 0.5 --split DATA/splits.csv --fold 2 --one-based \\
        --radius 3 --radius 4

The decoding threshold is chosen on a validation set carved from fold 1, never on fold 2.
CRCHisto's annotations are MATLAB coordinates, hence --one-based; its images are 20x,
0.5 µm/px (3 and 4 µm are the 6 and 8 px radii of the papers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsidet.cli.main import main as wsidet

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "crchisto"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="voca")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"{args.method}-fold1"
    data = ["--images", str(args.data / "images"), "--points", str(args.data / "detection"),
            "--split", str(args.data / "splits.csv"), "--one-based",
            "--image-mpp", "0.5"]  # fmt: skip
    device = ["--device", args.device] if args.device else []
    code = wsidet(
        ["train", "--method", args.method, *data, "--fold", "1", "--out", str(out),
         "--minutes", str(args.minutes), "--samples-per-epoch", "1024", *device]
    )  # fmt: skip
    if code:
        return code
    return wsidet(
        ["evaluate", "--weights", str(out / f"{args.method}.safetensors"), *data, "--fold", "2",
         "--radius", "3", "--radius", "4", "--out", str(out / "test-fold2"), *device]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
