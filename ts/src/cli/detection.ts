// The detection side of `finetune`, `evaluate` and `predict` (`--task stenosis-det`): each of those
// commands hands its argv here when it names that task (see `isDetectionTask`).
import { resolve } from 'node:path';

import { DETECTION_PRESET_VALUES, DetectionDataSchema, DetectionRunSchema } from '../config/detection.js';
import { mergeConfig } from '../config/pretrain.js';
import { parseOptions } from '../config/vessels.js';
import { openDetectionDataset } from '../detection/dataset.js';
import { evaluateDetector, predictDetector } from '../detection/evaluate.js';
import { loadDetector } from '../detection/model.js';
import { finetuneDetection } from '../detection/train.js';
import { command, noPositionals, num, UsageError, type CommandSpec } from './args.js';
import { reportStop, runLongJob } from './long-job.js';
import { formatDuration, Progress } from './progress.js';
import { configLayers, flagInput, schemaFlags } from './schema-flags.js';

/** The detection task's name on the command line. */
export const DETECTION_TASK = 'stenosis-det';

/** Whether a command line asks for the detection task (`--task stenosis-det` or `--task=stenosis-det`). */
export function isDetectionTask(argv: string[]): boolean {
  return argv.some((a, i) => a === `--task=${DETECTION_TASK}` || (a === '--task' && argv[i + 1] === DETECTION_TASK));
}

const TASK = { name: 'task', type: 'string', arg: DETECTION_TASK, help: 'the stenosis detector (ViTDet)' } as const;

export const finetuneSpec: CommandSpec = {
  name: 'finetune',
  summary: 'Fine-tune the ViTDet stenosis detector (pre-trained encoder + simple pyramid + Faster R-CNN heads).',
  usage: 'vasomim finetune --task stenosis-det --data <dataset> --init <checkpoint|scratch> [options]',
  description:
    'Datasets: the Stenosis dataset (frames + Pascal-VOC .xml, or train_labels.csv / test_labels.csv),\n' +
    'an ARCADE tree (stenosis/<split>/{images,annotations/<split>.json}) or a COCO .json. Splits: the\n' +
    "files' own, or seeded frame / patient splits (--split). Presets: demo (tiny ViT at 256, the bundled\n" +
    'samples), cpu-512 (ViT-S at 512), paper (ViT-B at 1024, LSJ 0.1-2). AdamW, layer decay 0.7, warm-up +\n' +
    'x0.1 steps. Validation AP50 every --eval-every steps: checkpoints/last.safetensors and best.safetensors.\n' +
    'Ctrl-C writes a checkpoint; --resume <run> continues it. Exit 0 done, 2 bad input, 130 interrupted.',
  options: [
    TASK,
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from checkpoints/last.safetensors' },
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'any config field as JSON; flags override',
    },
    { name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' },
  ],
  flags: schemaFlags(DetectionRunSchema, {
    presets: DETECTION_PRESET_VALUES,
    names: { 'dataOptions.seed': 'split-seed', 'dataOptions.limit': 'limit' },
    short: { data: 'd', init: 'i', batchSize: 'b', seed: 's' },
  }),
  flagsTitle: 'run config (--config, then these flags):',
  examples: [
    'vasomim finetune --task stenosis-det --data data/samples/danilov-stenosis-samples --split frame --test-fraction 0',
    'vasomim finetune --task stenosis-det --preset paper --data /data/stenosis --split patient --init vit-b.pth',
  ],
};

export const runFinetune = command(finetuneSpec, async ({ values, positionals }) => {
  noPositionals(positionals);
  const input = mergeConfig(...configLayers(finetuneSpec, values));
  const resume = values.resume as string | undefined;
  if (!input.data && !resume) throw new UsageError('--data <dataset> is required');
  const r = await runLongJob('finetune', 'finishing the current step and writing a checkpoint', (hooks, bar) =>
    finetuneDetection(
      input,
      {
        ...hooks,
        onStep: (s, t) =>
          bar(t.steps, 'step').update(
            t.stepsDone,
            t.stepsDone,
            `loss ${s.loss.toFixed(4)} (rpn ${(s.rpnCls + s.rpnLoc).toFixed(3)} cls ${s.cls.toFixed(3)} ` +
              `box ${s.boxReg.toFixed(3)}) ${s.imgPerSec.toFixed(2)} img/s`,
          ),
        onEval: (e) =>
          hooks.onLog(
            `step ${e.step}: ${e.split} AP50 ${(100 * e.ap50).toFixed(2)}, AP ${(100 * e.ap).toFixed(2)}` +
              (e.best ? ' (best)' : ''),
          ),
      },
      resume,
    ),
  );
  if (r.status !== 'completed') {
    reportStop('finetune', `at step ${r.steps}`, r.last, r.run);
    if (r.status === 'interrupted') return 130;
  }
  process.stderr.write(
    `done: ${r.steps} steps; best AP50 ${r.bestAp50 === null ? '-' : (100 * r.bestAp50).toFixed(2)} at step ` +
      `${r.bestStep ?? '-'}\nrun folder: ${resolve(r.run)}\nbest: ${r.best}\n`,
  );
  if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
  return 0;
});

