#!/usr/bin/env python3
"""pycocotools' COCO bbox evaluation of a ground truth and a results file, as one JSON line.

Prints {"stats": [12 figures], "lines": [what summarize() prints], "perCategory": [{id, ap, ap50,
ap75}]}; perCategory is the mean of precision[t, :, k, area all, maxDets 100] over entries > -1
(detectron2's per-category AP). The peer of ts/src/detection/coco-eval.ts.

usage: python3 scripts/peers/pycocotools_eval.py <gt.json> <results.json>
"""
import contextlib
import io
import json
import sys

import numpy as np


def evaluate(gt, dt):
    """COCOeval(gt, dt, 'bbox') on in-memory dicts; returns stats, printed lines and per-category AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    coco.createIndex()
    res = coco.loadRes(json.loads(json.dumps(dt)))
    ev = COCOeval(coco, res, "bbox")
    ev.evaluate()
    ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    prec = ev.eval["precision"]
    per = []
    for k, cat in enumerate(ev.params.catIds):
        row = {"id": int(cat)}
        for name, t in (("ap", None), ("ap50", 0), ("ap75", 5)):
            p = prec[:, :, k, 0, -1] if t is None else prec[t, :, k, 0, -1]
            p = p[p > -1]
            row[name] = float(np.mean(p)) if p.size else -1.0
        per.append(row)
    return {"stats": [float(s) for s in ev.stats], "lines": buf.getvalue().splitlines(), "perCategory": per}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    with open(sys.argv[1]) as f:
        gt = json.load(f)
    with open(sys.argv[2]) as f:
        dt = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        r = evaluate(gt, dt)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
