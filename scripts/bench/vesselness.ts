// Benchmark: our vesselness engine vs scikit-image, measured in the same run on the same frames.
//
//   npx tsx scripts/bench/vesselness.ts [--repeat 3] [--copies 4] [--python python3] [IMAGE...]
//
// 1. Per frame, single thread, best of --repeat: Sato sigma 1..4 and Frangi (scikit-image
//    defaults), ours in f64 and f32 vs scikit-image (float64). The peer's time is the filter call
//    only (scripts/peers/skimage_vessels.py); ours is the N-API call on decoded pixels.
// 2. Folder throughput with 2 workers: `prepareVesselMaps` (decode, Sato, map, PNG write) vs the
//    reference pipeline (the same peer script: imread, sato, post-processing, imsave) as two
//    processes, on --copies copies of the frames; the peer is timed from its loops' start after
//    its imports (no interpreter start-up) and writes only the maps, as we do.
// Default frames: the 512x512 angiograms in data/samples. Ends with one JSON line:
// {"ours_ms", "peer_ms", "ratio" (= ours/peer, lower is better), "speedup" (= peer/ours), ...}.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

import { prepareVesselMaps, readImage, vesselness } from '../../ts/src/index.js';
import { packageRoot } from '../../ts/src/native.js';

const { values, positionals } = parseArgs({
  options: {
    repeat: { type: 'string', default: '3' },
    copies: { type: 'string', default: '4' },
    python: { type: 'string', default: 'python3' },
  },
  allowPositionals: true,
});
const repeat = Number(values.repeat);
const copies = Number(values.copies);
const root = packageRoot();
const peerScript = join(root, 'scripts', 'peers', 'skimage_vessels.py');

function defaultFrames(): string[] {
  const dirs = ['cadica-samples', 'danilov-stenosis-samples', 'arcade-samples'].map((d) =>
    join(root, 'data', 'samples', d),
  );
  return dirs.flatMap((d) =>
    readdirSync(d)
      .filter((n) => n.endsWith('.png'))
      .map((n) => join(d, n)),
  );
}
const frames = positionals.length ? positionals : defaultFrames();

function peerTimes(filter: 'sato' | 'frangi', sigmas: string): Map<string, number> {
  const out = mkdtempSync(join(tmpdir(), 'vasomim-bench-'));
  const r = spawnSync(
    values.python!,
    [peerScript, ...frames, '--out', out, '--filter', filter, '--sigmas', sigmas, '--repeat', String(repeat)],
    {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    },
  );
  rmSync(out, { recursive: true, force: true });
  if (r.status !== 0)
    throw new Error(`scikit-image peer failed (pip install -r scripts/peers/requirements.txt):\n${r.stderr}`);
  const times = new Map<string, number>();
  for (const line of r.stdout.trim().split('\n')) {
    const j = JSON.parse(line) as { image?: string; ms?: number };
    if (j.image) times.set(j.image, j.ms!);
  }
  return times;
}

async function oursTimes(filter: 'sato' | 'frangi', precision: 'f32' | 'f64'): Promise<Map<string, number>> {
  const times = new Map<string, number>();
  for (const f of frames) {
    const img = await readImage(f);
    await vesselness(img, { filter, precision }); // warm-up
    let best = Infinity;
    for (let k = 0; k < repeat; k++) {
      const t = performance.now();
      await vesselness(img, { filter, precision });
      best = Math.min(best, performance.now() - t);
    }
    times.set(basename(f), best);
  }
  return times;
}

const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0) / m.size;

