// Finds the work of a `vessels` job: every folder under the root that directly holds images is
// a source, and its maps go to a sibling `<source><suffix>/` folder with the same stems (.png).
import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, relative } from 'node:path';

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'];
/** Folders never treated as sources: existing map folders and hidden folders. */
const MAP_FOLDER = /(_frangi|_filter_92)$/;

export interface MapTask {
  input: string;
  output: string;
  /** The source folder (relative to the root; '.' for the root itself). */
  source: string;
}

export interface Discovery {
  tasks: MapTask[];
  sources: string[];
  /** Inputs whose output name is already taken by another input (a.png and a.jpg). */
  collisions: { input: string; output: string; other: string }[];
  excluded: number;
}

/** Glob with * and ? on a basename, case-sensitive. */
export function globToRegExp(glob: string): RegExp {
  const esc = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${esc}$`);
}

export function isImageFile(name: string): boolean {
  return IMAGE_EXTENSIONS.includes(extname(name).toLowerCase());
}

export function discover(root: string, opts: { out?: string; suffix: string; exclude: string[] }): Discovery {
  const st = statSync(root, { throwIfNoEntry: false });
  if (!st) throw new Error(`${root}: no such folder`);
  if (!st.isDirectory()) throw new Error(`${root}: not a folder (give the dataset root or a folder of images)`);
  const excludes = opts.exclude.map(globToRegExp);
  const out: Discovery = { tasks: [], sources: [], collisions: [], excluded: 0 };
  const walk = (dir: string) => {
    const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
    const images = entries.filter((e) => (e.isFile() || e.isSymbolicLink()) && isImageFile(e.name));
    const kept = images.filter((e) => !excludes.some((r) => r.test(e.name)));
    out.excluded += images.length - kept.length;
    if (kept.length > 0) {
      const rel = relative(root, dir);
      const outDir =
        rel === ''
          ? join(opts.out ?? dirname(root), basename(root) + opts.suffix)
          : join(opts.out ?? root, rel + opts.suffix);
      out.sources.push(rel === '' ? '.' : rel);
      const taken = new Map<string, string>();
      for (const e of kept) {
        const input = join(dir, e.name);
        const output = join(outDir, basename(e.name, extname(e.name)) + '.png');
        const other = taken.get(output);
        if (other) out.collisions.push({ input, output, other });
        else {
          taken.set(output, input);
          out.tasks.push({ input, output, source: rel === '' ? '.' : rel });
        }
      }
    }
    for (const e of entries) {
      if (e.isDirectory() && !e.name.startsWith('.') && !MAP_FOLDER.test(e.name)) walk(join(dir, e.name));
    }
  };
  walk(root);
  return out;
}
