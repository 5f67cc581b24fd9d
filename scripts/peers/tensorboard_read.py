#!/usr/bin/env python3
"""Peer of the TensorBoard event writer for ts/test/tensorboard.test.ts: reads a run folder's
event files with TensorBoard's own reader (EventAccumulator, every event kept) and prints JSON:
{"version", "scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, width, height, png_bytes], ...]}}.

usage: python3 scripts/peers/tensorboard_read.py <run folder>
"""
import json
import sys

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {
        t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)] for t in tags["images"]
    }
    print(json.dumps({"version": tensorboard.__version__, "scalars": scalars, "images": images}))


if __name__ == "__main__":
    main()