async function folderThroughput(): Promise<{ ours: number; peer: number; n: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'vasomim-bench-folder-'));
  const src = join(dir, 'frames');
  mkdirSync(src);
  let n = 0;
  for (let c = 0; c < copies; c++) for (const f of frames) (copyFileSync(f, join(src, `c${c}_${basename(f)}`)), n++);
  const inputs = readdirSync(src).map((x) => join(src, x));
  const t = performance.now();
  const s = await prepareVesselMaps(src, { jobs: 2, overwrite: true, out: join(dir, 'ours') });
  const oursSec = (performance.now() - t) / 1000;
  if (s.processed !== n) throw new Error(`only ${s.processed}/${n} maps written`);
  // The peer's two processes import their libraries first, report "ready" and start on one "go";
  // the time is from the earliest loop start to the latest loop end they report, so neither the
  // interpreter's start-up nor a raw-response .npy (which the reference pipeline does not write)
  // is charged to it.
  const half = Math.ceil(inputs.length / 2);
  const procs = [inputs.slice(0, half), inputs.slice(half)].map((part, i) =>
    spawn(
      values.python!,
      [peerScript, ...part, '--out', join(dir, `peer${i}`), '--repeat', '1', '--maps-only', '--wait-go'],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    ),
  );
  const outputs = procs.map((p) => {
    let text = '';
    p.stdout!.setEncoding('utf8').on('data', (d: string) => (text += d));
    const ready = new Promise<void>((res) => {
      const check = () => (text.startsWith('ready\n') ? res() : p.stdout!.once('data', check));
      check();
    });
    const done = new Promise<string>((res, rej) =>
      p.on('exit', (code) => (code === 0 ? res(text) : rej(new Error(`peer exited ${code}`)))),
    );
    return { ready, done };
  });
  await Promise.all(outputs.map((o) => o.ready));
  for (const p of procs) p.stdin!.end('go\n');
  const spans = (await Promise.all(outputs.map((o) => o.done))).map((text) => {
    const j = JSON.parse(text.trim().split('\n').pop()!) as { start: number; end: number };
    return j;
  });
  const peerSec = Math.max(...spans.map((j) => j.end)) - Math.min(...spans.map((j) => j.start));
  rmSync(dir, { recursive: true, force: true });
  return { ours: n / oursSec, peer: n / peerSec, n };
}

const machine = `${cpus()[0]?.model.trim()} (${cpus().length} cores visible)`;
console.log(`vesselness benchmark: ${frames.length} frames, best of ${repeat}, ${machine}`);
const peerSato = peerTimes('sato', '1,2,3,4');
const peerFrangi = peerTimes('frangi', '1,3,5,7,9');
const sato64 = await oursTimes('sato', 'f64');
const sato32 = await oursTimes('sato', 'f32');
const frangi64 = await oursTimes('frangi', 'f64');
const frangi32 = await oursTimes('frangi', 'f32');
const row = (name: string, peer: number, ours64: number, ours32: number) =>
  console.log(
    `${name.padEnd(22)} scikit-image ${peer.toFixed(1).padStart(7)} ms | ` +
      `ours f64 ${ours64.toFixed(2).padStart(6)} ms (${(peer / ours64).toFixed(1)}x) | ` +
      `ours f32 ${ours32.toFixed(2).padStart(6)} ms (${(peer / ours32).toFixed(1)}x)`,
  );
row('Sato sigma 1..4', sum(peerSato), sum(sato64), sum(sato32));
row('Frangi sigma 1,3,5,7,9', sum(peerFrangi), sum(frangi64), sum(frangi32));
const folder = await folderThroughput();
console.log(
  `folder, 2 workers, ${folder.n} frames: reference pipeline ${folder.peer.toFixed(1)} img/s | ` +
    `vasomim vessels ${folder.ours.toFixed(1)} img/s (${(folder.ours / folder.peer).toFixed(1)}x)`,
);
const corpus = 171_478;
console.log(
  `XA-170K (${corpus} frames), extrapolated from this folder rate on 2 cores: ` +
    `ours ${(corpus / folder.ours / 60).toFixed(0)} min, reference ${(corpus / folder.peer / 3600).toFixed(1)} h`,
);
const r = (x: number) => Math.round(x * 1000) / 1000;
console.log(
  JSON.stringify({
    bench: 'vesselness',
    frames: frames.length,
    ours_ms: r(sum(sato64)),
    peer_ms: r(sum(peerSato)),
    ratio: r(sum(sato64) / sum(peerSato)),
    speedup: r(sum(peerSato) / sum(sato64)),
    ours_f32_ms: r(sum(sato32)),
    speedup_f32: r(sum(peerSato) / sum(sato32)),
    frangi_ours_ms: r(sum(frangi64)),
    frangi_ours_f32_ms: r(sum(frangi32)),
    frangi_peer_ms: r(sum(peerFrangi)),
    frangi_speedup: r(sum(peerFrangi) / sum(frangi64)),
    frangi_speedup_f32: r(sum(peerFrangi) / sum(frangi32)),
    folder_ours_img_s: r(folder.ours),
    folder_peer_img_s: r(folder.peer),
    folder_ratio: r(folder.ours / folder.peer),
    machine,
    // 1-minute load average at the end: figures taken with other work on the cores are not headline figures.
    load_1min: r(loadavg()[0]!),
  }),
);
