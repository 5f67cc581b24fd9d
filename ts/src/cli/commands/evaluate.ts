// `vasomim evaluate --baseline sato|frangi --data <dataset> --out <dir>`: segmentation metrics of a
// predictor on a dataset's test split, the threshold chosen on its train split.
import { formatZodError } from '../../config/vessels.js';
import { BaselineSchema, EvaluateSchema, type EvaluateInput } from '../../config/segmentation.js';
import { evaluateSegmentation, type EvalProgress } from '../../eval/evaluate.js';
import { formatStat, METRIC_NAMES } from '../../eval/metrics.js';
import { vesselnessPredictor, type Predictor } from '../../eval/predictor.js';
import { segmentationPredictorFromFile } from '../../model/segmentation.js';
import { defined, helpText, num, numList, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { formatDuration, Progress } from '../progress.js';

export const spec: CommandSpec = {
  name: 'evaluate',
  summary: 'Segmentation metrics (DSC, clDice, IoU, precision, recall, AUC) of a predictor on a dataset\'s test split.',
  usage: 'vasomim evaluate <model.safetensors> | --baseline <sato|frangi>  --data <dataset> --out <dir> [options]',
  description:
    'Predictors: a fine-tuned model (`vasomim finetune` checkpoint: each image resized to the model\'s\n' +
    'input, predicted, probabilities resized back bilinearly; threshold: the model\'s, 0.5, or --threshold;\n' +
    'its class count must match the dataset\'s), or --baseline sato|frangi, the unsupervised vesselness\n' +
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
    { name: 'baseline', short: 'b', type: 'string', arg: '<filter>', help: 'sato | frangi | frangi1998: the unsupervised vesselness baseline' },
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset folder or manifest (.csv/.jsonl)' },
    { name: 'out', short: 'o', type: 'string', arg: '<dir>', help: 'output folder' },
    { name: 'format', type: 'string', arg: '<f>', help: 'auto | paired | arcade | manifest', default: 'auto' },
    { name: 'task', type: 'string', arg: '<t>', help: 'ARCADE task: vessel | segment | stenosis', default: 'vessel (stenosis for a stenosis/ folder)' },
    { name: 'classes', type: 'string', arg: '<n>', help: 'expected number of foreground classes (ARCADE segment, label masks)' },
    { name: 'masks', type: 'string', arg: '<m>', help: 'mask files: binary (>= --mask-threshold) or labels (value = class)', default: 'binary' },
    { name: 'mask-threshold', type: 'string', arg: '<v>', help: 'grey level from which a binary mask pixel is foreground', default: '128' },
    { name: 'train-dir', type: 'string', arg: '<dir>', help: 'paired folders: the train split folder, relative to the root' },
    { name: 'val-dir', type: 'string', arg: '<dir>', help: 'paired folders: the val split folder' },
    { name: 'test-dir', type: 'string', arg: '<dir>', help: 'paired folders: the test split folder' },
    { name: 'tune-split', type: 'string', arg: '<s>', help: 'split the threshold is chosen on', default: 'train' },
    { name: 'split', type: 'string', arg: '<s>', help: 'split the metrics are reported on', default: 'test' },
    { name: 'threshold', short: 't', type: 'string', arg: '<t>', help: 'fixed threshold in [0, 1] (no tuning)' },
    { name: 'steps', type: 'string', arg: '<n>', help: 'tuning grid k/n, k = 1..n-1', default: '100' },
    { name: 'sigmas', type: 'string', arg: '<list>', help: 'baseline scales in pixels, comma-separated', default: 'sato 1,2,3,4; frangi 1,3,5,7,9' },
    { name: 'white-ridges', type: 'boolean', help: 'baseline: vessels brighter than the background' },
    { name: 'border', type: 'string', arg: '<px>', help: 'baseline: zero this frame of the response', default: '0' },
    { name: 'examples', type: 'string', arg: '<k>', help: 'worst and best cases in the contact sheet (each; 0 = none)', default: '4' },
    { name: 'panel', type: 'string', arg: '<px>', help: 'side of one contact-sheet panel', default: '192' },
    { name: 'limit', type: 'string', arg: '<n>', help: 'only the first n images of each split' },
    { name: 'jobs', short: 'j', type: 'string', arg: '<n>', help: 'images in flight, 0 = all cores', default: '0' },
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'options as JSON (Node API fields plus "dataset": path and "baseline": {filter, border}); flags override' },
    { name: 'json', type: 'boolean', help: 'print summary.json as one line on stdout' },
  ],
  examples: [
    'vasomim evaluate runs/finetune/xca/checkpoints/best.safetensors --data data/samples/fercer-xca80 --out runs/eval/vit',
    'vasomim evaluate --baseline sato --data data/samples/fercer-xca80 --out runs/eval/sato',
    'vasomim evaluate -b frangi -d /data/arcade --task vessel --out runs/eval/arcade-frangi',
    'vasomim evaluate -b sato -d pairs.csv --threshold 0.2 --out runs/eval/fixed',
  ],
};

