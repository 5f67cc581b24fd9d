// npm `install` hook.
// - A published package (no ts/src; ts/dist ships): nothing to do when the addon is there, i.e.
//   the platform package npm installed as an optional dependency (vasomim-<platform>, napi-rs
//   layout, docs/RELEASE.md) or a bindings/*.node; else the fallback: build the addon from the
//   Rust sources the package carries (needs cargo and a C compiler).
// - A source checkout: build the native addon and the TypeScript unless the build is newer than
//   every source it is built from (so `npx vasomim` in a checkout, which runs this hook again,
//   starts at once). Needs cargo.
import { execFileSync, execSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { platformAbi } from './pack.mjs';

/** What each build reads, and what it writes (paths relative to the package root). */
const BUILDS = [
  {
    sources: ['Cargo.toml', 'Cargo.lock', 'rustfmt.toml', 'crates', 'vendor', 'bindings/src', 'bindings/Cargo.toml'],
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

/** Whether the package under `root` has an addon to load: a bindings/*.node or this platform's package. */
export function hasPrebuiltAddon(root = '.') {
  if (existsSync(join(root, 'bindings')) && readdirSync(join(root, 'bindings')).some((f) => f.endsWith('.node')))
    return true;
  try {
    createRequire(resolve(root, 'package.json')).resolve(`vasomim-${platformAbi()}`);
    return true;
  } catch {
    return false;
  }
}

function needCargo(why) {
  if (spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error(`vasomim: ${why} needs Rust (cargo >= 1.89) and a C compiler: https://rustup.rs`);
    process.exit(1);
  }
}

/** The fallback of a published package: cargo builds the addon; it is copied where bindings/index.js looks. */
function buildAddonFromSource() {
  needCargo(`there is no prebuilt addon for ${platformAbi()}; building it from source`);
  execFileSync('cargo', ['build', '--release', '-p', 'vasomim-bindings'], { stdio: 'inherit' });
  const lib = { win32: 'vasomim_bindings.dll', darwin: 'libvasomim_bindings.dylib' }[process.platform];
  const target = process.env.CARGO_TARGET_DIR ?? 'target';
  copyFileSync(
    join(target, 'release', lib ?? 'libvasomim_bindings.so'),
    join('bindings', `vasomim.${platformAbi()}.node`),
  );
}

function main() {
  if (!existsSync('ts/src')) {
    if (!hasPrebuiltAddon()) buildAddonFromSource();
    return;
  }
  const hasBuild =
    existsSync('bindings/index.js') &&
    readdirSync('bindings').some((f) => f.endsWith('.node')) &&
    existsSync('ts/dist/cli/main.js');
  if (hasBuild && buildIsCurrent()) {
    console.error('vasomim: the native addon and ts/dist are newer than their sources; not rebuilding');
    return;
  }
  needCargo('building from source');
  execSync('npm run build', { stdio: 'inherit' });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
