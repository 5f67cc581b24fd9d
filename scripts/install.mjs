// npm `install` hook: build the native addon and the TypeScript unless this is a published
// package that already ships them (bindings/*.node + ts/dist). A source checkout needs cargo.
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';

const prebuilt =
  existsSync('bindings/index.js') &&
  readdirSync('bindings').some((f) => f.endsWith('.node')) &&
  existsSync('ts/dist/cli/main.js') &&
  !existsSync('Cargo.toml');
if (prebuilt) process.exit(0);

if (spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error('vasomim: building from source needs Rust (cargo >= 1.89) and a C compiler: https://rustup.rs');
  process.exit(1);
}
execSync('npm run build', { stdio: 'inherit' });
