// Mean ± sample standard deviation over seeds of the fine-tuning table runs: reads
// <dir>/<init>-s<seed>/metrics.jsonl (best validation DSC) and, unless --validation-only, the test
// split's <dir>/<init>-s<seed>/eval/summary.json (written by `vasomim evaluate`). Prints a markdown
// table and one JSON line; --markdown FILE / --json FILE also write them.
// usage: node scripts/table/summarise.mjs [runs/table] [--validation-only] [--markdown f.md] [--json f.json]
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  options: {
    'validation-only': { type: 'boolean', default: false },
    markdown: { type: 'string' },
    json: { type: 'string' },
  },
  allowPositionals: true,
});
const dir = positionals[0] ?? 'runs/table';
const valOnly = values['validation-only'];
/** Mean and sample standard deviation (n − 1; 0 for one seed). */
const stat = (v) => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  const ss = v.reduce((a, b) => a + (b - m) ** 2, 0);
  return { mean: m, std: v.length > 1 ? Math.sqrt(ss / (v.length - 1)) : 0, n: v.length };
};
const f = (s, d = 4) => `${s.mean.toFixed(d)} ± ${s.std.toFixed(d)}`;
const groups = new Map();
for (const name of readdirSync(dir).sort()) {
  const m = /^(.+)-s(\d+)$/.exec(name);
  const metrics = join(dir, name, 'metrics.jsonl');
  const sum = join(dir, name, 'eval', 'summary.json');
  if (!m || !existsSync(metrics) || (!valOnly && !existsSync(sum))) continue;
  const lines = readFileSync(metrics, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const epochs = lines.filter((l) => l.event === 'epoch');
  if (epochs.length === 0) continue;
  const best = epochs.reduce((a, b) => (b.valDsc > a.valDsc ? b : a));
  const run = {
    seed: Number(m[2]),
    valDsc: best.valDsc,
    bestEpoch: best.epoch,
    epochs: epochs.length,
    trainSeconds: epochs.reduce((a, e) => a + e.seconds, 0),
  };
  if (!valOnly) {
    const s = JSON.parse(readFileSync(sum, 'utf8'));
    Object.assign(run, {
      dsc: s.metrics.dsc.mean,
      cldice: s.metrics.cldice.mean,
      auc: s.metrics.auc.mean,
      ips: s.timing.imagesPerSecond,
    });
  }
  const g = groups.get(m[1]) ?? [];
  g.push(run);
  groups.set(m[1], g);
}
const out = {};
const rows = valOnly
  ? ['| init | seeds | val DSC (best epoch) | train min / run |', '|---|---|---|---|']
  : [
      '| init | seeds | test DSC | test clDice | test AUC | val DSC (best epoch) | train min / run | evaluate img/s |',
      '|---|---|---|---|---|---|---|---|',
    ];
for (const [init, g] of groups) {
  const r = {
    seeds: g.map((x) => x.seed),
    valDsc: stat(g.map((x) => x.valDsc)),
    bestEpochs: g.map((x) => x.bestEpoch),
    trainMinutes: stat(g.map((x) => x.trainSeconds / 60)),
  };
  const val = `${f(r.valDsc)} (${r.bestEpochs.join(', ')})`;
  if (valOnly) rows.push(`| ${init} | ${r.seeds.join(', ')} | ${val} | ${f(r.trainMinutes, 1)} |`);
  else {
    Object.assign(r, {
      perSeedDsc: g.map((x) => +x.dsc.toFixed(4)),
      dsc: stat(g.map((x) => x.dsc)),
      cldice: stat(g.map((x) => x.cldice)),
      auc: stat(g.map((x) => x.auc)),
      evalImgPerSec: stat(g.map((x) => x.ips)),
    });
    rows.push(
      `| ${init} | ${r.seeds.join(', ')} | ${f(r.dsc)} | ${f(r.cldice)} | ${f(r.auc)} | ${val} | ` +
        `${f(r.trainMinutes, 1)} | ${f(r.evalImgPerSec, 2)} |`,
    );
  }
  out[init] = r;
}
const markdown = rows.join('\n') + '\n';
process.stdout.write(markdown);
console.log(JSON.stringify(out));
if (values.markdown) writeFileSync(values.markdown, markdown);
if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 1) + '\n');
