#!/usr/bin/env node
// Fails when a TypeScript / JavaScript source line under ts/ or scripts/ is longer than 120 characters.
// Prettier wraps code at 120 but leaves long strings and comments alone; this catches those.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const MAX = 120;
const ROOTS = ['ts', 'scripts'];
const SKIP = new Set(['node_modules', 'dist', 'golden']);

function* files(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (/\.(ts|mts|mjs|js)$/.test(e.name)) yield p;
  }
}

const long = [];
for (const root of ROOTS)
  for (const f of files(root))
    readFileSync(f, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if ([...line].length > MAX) long.push(`${f}:${i + 1}: ${[...line].length} characters`);
      });
if (long.length) {
  console.error(`lines over ${MAX} characters:\n${long.join('\n')}`);
  process.exit(1);
}
