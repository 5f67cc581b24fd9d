// Command-line flags generated from a zod schema, so a config field is declared once: its type,
// description (`.describe()`) and default live in the schema, and this module derives the flag
// name, the placeholder, the help line, the default shown and the mapping of a flag's text back
// onto the schema's shape. A default the schema cannot state (one computed from other fields) is
// written as `.meta({ description, defaultText })` on the field.
//
//   schemaFlags(schema, options)  the flags of a schema's fields (nested objects flattened)
//   flagInput(flags, values)      parsed flag values -> a partial input object of the schema(s)
//   configLayers(spec, values)    the --config file's fields and the flags', in the order they apply
//   fieldInfo(schema)             the kind, choices, description and default of one field
//   withFlagNames(message, ...)   a config error's `path: problem` lines with the flag that set the field
import type { z } from 'zod';

import { readConfigFile, UsageError, type CommandSpec, type OptionSpec } from './args.js';

/** How a flag's text becomes a field value. */
export type FlagKind = 'number' | 'integer' | 'boolean' | 'enum' | 'string' | 'numbers' | 'strings';

export interface FlagSpec extends OptionSpec {
  /** Path of the field in the command's input object, e.g. `['map', 'border']`. */
  path: string[];
  kind: FlagKind;
  /** Allowed values of an enum (numeric literals as text). */
  choices?: string[];
  /** Exact length of a number list (tuples). */
  length?: number;
}

export interface SchemaFlagOptions {
  /** Where the schema's fields sit in the command's input object (default: at the top). */
  at?: string[];
  /** Dotted field paths (of the schema) that get no flag; a path leaves out everything below it. */
  omit?: string[];
  /** Flag names for fields whose key does not read well on a command line (dotted path -> name). */
  names?: Record<string, string>;
  /** One-letter aliases (dotted path -> letter). */
  short?: Record<string, string>;
  /** Schemas of fields the run schema keeps as free records (e.g. `model`), walked like objects. */
  nested?: Record<string, z.ZodType>;
  /** Help of a field whose role in this command differs from the schema's description. */
  help?: Record<string, string>;
  /** Presets: shown as the default of a field the schema leaves to them. */
  presets?: Record<string, Record<string, unknown>>;
}

type Def = {
  type: string;
  innerType?: z.ZodType;
  in?: z.ZodType;
  defaultValue?: unknown;
  shape?: Record<string, z.ZodType>;
  options?: z.ZodType[];
  entries?: Record<string, string | number>;
  values?: unknown[];
  element?: z.ZodType;
  items?: z.ZodType[];
  checks?: { _zod: { def: { check?: string; format?: string } } }[];
};

const defOf = (s: z.ZodType): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

export interface FieldInfo {
  /** The schema under optional/default/nullable/transform wrappers. */
  base: z.ZodType;
  kind: FlagKind | 'object' | 'other';
  description?: string;
  /** The schema's default (`.default()` or `.prefault()`), if any. */
  default?: unknown;
  /** `.meta({ defaultText })`: a default in words (e.g. one computed from other fields). */
  defaultText?: string;
  /** `.meta({ placeholder })`: the flag's argument in help when its type says too little (`<cpu|cuda|cuda:N>`). */
  placeholder?: string;
  choices?: string[];
  length?: number;
}

