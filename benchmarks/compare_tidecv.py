"""Error counts and dAP of ``swin-maskrcnn analyze`` against the reference implementation tidecv.

Run with an interpreter that has tidecv (not a dependency; e.g. a separate venv with
``pip install tidecv opencv-python-headless``)::

    /work/bench-venvs/tidecv/bin/python benchmarks/compare_tidecv.py --ann GT.json --results R.json \\
        --analysis DIR/analysis.json

It runs tidecv's TIDE (box and mask mode, IoU 0.5 / 0.1) on the same files and prints, per error
type, tidecv's count and dAP next to analysis.json's (dAP on tidecv's 0-100 scale), and whether
the counts agree.
"""
from __future__ import annotations

import argparse
import json
import sys

TYPES = [("cls", "Cls"), ("loc", "Loc"), ("both", "Both"), ("dupe", "Dupe"), ("bkg", "Bkg"), ("missed", "Miss")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ann", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--analysis", required=True)
    args = p.parse_args()
    from tidecv import TIDE, datasets

    ours = json.load(open(args.analysis))
    ok = True
    for mode, key in ((TIDE.BOX, "bbox"), (TIDE.MASK, "segm")):
        if key not in ours:
            continue
        tide = TIDE(mode=mode)
        run = tide.evaluate(datasets.COCO(args.ann), datasets.COCOResult(args.results), mode=mode, name=key)
        counts = {e.short_name: n for e, n in run.count_errors().items()}
        daps = tide.get_main_errors()[key]
        print(f"{key}: AP50 tidecv {run.ap:.2f}, ours {100 * ours[key]['tide_AP50']:.2f}")
        print(f"  {'type':6s} {'tidecv':>7s} {'ours':>7s} {'dAP tidecv':>11s} {'dAP ours':>9s}")
        for ours_name, tide_name in TYPES:
            a, b = counts[tide_name], ours[key]["errors"][ours_name]
            ok &= a == b
            print(f"  {ours_name:6s} {a:7d} {b:7d} {daps[tide_name]:11.3f} {100 * ours[key]['dAP'][ours_name]:9.3f}")
    print("counts agree" if ok else "COUNTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
