// Mean ± std over seeds of the fine-tuning table runs: reads <dir>/<init>-s<seed>/eval/summary.json
// (written by `vasomim evaluate`) and the run's metrics.jsonl; prints a markdown table and one JSON line.
// usage: node scripts/table/summarise.mjs [runs/table]
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? 'runs/table';
const stat = (v) => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  return { mean: m, std: Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / v.length), n: v.length };
};
const f = (s, d = 4) => `${s.mean.toFixed(d)} ± ${s.std.toFixed(d)}`;
const groups = new Map();
for (const name of readdirSync(dir).sort()) {
  const m = /^(.+)-s(\d+)$/.exec(name);
  const sum = join(dir, name, 'eval', 'summary.json');
  if (!m || !existsSync(sum)) continue;
  const s = JSON.parse(readFileSync(sum, 'utf8'));
  const lines = readFileSync(join(dir, name, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const epochs = lines.filter((l) => l.event === 'epoch');
  const best = epochs.reduce((a, b) => (b.valDsc > a.valDsc ? b : a));
  const trainSeconds = epochs.reduce((a, e) => a + e.seconds, 0);
  const g = groups.get(m[1]) ?? [];
  g.push({
    seed: Number(m[2]),
    dsc: s.metrics.dsc.mean,
    cldice: s.metrics.cldice.mean,
    auc: s.metrics.auc.mean,
    ips: s.timing.imagesPerSecond,
    valDsc: best.valDsc,
    bestEpoch: best.epoch,
    epochs: epochs.length,
    trainSeconds,
  });
  groups.set(m[1], g);
}
const out = {};
console.log(
  '| init | seeds | test DSC | test clDice | test AUC | val DSC (best epoch) | train min / run | evaluate img/s |',
);
console.log('|---|---|---|---|---|---|---|---|');
for (const [init, g] of groups) {
  const r = {
    seeds: g.map((x) => x.seed),
    perSeedDsc: g.map((x) => +x.dsc.toFixed(4)),
    dsc: stat(g.map((x) => x.dsc)),
    cldice: stat(g.map((x) => x.cldice)),
    auc: stat(g.map((x) => x.auc)),
    valDsc: stat(g.map((x) => x.valDsc)),
    bestEpochs: g.map((x) => x.bestEpoch),
    trainMinutes: stat(g.map((x) => x.trainSeconds / 60)),
    evalImgPerSec: stat(g.map((x) => x.ips)),
  };
  out[init] = r;
  console.log(
    `| ${init} | ${r.seeds.join(', ')} | ${f(r.dsc)} | ${f(r.cldice)} | ${f(r.auc)} | ` +
      `${f(r.valDsc)} (${r.bestEpochs.join(', ')}) | ${f(r.trainMinutes, 1)} | ${f(r.evalImgPerSec, 2)} |`,
  );
}
console.log(JSON.stringify(out));