/** Look through the wrappers of a field: its kind, choices, description and default. */
export function fieldInfo(schema: z.ZodType): FieldInfo {
  let s = schema;
  let description: string | undefined;
  let dflt: unknown;
  let defaultText: string | undefined;
  let shownArg: string | undefined;
  for (;;) {
    description ??= s.description;
    const { defaultText: text, placeholder: arg } = s.meta() ?? {};
    if (typeof text === 'string') defaultText ??= text;
    if (typeof arg === 'string') shownArg ??= arg;
    const d = defOf(s);
    if ((d.type === 'default' || d.type === 'prefault') && dflt === undefined) dflt = d.defaultValue;
    if (d.innerType && ['default', 'prefault', 'optional', 'nullable', 'readonly'].includes(d.type)) s = d.innerType;
    else if (d.type === 'pipe' && d.in) s = d.in;
    else break;
  }
  const d = defOf(s);
  const info: FieldInfo = { base: s, kind: 'other', description, default: dflt, defaultText, placeholder: shownArg };
  const literals = (o: z.ZodType[]) =>
    o
      .map((x) => defOf(x))
      .filter((x) => x.type === 'literal')
      .flatMap((x) => x.values ?? []);
  if (d.type === 'object') info.kind = 'object';
  else if (d.type === 'number')
    info.kind = d.checks?.some((c) => c._zod.def.check === 'number_format' && c._zod.def.format?.includes('int'))
      ? 'integer'
      : 'number';
  else if (d.type === 'boolean') info.kind = 'boolean';
  else if (d.type === 'string') info.kind = 'string';
  else if (d.type === 'enum')
    Object.assign(info, { kind: 'enum', choices: Object.values(d.entries ?? {}).map(String) });
  else if (d.type === 'union' && d.options && literals(d.options).length === d.options.length)
    Object.assign(info, { kind: 'enum', choices: literals(d.options).map(String) });
  else if (d.type === 'array' && d.element) {
    const k = fieldInfo(d.element).kind;
    if (k === 'number' || k === 'integer') info.kind = 'numbers';
    else if (k === 'string') info.kind = 'strings';
  } else if (d.type === 'tuple' && d.items?.every((i) => ['number', 'integer'].includes(fieldInfo(i).kind)))
    Object.assign(info, { kind: 'numbers', length: d.items.length });
  return info;
}

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function showValue(v: unknown): string | undefined {
  if (v === undefined || v === null || (typeof v === 'object' && !Array.isArray(v))) return undefined;
  return Array.isArray(v) ? v.join(',') : String(v);
}

function placeholder(kind: FlagKind, choices?: string[], length?: number): string | undefined {
  if (kind === 'boolean') return '[true|false]';
  if (kind === 'enum') return `<${choices!.join('|')}>`;
  if (kind === 'numbers') return length === 2 ? '<lo,hi>' : '<x,...>';
  return { integer: '<n>', number: '<x>', string: '<text>', strings: '<a,...>' }[kind];
}

/** The flags of `schema`'s fields, one per leaf; nested objects are flattened to their keys. */
export function schemaFlags(schema: z.ZodType, options: SchemaFlagOptions = {}): FlagSpec[] {
  const out: FlagSpec[] = [];
  // `inherited`: the field's value in its parent's default (e.g. finetune's `model: { preset: 'tiny' }`).
  const walk = (s: z.ZodType, rel: string[], inherited: unknown) => {
    const info = fieldInfo(s);
    const dotted = rel.join('.');
    if (options.omit?.some((o) => dotted === o || dotted.startsWith(o + '.'))) return;
    const nested = options.nested?.[dotted];
    if (info.kind === 'object' || nested) {
      const shape = defOf(nested ? fieldInfo(nested).base : info.base).shape ?? {};
      const dflt = (inherited ?? info.default) as Record<string, unknown> | undefined;
      for (const [k, v] of Object.entries(shape)) walk(v, [...rel, k], dflt?.[k]);
      return;
    }
    if (info.kind === 'other') return;
    const key = rel.at(-1)!;
    // A preset sits above the schema's defaults, so its values are the defaults a user sees.
    const presetValues = Object.entries(options.presets ?? {})
      .map(
        ([name, p]) =>
          [name, showValue(rel.reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], p))] as const,
      )
      .filter(([, v]) => v !== undefined);
    const presetCount = Object.keys(options.presets ?? {}).length;
    const same = presetValues.length === presetCount && presetValues.every(([, v]) => v === presetValues[0]![1]);
    const shown =
      same && presetCount
        ? presetValues[0]![1]
        : presetValues.length
          ? presetValues.map(([n, v]) => `${n} ${v}`).join(', ')
          : (showValue(inherited ?? info.default) ?? info.defaultText);
    out.push({
      name: options.names?.[dotted] ?? kebab(key),
      ...(options.short?.[dotted] ? { short: options.short[dotted] } : {}),
      type: 'string',
      arg: info.placeholder ?? placeholder(info.kind, info.choices, info.length),
      help: options.help?.[dotted] ?? info.description ?? key,
      ...(shown !== undefined ? { default: shown } : {}),
      path: [...(options.at ?? []), ...rel],
      kind: info.kind,
      ...(info.choices ? { choices: info.choices } : {}),
      ...(info.length ? { length: info.length } : {}),
    });
  };
  const shape = defOf(fieldInfo(schema).base).shape ?? {};
  for (const [k, v] of Object.entries(shape)) walk(v, [k], undefined);
  const seen = new Set<string>();
  for (const f of out) {
    if (seen.has(f.name)) throw new Error(`two config fields map to --${f.name}; name one of them in \`names\``);
    seen.add(f.name);
  }
  return out;
}

