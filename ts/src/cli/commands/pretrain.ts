// `vasomim pretrain`: VasoMIM pre-training. With no dataset, the `demo` preset on the bundled
// angiograms; `--preset vasomim-vit-b --data <XA-170K>` is the paper's recipe.
import { resolve } from 'node:path';

import { ARCHITECTURE_FIELDS, ModelConfigSchema } from '../../config/model.js';
import { LaunchSchema, PRESETS, PretrainSchema, RUN_PRESETS } from '../../config/pretrain.js';
import { parseOptions } from '../../config/vessels.js';
import { batchPlan, groupFromEnv, launchLocal, rankPlan, watchLauncher } from '../../train/distributed.js';
import { checkWorld, planPretrain, pretrain, type StepRecord } from '../../train/pretrain.js';
import { command, noPositionals, type CommandSpec } from '../args.js';
import { presetSummary, reportStop, runLongJob } from '../long-job.js';
import { configLayers, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'pretrain',
  summary: 'VasoMIM pre-training of a ViT (vessel-guided masking, consistency loss); resumable.',
  usage: 'vasomim pretrain [--data <dataset>] [--preset demo|vasomim-vit-b] [--config <file.json>] [options]',
  description:
    'Without --data the `demo` preset runs on the angiograms bundled with the package (ViT-Ti, CPU,\n' +
    'a few minutes; vessel maps are computed into the run folder). A run folder holds config.json,\n' +
    'metrics.jsonl (one JSON object per step), checkpoints/ (last.safetensors + every N epochs:\n' +
    'weights with timm names, AdamW moments, loop position), samples/ (input | masked |\n' +
    'reconstruction | + visible | vessel map | guidance grids; mask-frequency.png heat map + .npy\n' +
    'counts), and at the end encoder.safetensors (timm layout) and report.html (see vasomim report);\n' +
    '--tensorboard adds TensorBoard event files. Values come from the preset, then --config, then flags.\n' +
    'Ctrl-C writes a checkpoint and exits (code 130); --resume continues exactly where it stopped.\n' +
    'Data parallel (docs/DISTRIBUTED.md): --gpus 0,1,2,3 starts one process per GPU on this node; under\n' +
    'torchrun or Slurm every process joins by itself (RANK/WORLD_SIZE/... or SLURM_PROCID/...). --nproc N\n' +
    'runs N CPU processes over a TCP test collective: a test double for machines without GPUs, not a\n' +
    'product path. batchSize stays the effective batch (all ranks); --resume may change the world size.\n' +
    `Presets: ${RUN_PRESETS.map((p) => `${p} (${presetSummary(PRESETS[p])})`).join(', ')}.`,
  options: [
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'JSON config (any field of the run config; flags override it)',
    },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from its last checkpoint' },
    {
      name: 'dry-run',
      type: 'boolean',
      help: "print each rank's command (with --gpus / --nproc) or this rank's place in the group; train nothing",
    },
  ],
  flags: schemaFlags(PretrainSchema, {
    nested: { model: ModelConfigSchema },
    omit: ['augment', ...ARCHITECTURE_FIELDS.map((k) => `model.${k}`)],
    names: { 'model.preset': 'model' },
    short: { data: 'd', batchSize: 'b', workers: 'j' },
    presets: PRESETS,
  }),
  flagsTitle: 'run config (the preset, then --config, then these flags):',
  examples: [
    'vasomim pretrain                                   # the demo on the bundled angiograms',
    'vasomim pretrain --preset vasomim-vit-b --data /data/XA-170K --segmentor unext.safetensors',
    'vasomim pretrain --resume runs/20261128-101500',
    'vasomim pretrain --data xa --masking random --eta 1 --cons-weight 0   # MAE baseline (ablation)',
    'vasomim pretrain --preset vasomim-vit-b --data /data/XA-170K --segmentor unext.safetensors --gpus 0,1,2,3',
    'torchrun --nproc-per-node 8 $(which vasomim) pretrain --preset vasomim-vit-b --data ... --device cuda',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  noPositionals(positionals);
  // --gpus / --nproc: this process only launches the ranks (each one runs this command again,
  // inside the group, where these flags are ignored).
  const [file, flags] = configLayers(spec, values);
  const { gpus, nproc } = parseOptions(LaunchSchema, { ...pick(file), ...pick(flags) }, 'launch');
  const group = groupFromEnv();
  const dryRun = values['dry-run'] === true;
  if ((gpus !== undefined || nproc !== undefined) && !group) {
    const ids = gpus?.split(',').map(Number);
    const world = ids?.length ?? nproc!;
    // The run's own checks once here, before any rank starts.
    const cfg = planPretrain([file, flags], values.resume as string | undefined).config;
    checkWorld(cfg, world);
    const args = process.argv.slice(2).filter((a) => a !== '--dry-run');
    if (dryRun) process.stdout.write(batchPlan(cfg, world) + '\n');
    return launchLocal({ world, gpus: ids, args: ids ? [...args, '--device', 'cuda'] : args, dryRun });
  }
  if (dryRun) {
    const cfg = planPretrain([file, flags], values.resume as string | undefined).config;
    checkWorld(cfg, group?.worldSize ?? 1);
    process.stdout.write(rankPlan(cfg, group) + '\n');
    return 0;
  }
  const unwatch = group ? watchLauncher() : () => {};
  const r = await runLongJob('pretrain', 'finishing the current step and writing a checkpoint', (hooks, bar) =>
    pretrain(configLayers(spec, values), {
      ...hooks,
      resume: values.resume as string | undefined,
      onStep: (s: StepRecord, t) => {
        const cons = s.lossCons === null ? '' : ` cons ${s.lossCons.toFixed(4)}`;
        const share = s.vesselShare === null ? '' : ` vessel ${(100 * s.vesselShare).toFixed(0)}%`;
        bar(t.images, 'img').update(
          t.imagesDone,
          t.imagesHere,
          `epoch ${s.epoch} loss ${s.loss.toFixed(4)}${cons}${share}`,
        );
      },
    }),
  ).finally(unwatch);
  const where = resolve(r.run);
  if (r.status === 'interrupted') {
    reportStop('pretrain', `at step ${r.step}`, r.checkpoint, r.run);
    return 130;
  }
  if (r.status === 'stopped') {
    process.stdout.write(
      `stopped after --max-steps at step ${r.step}; resume with: vasomim pretrain --resume ${r.run}\nrun folder: ` +
        `${where}\n`,
    );
    return 0;
  }
  process.stdout.write(
    `done: ${r.step} steps, ${r.epoch} epochs\nrun folder: ${where}\nencoder (timm): ${r.encoder}\n`,
  );
  return 0;
});

/** The launch fields of a config layer. */
const pick = (l: Record<string, unknown>) => ({ gpus: l.gpus, nproc: l.nproc });
