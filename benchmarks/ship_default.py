"""Copy a training run's weights into the package as bundled weights, with how they were made.

The shipped default ``voca`` (and the same file as ``voca-crchisto``, the name it keeps once
another default ships) was made with (CPU, two sessions; the second resumed the first)::

    wsidet train --method voca --param width=32 --images ../shared/data/crchisto/images \\
        --points ../shared/data/crchisto/detection --one-based --out bench-out/default-voca \\
        --minutes 60 --samples-per-epoch 2048 --patience 12 --device cpu --seed 0 [--resume]
    python benchmarks/ship_default.py bench-out/default-voca --command "<the command above>"

A generalist from ``benchmarks/generalisation.py --run generalist`` would ship with
``--terms generalist`` (the data terms of all three sources).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsidet" / "weights"
#: Limit on all bundled weights together, to keep the wheel small.
MAX_BYTES = 20 * 2**20

CRCHISTO_TERMS = (
    "Trained on CRCHisto (Sirinukunwattana et al., IEEE TMI 2016), which its authors released "
    "for research purposes only; these weights carry the same restriction. Cite the dataset."
)
GENERALIST_TERMS = (
    "Trained on CRCHisto (Sirinukunwattana et al., IEEE TMI 2016; research purposes only), "
    "the MoNuSeg 2018 training images (Kumar et al., IEEE TMI 2017; CC BY-NC-SA 4.0) and "
    "CoNSeP (Graham et al., Medical Image Analysis 2019; research use): these weights are for "
    "non-commercial research only. Cite the three datasets."
)
TERMS = {"crchisto": CRCHISTO_TERMS, "generalist": GENERALIST_TERMS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output folder of `wsidet train`")
    parser.add_argument("--command", required=True, help="the training command, for the record")
    parser.add_argument(
        "--terms",
        default="crchisto",
        help="data terms: crchisto, generalist, or text",
    )
    parser.add_argument("--name", help="ship as METHOD-VARIANT (default: the method's default)")
    args = parser.parse_args()
    records = sorted(p for p in args.run.glob("*.json") if p.with_suffix(".safetensors").is_file())
    if len(records) != 1:
        raise SystemExit(f"expected one training record in {args.run}, found {len(records)}")
    record = json.loads(records[0].read_text())
    weights = records[0].with_suffix(".safetensors")
    name = args.name or record["method"]
    if name.split("-")[0] != record["method"]:
        raise SystemExit(f"{name!r} does not name weights of method {record['method']!r}")
    others = sum(p.stat().st_size for p in PACKAGE.glob("*.safetensors") if p.stem != name)
    if others + weights.stat().st_size > MAX_BYTES:
        raise SystemExit(f"bundled weights would exceed {MAX_BYTES / 2**20:.0f} MiB")
    # The epochs are the authority on training time: records of resumed runs once counted only
    # the resumed part.
    record["minutes"] = sum(h["seconds"] for h in record["history"]) / 60
    record["made_with"] = {"command": args.command, "data_terms": TERMS.get(args.terms, args.terms)}
    shutil.copyfile(weights, PACKAGE / f"{name}.safetensors")
    (PACKAGE / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"shipped {name}: {weights.stat().st_size / 2**20:.1f} MiB -> {PACKAGE}")


if __name__ == "__main__":
    main()