/** The value of one flag's text, or a UsageError naming the flag. */
function flagValue(f: FlagSpec, text: string): unknown {
  const bad = (why: string) => new UsageError(`--${f.name}: ${JSON.stringify(text)} ${why}`);
  switch (f.kind) {
    case 'number':
    case 'integer': {
      const n = Number(text);
      if (text.trim() === '' || !Number.isFinite(n)) throw bad('is not a number');
      return n;
    }
    case 'boolean':
      if (text !== 'true' && text !== 'false') throw bad('must be true or false');
      return text === 'true';
    case 'enum': {
      if (!f.choices!.includes(text))
        throw new UsageError(
          `--${f.name}: unknown ${f.path.at(-1)} ${JSON.stringify(text)} (expected ${f.choices!.join(', ')})`,
        );
      const n = Number(text);
      return f.choices!.every((c) => Number.isFinite(Number(c))) ? n : text;
    }
    case 'numbers': {
      const parts = text.split(',').map((s) => s.trim());
      const out = parts.map(Number);
      if (parts.some((p) => p === '') || out.some((n) => !Number.isFinite(n)))
        throw bad('is not a comma-separated list of numbers');
      if (f.length !== undefined && out.length !== f.length) throw bad(`must be ${f.length} comma-separated numbers`);
      return out;
    }
    case 'strings':
      return text
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
    default:
      return text;
  }
}

/**
 * Parsed flag values as a partial input object: each given flag's value at its field's path
 * (absent flags are absent, so they do not override a config file).
 */
export function flagInput(flags: FlagSpec[], values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of flags) {
    const text = values[f.name];
    if (typeof text !== 'string') continue;
    let o = out;
    for (const k of f.path.slice(0, -1)) o = (o[k] ??= {}) as Record<string, unknown>;
    o[f.path.at(-1)!] = flagValue(f, text);
  }
  return out;
}

/**
 * The two layers a command line puts over a job's defaults (or preset): the fields of the
 * `--config` file (none without one), then those of the flags, which override it.
 */
export function configLayers(
  spec: CommandSpec,
  values: Record<string, unknown>,
): [Record<string, unknown>, Record<string, unknown>] {
  const file = values.config ? readConfigFile(values.config as string) : {};
  return [file, flagInput(spec.flags ?? [], values)];
}

/**
 * A config error (`path: problem` per line, as `formatZodError` writes it) with the flag that
 * set each field, so a bad flag value is named as typed: `map.percentile: ... (--percentile 150)`.
 */
export function withFlagNames(message: string, flags: FlagSpec[], values: Record<string, unknown>): string {
  return message
    .split('\n')
    .map((line) => {
      const path = /^([\w.]+): /.exec(line)?.[1];
      const f = path && flags.find((f) => f.path.join('.') === path && typeof values[f.name] === 'string');
      return f ? `${line} (--${f.name} ${String(values[f.name])})` : line;
    })
    .join('\n');
}
