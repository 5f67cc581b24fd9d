// `vasomim evaluate --baseline sato|frangi --data <dataset> --out <dir>`: segmentation metrics of a
// predictor on a dataset's test split, the threshold chosen on its train split.
import { mergeConfig } from '../../config/pretrain.js';
import { FilterSchema, formatZodError, parseOptions } from '../../config/vessels.js';
import { BaselineSchema, EvaluateSchema, type EvaluateInput } from '../../config/segmentation.js';
import { evaluateSegmentation, type EvalProgress } from '../../eval/evaluate.js';
import { formatStat, METRIC_NAMES } from '../../eval/metrics.js';
import { vesselnessPredictor, type Predictor } from '../../eval/predictor.js';
import { segmentationPredictorFromFile } from '../../model/segmentation.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { formatDuration, Progress } from '../progress.js';
import { configLayers, fieldInfo, schemaFlags } from '../schema-flags.js';
import { isDetectionTask, runEvaluate, evaluateSpec } from '../detection.js';

/** The vesselness filters `--baseline` takes. */
const BASELINES = fieldInfo(FilterSchema.def.in.shape.filter).choices!;

export const spec: CommandSpec = {
  name: 'evaluate',
  summary: "Segmentation metrics (DSC, clDice, IoU, precision, recall, AUC) of a predictor on a dataset's test split.",
  usage: 'vasomim evaluate <model.safetensors> | --baseline <sato|frangi>  --data <dataset> --out <dir> [options]',
  description:
    "Predictors: a fine-tuned model (`vasomim finetune` checkpoint: each image resized to the model's\n" +
    "input, predicted, probabilities resized back bilinearly; threshold: the model's, 0.5, or --threshold;\n" +
    "its class count must match the dataset's), or --baseline sato|frangi, the unsupervised vesselness\n" +
    'response divided by its per-image maximum, whose threshold is the one of the grid k/steps\n' +
    '(k = 1..steps-1) with the highest mean per-image DSC on the train split (ties: the smallest), then\n' +
    'applied to the test split. --threshold fixes it instead.\n\n' +
    'Datasets (explicit splits): paired folders — <root>/<split>/ with x.png + x_gt.png (or _mask), or\n' +
    '<root>/<split>/{images,masks}/ with the same stems; split folders are found by name (train|training,\n' +
    'val|validation, test|testing, e.g. Angios_40_training) or named with --train-dir/--val-dir/--test-dir;\n' +
    'ARCADE — <root>/{syntax,stenosis}/{train,val,test}/{images/,annotations/<split>.json} (COCO polygons;\n' +
    '--task vessel|segment|stenosis); a CSV (image,mask,split columns) or JSONL manifest.\n\n' +
    'Writes <out>/per-image.csv, summary.json (mean ± std of each metric), thresholds.csv (train mean\n' +
    'DSC per threshold) and contact-sheet.png (worst and best test images: image | truth | prediction;\n' +
    'white = true positive, red = false positive, blue = false negative). Exit 0 done, 2 bad input.',
  options: [
    {
      name: 'baseline',
      short: 'b',
      type: 'string',
      arg: '<filter>',
      help: `${BASELINES.join(' | ')}: the unsupervised vesselness baseline`,
    },
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset folder or manifest (.csv/.jsonl)' },
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'options as JSON (Node API fields plus "dataset": path and "baseline": {filter, border}); flags override',
    },
    { name: 'json', type: 'boolean', help: 'print summary.json as one line on stdout' },
  ],
  flags: [
    ...schemaFlags(EvaluateSchema, {
      names: {
        evalSplit: 'split',
        'data.splits.train': 'train-dir',
        'data.splits.val': 'val-dir',
        'data.splits.test': 'test-dir',
      },
      short: { out: 'o', threshold: 't', jobs: 'j' },
    }),
    ...schemaFlags(BaselineSchema, { at: ['baseline'], omit: ['filter.filter'] }),
  ],
  flagsTitle: 'evaluation options (flags override --config):',
  examples: [
    'vasomim evaluate runs/finetune/xca/checkpoints/best.safetensors --data data/samples/fercer-xca80 --out ' +
      'runs/eval/vit',
    'vasomim evaluate --baseline sato --data data/samples/fercer-xca80 --out runs/eval/sato',
    'vasomim evaluate -b frangi -d /data/arcade --task vessel --out runs/eval/arcade-frangi',
    'vasomim evaluate -b sato -d pairs.csv --threshold 0.2 --out runs/eval/fixed',
  ],
};

