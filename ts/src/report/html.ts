// The report page: one self-contained HTML file. uPlot's minified build and its CSS are inlined
// (read from the installed `uplot` package when the report is written), the chart data is a JSON
// block, pictures are data: URIs, and a Content-Security-Policy forbids every network load, so
// the file opens anywhere (a mail attachment, an air-gapped machine) and looks the same.
//
//   renderPage   title, summary tables, charts, pictures, configs -> HTML text
//   escapeHtml   text -> HTML-safe text
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import type { Chart } from './charts.js';

export interface Table {
  title: string;
  header: string[];
  rows: string[][];
}

export interface PageContent {
  title: string;
  subtitle: string;
  tables: Table[];
  charts: Chart[];
  pictures: { caption: string; png: Buffer }[];
  /** Collapsible JSON blocks (config.json, summary.json). */
  details: { title: string; json: unknown }[];
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** JSON that is safe inside a <script> element (no `</script>`, no HTML comment openers). */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, '\\u003c');
}

function uplotAssets(): { js: string; css: string } {
  const req = createRequire(import.meta.url);
  const read = (f: string) => readFileSync(req.resolve(`uplot/dist/${f}`), 'utf8');
  return { js: read('uPlot.iife.min.js'), css: read('uPlot.min.css') };
}

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1240px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-bottom: 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f6f6f6; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(580px, 1fr)); gap: 18px; }
.chart { min-height: 330px; }
figure { margin: 0 0 22px; } figure img { max-width: 100%; border: 1px solid #ddd; image-rendering: auto; }
figcaption { color: #555; margin-top: 4px; }
pre { background: #f7f7f7; padding: 10px; overflow: auto; font-size: 12px; }
`;

/** Nothing may load from anywhere: scripts and styles are inline, pictures data: URIs. */
const CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:";

/** Draws every chart of the JSON block with uPlot (runs in the page). */
const BOOT = `
(function () {
  var charts = JSON.parse(document.getElementById('chart-data').textContent);
  var colours = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd',
                 '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
  var whole = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000];
  function fmt(c) {
    return function (u, vals) {
      return vals.map(function (v) {
        if (v == null) return '';
        if (c.percent) return (100 * v).toFixed(v !== 0 && Math.abs(v) < 0.1 ? 1 : 0) + ' %';
        var a = Math.abs(v);
        return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(1) : +v.toPrecision(4) + '';
      });
    };
  }
  charts.forEach(function (c, i) {
    var el = document.getElementById('chart-' + i);
    var series = [{ label: c.x }].concat(c.labels.map(function (l, k) {
      return { label: l, stroke: colours[k % colours.length], width: 1.5, spanGaps: true,
               points: { show: !!c.points, size: 5 } };
    }));
    new uPlot({
      title: c.title, width: Math.max(320, el.clientWidth || 580), height: 300,
      scales: { x: { time: false } },
      axes: [
        // Steps and epochs are counts: whole-number ticks only.
        c.x === 'step' || c.x === 'epoch'
          ? { label: c.x, values: fmt({}), incrs: whole }
          : { label: c.x, values: fmt({}) },
        { label: c.y, size: 70, values: fmt(c) },
      ],
      series: series,
    }, c.data, el);
  });
})();
`;

export function renderPage(p: PageContent): string {
  const { js, css } = uplotAssets();
  const tables = p.tables
    .map(
      (t) =>
        `<h2>${escapeHtml(t.title)}</h2><table><tr>${t.header.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr>` +
        t.rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(c)}</td>`).join('')}</tr>`).join('') +
        '</table>',
    )
    .join('\n');
  const charts = p.charts.length
    ? '<h2>Charts</h2><div class="charts">' +
      p.charts.map((_, i) => `<div class="chart" id="chart-${i}"></div>`).join('') +
      '</div>'
    : '';
  const pictures = p.pictures.length
    ? '<h2>Pictures</h2>' +
      p.pictures
        .map(
          (f) =>
            `<figure><img alt="${escapeHtml(f.caption)}" src="data:image/png;base64,${f.png.toString('base64')}">` +
            `<figcaption>${escapeHtml(f.caption)}</figcaption></figure>`,
        )
        .join('\n')
    : '';
  const details = p.details
    .map(
      (d) =>
        `<details><summary>${escapeHtml(d.title)}</summary>` +
        `<pre>${escapeHtml(JSON.stringify(d.json, null, 2))}</pre></details>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(p.title)}</title>
<style>${css}</style><style>${STYLE}</style>
</head><body>
<h1>${escapeHtml(p.title)}</h1><div class="sub">${escapeHtml(p.subtitle)}</div>
${tables}
${charts}
${pictures}
${details ? `<h2>Configuration and versions</h2>${details}` : ''}
<script type="application/json" id="chart-data">${scriptJson(p.charts)}</script>
<script>/* uPlot, MIT licence, (c) 2022 Leon Sorokin */ ${js}</script>
<script>${BOOT}</script>
</body></html>
`;
}