export const evaluateSpec: CommandSpec = {
  name: 'evaluate',
  summary: 'COCO bbox metrics (AP, AP50, AP75, APs/m/l, AR) of a fine-tuned detector on a dataset split.',
  usage: 'vasomim evaluate <model.safetensors> --task stenosis-det --data <dataset> --out <dir> [options]',
  description:
    'Writes <out>/summary.json, per-image.csv (boxes, detections >= --score, TP/FP/FN at IoU 0.5, best\n' +
    'IoU), results.json (COCO results) + gt.json (`vasomim coco-eval --gt gt.json --dt results.json` gives\n' +
    'the same figures) and contact-sheet.png (worst and best frames; true boxes green, predictions red).',
  options: [
    TASK,
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset (as for finetune)' },
    { name: 'out', short: 'o', type: 'string', arg: '<dir>', help: 'output folder' },
    {
      name: 'eval-split',
      type: 'string',
      arg: '<split>',
      help: 'split to evaluate: train | val | test',
      default: 'test',
    },
    {
      name: 'score',
      type: 'string',
      arg: '<s>',
      help: 'score of a counted detection in the CSV and sheet',
      default: '0.5',
    },
    { name: 'device', type: 'string', arg: '<dev>', help: 'cpu, cuda or cuda:N', default: 'cpu' },
    { name: 'json', type: 'boolean', help: 'print summary.json as one line on stdout' },
  ],
  flags: schemaFlags(DetectionDataSchema, { at: ['dataOptions'], names: { seed: 'split-seed' } }),
  flagsTitle: 'dataset options:',
};

export const runEvaluate = command(evaluateSpec, async ({ values, positionals }) => {
  if (positionals.length !== 1) throw new UsageError('give exactly one model checkpoint');
  const data = values.data as string | undefined;
  const out = values.out as string | undefined;
  if (!data) throw new UsageError('--data <dataset> is required');
  if (!out) throw new UsageError('--out <dir> is required');
  const split = (values['eval-split'] as string | undefined) ?? 'test';
  if (!['train', 'val', 'test'].includes(split)) throw new UsageError(`--eval-split ${split}: train, val or test`);
  const dataOptions = parseOptions(
    DetectionDataSchema,
    flagInput(evaluateSpec.flags!, values).dataOptions ?? {},
    'options',
  );
  const ds = openDetectionDataset(data, dataOptions);
  const model = await loadDetector(positionals[0]!, values.device as string | undefined);
  let bar: Progress | undefined;
  const s = await evaluateDetector(model, ds, {
    split: split as 'train' | 'val' | 'test',
    out,
    score: num(values, 'score') ?? 0.5,
    onProgress: (done, total) => {
      bar ??= new Progress('evaluate', total, 'img');
      bar.update(done, done);
    },
  });
  bar?.end();
  process.stderr.write(
    s.lines.join('\n') +
      `\n${s.frames} frame(s), ${s.boxes} box(es) in ${formatDuration(s.seconds)} ` +
      `(${s.framesPerSecond.toFixed(2)} frames/s); wrote ${out}\n`,
  );
  if (values.json) process.stdout.write(JSON.stringify(s) + '\n');
  return 0;
});

export const predictSpec: CommandSpec = {
  name: 'predict',
  summary: 'Stenosis boxes of images from a fine-tuned detector: COCO results JSON and overlay PNGs.',
  usage: 'vasomim predict <model.safetensors> <images...> --task stenosis-det --out <dir> [--score 0.5]',
  description:
    'Writes <out>/results.json (COCO detection results; image ids 1.. in argument order), images.json\n' +
    '(the image list and categories) and <out>/<name>.png (the frame with boxes scored >= --score).',
  options: [
    TASK,
    { name: 'out', short: 'o', type: 'string', arg: '<dir>', help: 'output folder' },
    { name: 'score', type: 'string', arg: '<s>', help: 'score of a drawn box', default: '0.5' },
    { name: 'device', type: 'string', arg: '<dev>', help: 'cpu, cuda or cuda:N', default: 'cpu' },
    { name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' },
  ],
};

export const runPredict = command(predictSpec, async ({ values, positionals }) => {
  const [modelPath, ...images] = positionals;
  if (!modelPath || images.length === 0) throw new UsageError('give a model checkpoint and at least one image');
  const out = values.out as string | undefined;
  if (!out) throw new UsageError('--out <dir> is required');
  const model = await loadDetector(modelPath, values.device as string | undefined);
  const t0 = performance.now();
  const r = await predictDetector(model, images, out, num(values, 'score') ?? 0.5);
  process.stderr.write(
    `${r.images} image(s), ${r.detections} detection(s) in ${formatDuration((performance.now() - t0) / 1000)}; ` +
      `wrote ${out}\n`,
  );
  if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
  return 0;
});