const choice = (values: Record<string, unknown>, name: string, allowed: readonly string[]) => {
  const v = values[name] as string | undefined;
  if (v !== undefined && !allowed.includes(v)) throw new UsageError(`--${name}: ${JSON.stringify(v)} (expected ${allowed.join(', ')})`);
  return v;
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`expected at most one model, got ${positionals.length}`);
  const fromFile = values.config ? readConfigFile(values.config as string) : {};
  const { baseline: baselineFile, ...jobFile } = fromFile as { baseline?: Record<string, unknown> } & Record<string, unknown>;
  const filterName = choice(values, 'baseline', ['sato', 'frangi', 'frangi1998']);
  const modelPath = positionals[0];
  if (modelPath && (filterName || baselineFile)) throw new UsageError('give either a model or --baseline, not both');
  if (!modelPath && !filterName && !baselineFile) throw new UsageError('say what to evaluate: a model checkpoint or --baseline sato|frangi');
  const dataFile = (jobFile.data ?? {}) as Record<string, unknown>;
  const splitDirs = defined({ train: values['train-dir'] as string | undefined, val: values['val-dir'] as string | undefined, test: values['test-dir'] as string | undefined });
  const dataPath = (values.data as string | undefined) ?? (typeof jobFile.dataset === 'string' ? jobFile.dataset : undefined);
  delete jobFile.dataset;
  if (!dataPath) throw new UsageError('--data <dataset folder or manifest> is required');
  const job = {
    ...jobFile,
    ...defined({
      out: values.out as string | undefined,
      tuneSplit: choice(values, 'tune-split', ['train', 'val', 'test']),
      evalSplit: choice(values, 'split', ['train', 'val', 'test']),
      threshold: num(values, 'threshold'),
      steps: num(values, 'steps'),
      examples: num(values, 'examples'),
      panel: num(values, 'panel'),
      limit: num(values, 'limit'),
      jobs: num(values, 'jobs'),
    }),
    data: {
      ...dataFile,
      ...defined({
        format: choice(values, 'format', ['auto', 'paired', 'arcade', 'manifest']),
        task: choice(values, 'task', ['vessel', 'segment', 'stenosis']),
        classes: num(values, 'classes'),
        masks: choice(values, 'masks', ['binary', 'labels']),
        maskThreshold: num(values, 'mask-threshold'),
      }),
      ...(Object.keys(splitDirs).length ? { splits: { ...((dataFile.splits as object) ?? {}), ...splitDirs } } : {}),
    },
  } as EvaluateInput;
  if (!job.out) throw new UsageError('--out <dir> is required');
  const parsed = EvaluateSchema.safeParse(job);
  if (!parsed.success) throw new UsageError(`invalid options:\n${formatZodError(parsed.error)}`);
  const bFilter = (baselineFile?.filter ?? {}) as Record<string, unknown>;
  const baseline = {
    ...(baselineFile ?? {}),
    ...defined({ border: num(values, 'border') }),
    filter: {
      ...bFilter,
      ...defined({ filter: filterName, sigmas: numList(values, 'sigmas'), whiteRidges: values['white-ridges'] === true ? true : undefined }),
    },
  };
  let predictor: Predictor;
  if (modelPath) {
    const m = await segmentationPredictorFromFile(modelPath);
    predictor = m.predictor;
    // models: the threshold saved with them (0.5), no tuning on the data
    if (parsed.data.threshold === undefined && m.model.config.numClasses === 1) parsed.data.threshold = m.meta.threshold;
    process.stderr.write(
      `model ${modelPath}: ${m.meta.task}, ${m.model.config.numClasses === 1 ? 'binary' : `${m.model.config.numClasses} classes`}, ${m.model.config.encoder.imgSize}² input${m.meta.epoch !== undefined ? `, epoch ${m.meta.epoch}` : ''}\n`,
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
    const s = await evaluateSegmentation(dataPath, predictor, parsed.data, onProgress);
    progress?.end();
    progress = undefined;
    const t = s.threshold;
    const lines = [
      `${predictor.name} on ${s.dataset.root} (${s.dataset.format}${s.dataset.task ? `, ${s.dataset.task}` : ''}), ${s.split} split, ${s.images} images`,
      t ? (t.how === 'tuned' ? `threshold ${t.value} (best mean DSC ${t.meanDsc!.toFixed(4)} on ${t.images} ${t.split} images)` : `threshold ${t.value} (fixed)`) : 'labels: argmax',
      ...METRIC_NAMES.map((k) => `  ${k.padEnd(9)} ${formatStat(s.metrics[k])}${s.metrics[k].n < s.images ? ` (${s.metrics[k].n} images)` : ''}`),
      `${s.timing.imagesPerSecond.toFixed(1)} img/s (${formatDuration(s.timing.seconds)}, ${s.timing.jobs} in flight); wrote ${Object.values(s.files).filter(Boolean).join(', ')}`,
    ];
    process.stderr.write(lines.join('\n') + '\n');
    if (values.json) process.stdout.write(JSON.stringify(s) + '\n');
    return 0;
  } finally {
    progress?.end();
    predictor.close?.();
  }
}
