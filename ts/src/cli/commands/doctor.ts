// `vasomim doctor`: what this installation can run on — the build's device features, the CUDA
// driver and devices found, and why CUDA is unavailable when it is.
import { availableParallelism } from 'node:os';

import { native, packageVersion } from '../../native.js';
import { command, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'doctor',
  summary: 'What this installation can run on: build features, CUDA driver and devices.',
  usage: 'vasomim doctor [--json]',
  description:
    "Prints the version, the platform, the native build's device features (cuda, nccl), the CUDA\n" +
    'driver version and devices it finds, and why --device cuda is unavailable when it is. A CPU\n' +
    'build always says so and names the document that tells how to build with CUDA (docs/CUDA.md).',
  options: [{ name: 'json', type: 'boolean', help: 'one JSON object instead of lines' }],
  examples: ['vasomim doctor', 'vasomim doctor --json'],
};

export const run = command(spec, async ({ values }) => {
  const r = native.deviceReport();
  const version = packageVersion();
  const info = {
    version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpuThreads: availableParallelism(),
    ...r,
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(info) + '\n');
    return 0;
  }
  const driver = r.cudaDriver === null ? 'none' : `${Math.floor(r.cudaDriver / 1000)}.${(r.cudaDriver % 1000) / 10}`;
  const lines = [
    `vasomim ${version} (node ${process.version}, ${info.platform}, ${info.cpuThreads} CPU threads)`,
    `build features: ${r.features.length ? r.features.join(', ') : 'cpu only'}`,
    `CUDA driver:    ${driver}`,
    `CUDA devices:   ${r.cudaDevices.length ? r.cudaDevices.join('; ') : 'none'}`,
    r.cudaUnavailable === null ? '--device cuda: available' : `--device cuda: unavailable: ${r.cudaUnavailable}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
});