const runSegmentation = command(spec, async ({ values, positionals }) => {
  if (positionals.length > 1) throw new UsageError(`expected at most one model, got ${positionals.length}`);
  const [file, flags] = configLayers(spec, values);
  const { baseline: baselineFile, dataset, ...jobFile } = file;
  const { baseline: baselineFlags, ...jobFlags } = flags;
  const filterName = values.baseline as string | undefined;
  if (filterName !== undefined && !BASELINES.includes(filterName))
    throw new UsageError(`--baseline: ${JSON.stringify(filterName)} (expected ${BASELINES.join(', ')})`);
  const modelPath = positionals[0];
  if (modelPath && (filterName || baselineFile)) throw new UsageError('give either a model or --baseline, not both');
  if (!modelPath && !filterName && !baselineFile)
    throw new UsageError('say what to evaluate: a model checkpoint or --baseline sato|frangi');
  const dataPath = (values.data as string | undefined) ?? (typeof dataset === 'string' ? dataset : undefined);
  if (!dataPath) throw new UsageError('--data <dataset folder or manifest> is required');
  const job = mergeConfig(jobFile, jobFlags) as EvaluateInput;
  if (!job.out) throw new UsageError('--out <dir> is required');
  const parsed = parseOptions(EvaluateSchema, job, 'options');
  const baseline = [baselineFile, baselineFlags, filterName ? { filter: { filter: filterName } } : {}].reduce<
    Record<string, unknown>
  >((m, l) => mergeConfig(m, (l ?? {}) as Record<string, unknown>), {});
  let predictor: Predictor;
  if (modelPath) {
    const m = await segmentationPredictorFromFile(modelPath, parsed.device, parsed.precision);
    predictor = m.predictor;
    // models: the threshold saved with them (0.5), no tuning on the data
    if (parsed.threshold === undefined && m.model.config.numClasses === 1) parsed.threshold = m.meta.threshold;
    process.stderr.write(
      `model ${modelPath}: ${m.meta.task}, ` +
        `${m.model.config.numClasses === 1 ? 'binary' : `${m.model.config.numClasses} classes`}, ` +
        `${m.model.config.encoder.imgSize}² input${m.meta.epoch !== undefined ? `, epoch ${m.meta.epoch}` : ''}\n`,
    );
  } else {
    const b = BaselineSchema.safeParse(baseline);
    if (!b.success) throw new UsageError(`invalid baseline options:\n${formatZodError(b.error, 'baseline')}`);
    predictor = vesselnessPredictor(b.data);
  }

  let progress: Progress | undefined;
  let phase = '';
  const onProgress = (p: EvalProgress) => {
    if (p.phase !== phase) {
      progress?.end();
      phase = p.phase;
      progress = new Progress(p.phase === 'tune' ? `tune (${p.split})` : `evaluate (${p.split})`, p.total);
    }
    progress!.update(p.done, p.done);
  };
  try {
    const s = await evaluateSegmentation(dataPath, predictor, parsed, onProgress);
    progress?.end();
    progress = undefined;
    const t = s.threshold;
    const lines = [
      `${predictor.name} on ${s.dataset.root} (${s.dataset.format}${s.dataset.task ? `, ${s.dataset.task}` : ''}), ` +
        `${s.split} split, ${s.images} images`,
      t
        ? t.how === 'tuned'
          ? `threshold ${t.value} (best mean DSC ${t.meanDsc!.toFixed(4)} on ${t.images} ${t.split} images)`
          : `threshold ${t.value} (fixed)`
        : 'labels: argmax',
      ...METRIC_NAMES.map(
        (k) =>
          `  ${k.padEnd(9)} ` +
          `${formatStat(s.metrics[k])}${s.metrics[k].n < s.images ? ` (${s.metrics[k].n} images)` : ''}`,
      ),
      `${s.timing.imagesPerSecond.toFixed(1)} img/s (${formatDuration(s.timing.seconds)}, ${s.timing.jobs} in ` +
        `flight); wrote ${Object.values(s.files).filter(Boolean).join(', ')}`,
    ];
    process.stderr.write(lines.join('\n') + '\n');
    if (values.json) process.stdout.write(JSON.stringify(s) + '\n');
    return 0;
  } finally {
    progress?.end();
    predictor.close?.();
  }
});

/** `--task stenosis-det` goes to the detector's command (../detection.ts), anything else to segmentation. */
export const run = (argv: string[]) => (isDetectionTask(argv) ? runEvaluate(argv) : runSegmentation(argv));

/** The spec of a command line (the detector's for `--task stenosis-det`). */
export const specFor = (argv: string[]) => (isDetectionTask(argv) ? evaluateSpec : spec);
