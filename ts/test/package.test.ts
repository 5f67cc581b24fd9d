// The prebuilt npm package (napi-rs layout, docs/RELEASE.md): `scripts/pack.mjs` packs this
// platform's package (npm/<platform>/, carrying the addon) and the main package (no .node, the
// platform packages as optionalDependencies, the Rust sources for the fallback build); both
// tarballs install into an empty folder with no cargo on PATH, and `npx vasomim --help` and 5
// steps of the demo run from there. Skips, saying why, when the addon of this checkout is not built.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

// @ts-expect-error -- plain ES modules of the package scripts, without type declarations
import { hasPrebuiltAddon } from '../../scripts/install.mjs';
// @ts-expect-error -- plain ES modules of the package scripts, without type declarations
import { abiOfTarget, pack, platformAbi } from '../../scripts/pack.mjs';
import { ROOT, tempDir } from './helpers.js';

const ABI = platformAbi() as string;
const addon = join(ROOT, 'bindings', `vasomim.${ABI}.node`);
const platformDir = join(ROOT, 'npm', ABI);
const skip = !existsSync(addon)
  ? `bindings/vasomim.${ABI}.node is not built (npm run build)`
  : !existsSync(join(platformDir, 'package.json'))
    ? `no platform package npm/${ABI} for this machine`
    : '';
if (skip) console.warn(`package: the packed-tarball test is skipped: ${skip}`);

const tmp = tempDir('vasomim-package-');
afterAll(() => tmp.cleanup());

/** tar's listing and one file of a tarball. */
const tarList = (tgz: string) => spawnSync('tar', ['tzf', tgz], { encoding: 'utf8' }).stdout.trim().split('\n');
const tarJson = (tgz: string, path: string) =>
  JSON.parse(spawnSync('tar', ['xzf', tgz, '-O', path], { encoding: 'utf8' }).stdout) as Record<string, unknown>;

describe('platform names', () => {
  it('maps the release targets to napi-rs platform names, and finds this checkout addon', () => {
    expect(
      ['x86_64-unknown-linux-gnu', 'aarch64-unknown-linux-gnu', 'aarch64-apple-darwin', 'x86_64-pc-windows-msvc'].map(
        abiOfTarget,
      ),
    ).toEqual(['linux-x64-gnu', 'linux-arm64-gnu', 'darwin-arm64', 'win32-x64-msvc']);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    for (const t of pkg.napi.targets as string[])
      expect(existsSync(join(ROOT, 'npm', abiOfTarget(t), 'package.json')), t).toBe(true);
    expect(hasPrebuiltAddon(tmp.path)).toBe(false);
  });
});

describe.skipIf(!!skip)('packed tarballs', () => {
  it('install with no cargo on PATH; npx vasomim --help and 5 demo steps run on the prebuilt addon', () => {
    const out = join(tmp.path, 'tarballs');
    const t = pack(out) as { main: string; platform: string };
    // The platform package: os/cpu/libc, main = the addon, and only the addon.
    const plat = tarJson(t.platform, 'package/package.json');
    expect(plat).toMatchObject({ name: `vasomim-${ABI}`, main: `vasomim.${ABI}.node`, os: ['linux'], cpu: ['x64'] });
    expect(tarList(t.platform).filter((f) => f.endsWith('.node'))).toEqual([`package/vasomim.${ABI}.node`]);
    // The main package: no addon, the platform packages as optional dependencies, the fallback's sources.
    const main = tarJson(t.main, 'package/package.json');
    expect(main.optionalDependencies).toMatchObject({ [`vasomim-${ABI}`]: main.version });
    const files = tarList(t.main);
    expect(files.filter((f) => f.endsWith('.node'))).toEqual([]);
    for (const f of [
      'package/scripts/install.mjs',
      'package/Cargo.lock',
      'package/bindings/src/lib.rs',
      // The fallback build's patched candle-core ([patch.crates-io] in Cargo.toml) and build script.
      'package/vendor/candle-core/src/backprop.rs',
      'package/crates/core/build.rs',
      'package/ts/dist/cli/main.js',
    ])
      expect(files, f).toContain(f);

    // An empty folder, PATH without cargo or rustc.
    const app = join(tmp.path, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
    const PATH = (process.env.PATH ?? '')
      .split(delimiter)
      .filter((d) => d && !existsSync(join(d, 'cargo')) && !existsSync(join(d, 'rustc')))
      .join(delimiter);
    const env = { ...process.env, PATH, CARGO_TARGET_DIR: join(tmp.path, 'no-target') };
    const run = (cmd: string, args: string[]) =>
      spawnSync(cmd, args, { cwd: app, env, encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 });
    expect(run('sh', ['-c', 'command -v cargo']).status).not.toBe(0);
    const inst = run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', t.main, t.platform]);
    expect(inst.status, inst.stderr).toBe(0);
    const installed = join(app, 'node_modules');
    expect(existsSync(join(installed, `vasomim-${ABI}`, `vasomim.${ABI}.node`))).toBe(true);
    expect(readdirSync(join(installed, 'vasomim', 'bindings')).filter((f) => f.endsWith('.node'))).toEqual([]);

    const help = run('npx', ['vasomim', '--help']);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('usage: vasomim <command>');
    const demo = run('npx', [
      'vasomim',
      'pretrain',
      '--max-steps',
      '5',
      '--workers',
      '2',
      '--runs',
      'runs',
      '--name',
      'demo',
    ]);
    expect(demo.status, demo.stderr).toBe(0);
    expect(demo.stdout).toContain('stopped after --max-steps at step 5');
    const steps = readFileSync(join(app, 'runs', 'demo', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: number; event?: string; loss: number })
      .filter((r) => r.event === undefined);
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3, 4, 5]);
    expect(steps.every((s) => Number.isFinite(s.loss))).toBe(true);
    // Nothing was compiled: no cargo target folder anywhere.
    expect(existsSync(env.CARGO_TARGET_DIR) || existsSync(join(installed, 'vasomim', 'target'))).toBe(false);
  }, 180_000);
});
