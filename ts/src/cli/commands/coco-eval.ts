// `vasomim coco-eval --gt <coco.json> --dt <results.json> [--out summary.json]`: COCO bbox metrics
// with pycocotools' semantics (ts/src/detection/coco-eval.ts).
import { writeFileSync } from 'node:fs';

import { cocoEvaluate, formatSummary, readCocoGt, readCocoResults } from '../../detection/coco-eval.js';
import { command, noPositionals, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'coco-eval',
  summary: 'COCO bbox evaluation (AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l) of a results file.',
  usage: 'vasomim coco-eval --gt <coco.json> --dt <results.json> [--out summary.json]',
  description:
    "Same figures as pycocotools 2.0.11 (COCOeval, iouType 'bbox'): IoU .50:.05:.95, 101 recall points,\n" +
    "maxDets 1/10/100, size buckets by the ground truth's `area`, crowd boxes ignored. Prints the 12\n" +
    'lines pycocotools prints; --out writes them with per-category AP as JSON (fractions, -1 = undefined).\n' +
    'Results: a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}.',
  options: [
    { name: 'gt', type: 'string', arg: '<coco.json>', help: 'ground truth in COCO format' },
    { name: 'dt', type: 'string', arg: '<results.json>', help: "detections in COCO's results format" },
    { name: 'out', short: 'o', type: 'string', arg: '<file.json>', help: 'write the summary as JSON' },
  ],
  examples: ['vasomim coco-eval --gt annotations/test.json --dt runs/det/eval/results.json --out summary.json'],
};

export const run = command(spec, async ({ values, positionals }) => {
  noPositionals(positionals);
  const gtPath = values.gt as string | undefined;
  const dtPath = values.dt as string | undefined;
  if (!gtPath) throw new UsageError('--gt <coco.json> is required');
  if (!dtPath) throw new UsageError('--dt <results.json> is required');
  const gt = readCocoGt(gtPath);
  const result = cocoEvaluate(gt, readCocoResults(dtPath, gt));
  process.stdout.write(formatSummary(result));
  const out = values.out as string | undefined;
  if (out) writeFileSync(out, JSON.stringify({ gt: gtPath, dt: dtPath, ...result }, null, 2) + '\n');
  return 0;
});
