// The npm install hook skips the source build when the addon and ts/dist are newer than every
// source they are built from (`npx vasomim` in a checkout runs the hook again).
import { mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

// @ts-expect-error -- a plain ES module of the package scripts, without type declarations
import { buildIsCurrent } from '../../scripts/install.mjs';
import { tempDir } from './helpers.js';

const tmp = tempDir('vasomim-install-');
afterAll(() => tmp.cleanup());

const files = {
  'Cargo.toml': 100,
  'crates/core/src/lib.rs': 100,
  'bindings/src/lib.rs': 100,
  'ts/src/index.ts': 100,
  'bindings/index.js': 200,
  'bindings/index.d.ts': 200,
  'bindings/vasomim.linux-x64-gnu.node': 200,
  'ts/dist/cli/main.js': 300,
};

function tree(name: string, times: Record<string, number>): string {
  const root = join(tmp.path, name);
  for (const [f, t] of Object.entries(times)) {
    mkdirSync(dirname(join(root, f)), { recursive: true });
    writeFileSync(join(root, f), f);
    utimesSync(join(root, f), t, t);
  }
  return root;
}

describe('install hook', () => {
  it('is current only when every output exists and is newer than every source it is built from', () => {
    expect(buildIsCurrent(tree('current', files))).toBe(true);
    expect(buildIsCurrent(tree('rust-edited', { ...files, 'crates/core/src/lib.rs': 250 }))).toBe(false);
    expect(buildIsCurrent(tree('ts-edited', { ...files, 'ts/src/index.ts': 400 }))).toBe(false);
    const { 'ts/dist/cli/main.js': _dist, ...noDist } = files;
    expect(buildIsCurrent(tree('no-dist', noDist))).toBe(false);
    const { 'bindings/vasomim.linux-x64-gnu.node': _node, ...noAddon } = files;
    expect(buildIsCurrent(tree('no-addon', noAddon))).toBe(false);
  });
});
