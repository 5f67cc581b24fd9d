// A small declarative layer over node:util parseArgs: a command lists the options that are not
// config fields (positionals' companions, --config, --resume, ...) and takes the flags of its
// config fields from its zod schemas (./schema-flags.ts); both lists drive parsing and `--help`.
// Here: the specs, parseCommand and helpText, `command` (a command's `run`: parse, `--help`, body),
// the checks the commands share (num, subcommand, noPositionals) and readConfigFile.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import type { FlagSpec } from './schema-flags.js';

export interface OptionSpec {
  /** Flag name without dashes (kebab-case). */
  name: string;
  short?: string;
  type: 'string' | 'boolean';
  /** Placeholder shown in help, e.g. `<n>`. */
  arg?: string;
  help: string;
  /** Default shown in help (the schema owns the real default). */
  default?: string;
}

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string;
  description?: string;
  options: OptionSpec[];
  /** Flags of config fields, generated from the command's schema(s). */
  flags?: FlagSpec[];
  /** Heading of the generated flags in `--help`. */
  flagsTitle?: string;
  examples?: string[];
}

/** Thrown for bad command lines; the CLI prints it with the command's usage and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

const HELP: OptionSpec = { name: 'help', short: 'h', type: 'boolean', help: 'show this help' };

export function parseCommand(spec: CommandSpec, argv: string[]) {
  const all = [...spec.options, ...(spec.flags ?? []), HELP];
  const options = Object.fromEntries(
    all.map((o) => [o.name, { type: o.type, ...(o.short ? { short: o.short } : {}) }]),
  );
  // A boolean config flag may stand alone (`--overwrite`) or take true|false (`--norm-pix-loss false`).
  const booleans = new Set(
    (spec.flags ?? [])
      .filter((f) => f.kind === 'boolean')
      .flatMap((f) => [`--${f.name}`, ...(f.short ? [`-${f.short}`] : [])]),
  );
  const args = argv.map((a, i) =>
    booleans.has(a) && !['true', 'false'].includes(argv[i + 1] ?? '') ? `${a}=true` : a,
  );
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/^TypeError \[\w+\]: /, ''));
  }
}

/** A parsed command line: flag values by name, and the positionals. */
export type ParsedCommand = ReturnType<typeof parseCommand>;

/**
 * A command's `run`: parses the command line against `spec`; `--help` prints the help and exits 0,
 * anything else goes to `body`, whose number is the exit code.
 */
export function command(
  spec: CommandSpec,
  body: (args: ParsedCommand) => Promise<number>,
): (argv: string[]) => Promise<number> {
  return async (argv) => {
    const args = parseCommand(spec, argv);
    if (args.values.help) {
      process.stdout.write(helpText(spec));
      return 0;
    }
    return body(args);
  };
}

export function helpText(spec: CommandSpec): string {
  const row = (o: OptionSpec) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${o.name}${o.arg ? ` ${o.arg}` : ''}`;
    return [flag, o.help + (o.default !== undefined ? ` (default: ${o.default})` : '')] as const;
  };
  const sections: [string, (readonly [string, string])[]][] = [
    ['options:', [...spec.options.map(row), ['-h, --help', 'show this help'] as const]],
    ...(spec.flags?.length
      ? [[spec.flagsTitle ?? 'options:', spec.flags.map(row)] as [string, (readonly [string, string])[]]]
      : []),
  ];
  const width = Math.min(34, Math.max(...sections.flatMap(([, rows]) => rows.map((r) => r[0].length))) + 2);
  const lines = [`usage: ${spec.usage}`, '', spec.summary];
  if (spec.description) lines.push('', spec.description);
  for (const [title, rows] of sections) {
    lines.push('', title);
    for (const [flag, help] of rows) {
      const pad = flag.length >= width ? `\n${' '.repeat(width + 2)}` : ' '.repeat(width - flag.length);
      lines.push(`  ${flag}${pad}${help}`);
    }
  }
  if (spec.examples?.length) lines.push('', 'examples:', ...spec.examples.map((e) => `  ${e}`));
  return lines.join('\n') + '\n';
}

/** A number flag, or a UsageError naming it. */
export function num(values: Record<string, unknown>, name: string): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n))
    throw new UsageError(`--${name}: ${JSON.stringify(v)} is not a number`);
  return n;
}

/** The first positional must be `known`, the one `kind` (subcommand, benchmark) there is. */
export function subcommand(positionals: string[], kind: string, known: string): void {
  const sub = positionals[0];
  if (sub !== known)
    throw new UsageError(
      sub === undefined ? `give a ${kind}: ${known}` : `unknown ${kind} ${JSON.stringify(sub)} (known: ${known})`,
    );
}

/** Commands whose dataset is a flag take no positionals (a path there is a misplaced dataset). */
export function noPositionals(positionals: string[]): void {
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} (the dataset goes after --data)`);
}

/** Read a JSON config file; errors name the file. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(
      `--config ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`,
    );
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('expected a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new UsageError(`--config ${path}: not valid JSON config (${(e as Error).message})`);
  }
}
