// Headless Chromium for the report tests, driven over the DevTools protocol on a pipe
// (--remote-debugging-pipe: JSON messages ending in NUL, commands on fd 3, replies and events on
// fd 4), so no npm package and no port are needed. `loadPage` opens a file and reports what a
// reader would see: console errors and uncaught exceptions, every request the page made, the
// canvases and images (drawn or not), and a screenshot.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';

/** The Chromium binary on PATH (Debian's `chromium`), or undefined. */
export function chromiumPath(): string | undefined {
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const r = spawnSync('which', [name], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return undefined;
}

export interface PageReport {
  errors: string[];
  /** URLs the page requested, other than itself and data: URIs. */
  requests: string[];
  /** Canvases, and how many of them have drawn (non-transparent) pixels. */
  canvases: number;
  drawnCanvases: number;
  /** <img> elements, and how many decoded to a picture. */
  images: number;
  loadedImages: number;
  /** PNG of the first screen (1280 × 1600). */
  screenshot: Buffer;
}

type Message = { id?: number; method?: string; params?: Record<string, unknown>; result?: unknown; error?: unknown };

/** Open `file` in headless Chromium and report what happened (see PageReport). */
export async function loadPage(chromium: string, file: string, settleMs = 500): Promise<PageReport> {
  const profile = mkdtempSync(join(tmpdir(), 'vasomim-chromium-'));
  const proc = spawn(
    chromium,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-extensions',
      '--disable-breakpad',
      '--disable-crash-reporter',
      '--remote-debugging-pipe',
      `--user-data-dir=${profile}`,
      'about:blank',
    ],
    // Its own process group, so that the renderer and helper processes end with it.
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'], detached: true },
  );
  const input = proc.stdio[3] as Writable;
  const output = proc.stdio[4] as Readable;
  let nextId = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const listeners: ((m: Message) => void)[] = [];
  let buf = '';
  output.on('data', (chunk: Buffer) => {
    buf += chunk.toString('utf8');
    let end;
    while ((end = buf.indexOf('\0')) >= 0) {
      const m = JSON.parse(buf.slice(0, end)) as Message;
      buf = buf.slice(end + 1);
      if (m.id !== undefined && pending.has(m.id)) {
        const p = pending.get(m.id)!;
        pending.delete(m.id);
        if (m.error) p.reject(new Error(`CDP: ${JSON.stringify(m.error)}`));
        else p.resolve(m.result);
      } else listeners.forEach((l) => l(m));
    }
  });
  const send = <T>(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      input.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    });
  try {
    const { targetId } = await send<{ targetId: string }>('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await send<{ sessionId: string }>('Target.attachToTarget', { targetId, flatten: true });
    const url = pathToFileURL(file).href;
    const errors: string[] = [];
    const requests: string[] = [];
    let loaded!: () => void;
    const onLoad = new Promise<void>((r) => (loaded = r));
    listeners.push((m) => {
      const p = m.params ?? {};
      if (m.method === 'Runtime.consoleAPICalled' && (p.type === 'error' || p.type === 'assert'))
        errors.push(
          `console.${String(p.type)}: ${JSON.stringify((p.args as { value?: unknown }[]).map((a) => a.value))}`,
        );
      if (m.method === 'Runtime.exceptionThrown') errors.push(`exception: ${JSON.stringify(p.exceptionDetails)}`);
      if (m.method === 'Log.entryAdded') {
        const e = p.entry as { level: string; text: string; url?: string };
        if (e.level === 'error') errors.push(`log: ${e.text} ${e.url ?? ''}`);
      }
      if (m.method === 'Network.requestWillBeSent') {
        const u = (p.request as { url: string }).url;
        if (u !== url && !u.startsWith('data:')) requests.push(u);
      }
      if (m.method === 'Page.loadEventFired') loaded();
    });
    for (const d of ['Runtime', 'Log', 'Network', 'Page']) await send(`${d}.enable`, {}, sessionId);
    await send(
      'Emulation.setDeviceMetricsOverride',
      { width: 1280, height: 1600, deviceScaleFactor: 1, mobile: false },
      sessionId,
    );
    await send('Page.navigate', { url }, sessionId);
    await onLoad;
    await new Promise((r) => setTimeout(r, settleMs));
    const { result } = await send<{ result: { value: Omit<PageReport, 'errors' | 'requests' | 'screenshot'> } }>(
      'Runtime.evaluate',
      {
        returnByValue: true,
        expression: `(() => {
          const cs = [...document.querySelectorAll('canvas')];
          const drawn = cs.filter((c) => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
            return false;
          });
          const imgs = [...document.images];
          return { canvases: cs.length, drawnCanvases: drawn.length, images: imgs.length,
                   loadedImages: imgs.filter((i) => i.complete && i.naturalWidth > 0).length };
        })()`,
      },
      sessionId,
    );
    const shot = await send<{ data: string }>('Page.captureScreenshot', { format: 'png' }, sessionId);
    return { ...result.value, errors, requests, screenshot: Buffer.from(shot.data, 'base64') };
  } finally {
    // The profile folder is removed once every Chromium process has exited (helpers write there
    // after the browser process is gone): the whole process group is killed, then the removal
    // retries for up to 5 s.
    const exited = proc.exitCode !== null ? Promise.resolve() : once(proc, 'exit');
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch {
      proc.kill('SIGKILL');
    }
    await exited;
    rmSync(profile, { recursive: true, force: true, maxRetries: 50, retryDelay: 100 });
  }
}
