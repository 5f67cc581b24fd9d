// CLI flags generated from the zod schemas: kinds, names, the defaults shown (from the schema, so
// they cannot disagree with it), the mapping back onto the schema's shape, and errors naming flags.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';

import { parseCommand, UsageError, type CommandSpec } from '../src/cli/args.js';
import { flagInput, schemaFlags } from '../src/cli/schema-flags.js';
import { FinetuneSchema } from '../src/config/finetune.js';
import { DeviceSchema } from '../src/config/model.js';
import { VesselsJobSchema } from '../src/config/vessels.js';

const Schema = z
  .object({
    epochs: z.number().int().min(1).default(40).describe('epochs'),
    lr: z.number().positive().optional().describe('peak lr'),
    task: z.enum(['a', 'b']).default('a').describe('task'),
    chans: z
      .union([z.literal(1), z.literal(3)])
      .default(3)
      .describe('channels'),
    scale: z.tuple([z.number(), z.number()]).default([0.5, 1]).describe('crop area'),
    overwrite: z.boolean().default(false).describe('overwrite'),
    inner: z
      .object({
        imgSize: z.number().int().default(224).describe('side'),
        globs: z.array(z.string()).default(['*_gt.*']).describe('globs'),
      })
      .prefault({}),
    free: z.record(z.string(), z.unknown()).default({}),
  })
  .strict()
  .transform((o) => o);

const spec: CommandSpec = {
  name: 't',
  summary: 't',
  usage: 't',
  options: [],
  flags: schemaFlags(Schema, { short: { epochs: 'e' } }),
};

describe('schemaFlags', () => {
  it('derives names, kinds, placeholders and defaults from the schema', () => {
    const rows = spec.flags!.map((f) => [f.name, f.kind, f.arg, f.default ?? null]);
    expect(rows).toEqual([
      ['epochs', 'integer', '<n>', '40'],
      ['lr', 'number', '<x>', null],
      ['task', 'enum', '<a|b>', 'a'],
      ['chans', 'enum', '<1|3>', '3'],
      ['scale', 'numbers', '<lo,hi>', '0.5,1'],
      ['overwrite', 'boolean', '[true|false]', 'false'],
      ['img-size', 'integer', '<n>', '224'],
      ['globs', 'strings', '<a,...>', '*_gt.*'],
    ]);
    expect(spec.flags!.find((f) => f.name === 'img-size')!.path).toEqual(['inner', 'imgSize']);
  });

  it('takes a placeholder from .meta() where the type says too little (the device)', () => {
    const device = schemaFlags(z.object({ device: DeviceSchema }))[0]!;
    expect([device.arg, device.default]).toEqual(['<cpu|cuda|cuda:N>', 'cpu']);
    const s = z.object({ out: z.string().meta({ description: 'folder', placeholder: '<dir>' }) });
    expect(schemaFlags(s)[0]!.arg).toBe('<dir>');
  });

  it('maps flags back onto the schema shape, booleans alone or with a value', () => {
    const { values } = parseCommand(spec, [
      '-e',
      '3',
      '--task',
      'b',
      '--chans',
      '1',
      '--scale',
      '0.2,1',
      '--overwrite',
      '--img-size',
      '64',
      '--globs',
      'a,b',
    ]);
    const input = flagInput(spec.flags!, values);
    expect(input).toEqual({
      epochs: 3,
      task: 'b',
      chans: 1,
      scale: [0.2, 1],
      overwrite: true,
      inner: { imgSize: 64, globs: ['a', 'b'] },
    });
    expect(Schema.parse(input)).toMatchObject({ epochs: 3, chans: 1, free: {} });
    expect(flagInput(spec.flags!, parseCommand(spec, ['--overwrite', 'false']).values)).toEqual({ overwrite: false });
  });

  it('names the flag of a bad value', () => {
    const bad =
      (...argv: string[]) =>
      () =>
        flagInput(spec.flags!, parseCommand(spec, argv).values);
    expect(bad('--epochs', 'many')).toThrow(new UsageError('--epochs: "many" is not a number'));
    expect(bad('--task', 'c')).toThrow('--task: unknown task "c" (expected a, b)');
    expect(bad('--chans', '2')).toThrow('--chans: unknown chans "2" (expected 1, 3)');
    expect(bad('--scale', '0.2')).toThrow('--scale: "0.2" must be 2 comma-separated numbers');
    expect(bad('--overwrite=yes')).toThrow('--overwrite: "yes" must be true or false');
  });

  it('shows the defaults the schemas apply', () => {
    const ft = Object.fromEntries(
      schemaFlags(FinetuneSchema, {
        nested: { model: z.object({ preset: z.string() }) },
        omit: ['dataOptions.task'],
      }).map((f) => [f.name, f.default]),
    );
    const parsed = FinetuneSchema.parse({ data: 'x' });
    expect([ft['epochs'], ft['head-scale'], ft['scale'], ft['runs'], ft['preset']]).toEqual([
      String(parsed.epochs),
      String(parsed.headScale),
      parsed.scale.join(','),
      parsed.runs,
      'tiny', // from the schema's default `model: { preset: 'tiny' }`
    ]);
    const job = VesselsJobSchema.parse({});
    const v = Object.fromEntries(schemaFlags(VesselsJobSchema).map((f) => [f.name, f.default]));
    expect([v['border'], v['percentile'], v['cast'], v['exclude'], v['filter']]).toEqual([
      String(job.map.border),
      String(job.map.percentile),
      job.map.cast,
      job.exclude.join(','),
      job.filter.filter,
    ]);
  });
});
