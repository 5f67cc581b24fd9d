// npm `install` hook: build the native addon and the TypeScript unless this is a published
// package that already ships them (bindings/*.node + ts/dist), or a source checkout whose build is
// newer than every source it is built from (so `npx vasomim` in a checkout, which runs this hook
// again, starts at once). A source checkout needs cargo.
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** What each build reads, and what it writes (paths relative to the package root). */
const BUILDS = [
  {
    sources: ['Cargo.toml', 'Cargo.lock', 'rustfmt.toml', 'crates', 'bindings/src', 'bindings/Cargo.toml'],
    outputs: ['bindings/index.js', 'bindings/index.d.ts', '*.node'],
  },
  {
    sources: ['ts/src', 'tsconfig.json', 'tsconfig.build.json', 'bindings/index.d.ts'],
    outputs: ['ts/dist/cli/main.js'],
  },
];
const SKIP = new Set(['target', 'node_modules', 'dist', '.git']);

/** Modification times (ms) of `path` and, for a folder, of every file below it. */
function mtimes(path) {
  if (!existsSync(path)) return [];
  const st = statSync(path);
  if (!st.isDirectory()) return [st.mtimeMs];
  return readdirSync(path, { withFileTypes: true })
    .filter((e) => !SKIP.has(e.name))
    .flatMap((e) => mtimes(join(path, e.name)));
}

/** Whether every build output under `root` exists and is newer than all of its sources. */
export function buildIsCurrent(root = '.') {
  const nodes = () => readdirSync(join(root, 'bindings')).filter((f) => f.endsWith('.node'));
  return BUILDS.every(({ sources, outputs }) => {
    // a missing output counts as infinitely old
    const out = outputs.flatMap((o) => {
      const paths = o === '*.node' ? nodes().map((f) => join(root, 'bindings', f)) : [join(root, o)];
      return paths.length && paths.every((p) => existsSync(p)) ? paths.flatMap(mtimes) : [-Infinity];
    });
    return Math.min(...out) >= Math.max(-Infinity, ...sources.flatMap((s) => mtimes(join(root, s))));
  });
}

function main() {
  const hasBuild =
    existsSync('bindings/index.js') &&
    readdirSync('bindings').some((f) => f.endsWith('.node')) &&
    existsSync('ts/dist/cli/main.js');
  if (hasBuild && !existsSync('Cargo.toml')) return; // a published package: ships its build
  if (hasBuild && buildIsCurrent()) {
    console.error('vasomim: the native addon and ts/dist are newer than their sources; not rebuilding');
    return;
  }
  if (spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error('vasomim: building from source needs Rust (cargo >= 1.89) and a C compiler: https://rustup.rs');
    process.exit(1);
  }
  execSync('npm run build', { stdio: 'inherit' });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
