// `npm pack` of a release, the napi-rs way: the platform package of this machine
// (npm/<platform>/, carrying the addon built by `npm run build`) and the main package, with the
// platform packages as optionalDependencies (what `napi pre-publish` writes into package.json when a
// release is published; the checkout's package.json leaves them out so `npm ci` never asks the
// registry for packages that are not published yet). The main package carries no .node: npm installs
// the platform package that matches os/cpu/libc, and bindings/index.js loads it.
//
// usage: node scripts/pack.mjs <out folder>      prints the two tarball paths (JSON)
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** napi-rs's name of this machine's platform: linux-x64-gnu, darwin-arm64, win32-x64-msvc, ... */
export function platformAbi() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    const glibc = process.report?.getReport().header.glibcVersionRuntime;
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
  }
  return platform === 'win32' ? `win32-${arch}-msvc` : `${platform}-${arch}`;
}

/** `npm pack` of `dir` into `out`; returns the tarball's path. */
function npmPack(dir, out) {
  const json = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', out], {
    cwd: dir,
    encoding: 'utf8',
  });
  return join(out, JSON.parse(json)[0].filename);
}

export function pack(out) {
  mkdirSync(out, { recursive: true });
  const abi = platformAbi();
  const platformDir = join(ROOT, 'npm', abi);
  const node = `vasomim.${abi}.node`;
  if (!existsSync(join(platformDir, 'package.json')))
    throw new Error(`no platform package npm/${abi} (see docs/RELEASE.md)`);
  if (!existsSync(join(ROOT, 'bindings', node))) throw new Error(`bindings/${node} is not built: run npm run build`);
  const main = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const platformPkg = JSON.parse(readFileSync(join(platformDir, 'package.json'), 'utf8'));
  if (platformPkg.version !== main.version)
    throw new Error(`npm/${abi}/package.json has version ${platformPkg.version}, package.json ${main.version}`);
  copyFileSync(join(ROOT, 'bindings', node), join(platformDir, node));
  const platformTgz = npmPack(platformDir, out);

  // The main package: the files `npm pack` would take from the checkout, less the addon, in a
  // staging folder whose package.json names the platform packages.
  const listing = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' }),
  );
  const stage = mkdtempSync(join(tmpdir(), 'vasomim-pack-'));
  try {
    for (const { path } of listing[0].files) {
      if (path.endsWith('.node') || path === 'package.json') continue;
      mkdirSync(dirname(join(stage, path)), { recursive: true });
      cpSync(join(ROOT, path), join(stage, path));
    }
    const targets = main.napi.targets.map((t) => abiOfTarget(t));
    main.optionalDependencies = Object.fromEntries(targets.map((a) => [`${main.name}-${a}`, main.version]));
    writeFileSync(join(stage, 'package.json'), JSON.stringify(main, null, 2) + '\n');
    return { main: npmPack(stage, out), platform: platformTgz };
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

/** napi-rs's platform name of a Rust target triple (the ones package.json's napi.targets lists). */
export function abiOfTarget(triple) {
  const [arch, , os, env] = triple.split('-');
  const cpu = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm' }[arch] ?? arch;
  if (os === 'linux') return `linux-${cpu}-${env?.startsWith('musl') ? 'musl' : 'gnu'}`;
  if (os === 'darwin') return `darwin-${cpu}`;
  if (os === 'windows') return `win32-${cpu}-${env}`;
  throw new Error(`unknown target ${triple}`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (!process.argv[2]) {
    console.error('usage: node scripts/pack.mjs <out folder>');
    process.exit(2);
  }
  console.log(JSON.stringify(pack(resolve(process.argv[2]))));
}
