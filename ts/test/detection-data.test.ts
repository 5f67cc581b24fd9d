// Detection datasets on the bundled samples (Stenosis frames + VOC XML, ARCADE stenosis COCO)
// and small synthetic trees: layouts, the coordinate conventions, the three split policies
// (files, seeded frame, seeded patient: no patient on both sides) and one clear error per bad input.
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { cocoEvaluate } from '../src/detection/coco-eval.js';
import { datasetToCocoGt, openDetectionDataset, patientOf } from '../src/detection/dataset.js';
import { SAMPLES, tempDir } from './helpers.js';

const tmp = tempDir('vasomim-detdata-');
afterAll(() => tmp.cleanup());
let n = 0;
const fresh = (name: string) => {
  const d = join(tmp.path, `${name}-${n++}`);
  mkdirSync(d, { recursive: true });
  return d;
};
const DANILOV = join(SAMPLES, 'danilov-stenosis-samples');
const ARCADE = join(SAMPLES, 'arcade-samples');

/** The six bundled Stenosis frames with their XML in a fresh folder (optionally renamed). */
function stenosisTree(rename: (stem: string, i: number) => string = (s) => s): string {
  const root = fresh('stenosis');
  readdirSync(DANILOV)
    .filter((f) => f.endsWith('.png'))
    .sort()
    .forEach((f, i) => {
      const stem = f.slice(0, -4);
      copyFileSync(join(DANILOV, f), join(root, `${rename(stem, i)}.png`));
      copyFileSync(join(DANILOV, `${stem}.xml`), join(root, `${rename(stem, i)}.xml`));
    });
  return root;
}

/** ARCADE stenosis/val with the three bundled frames and their four stenosis annotations. */
function arcadeTree(): string {
  const root = fresh('arcade');
  const dir = join(root, 'stenosis', 'val');
  mkdirSync(join(dir, 'images'), { recursive: true });
  mkdirSync(join(dir, 'annotations'), { recursive: true });
  for (const k of [1, 2, 3]) copyFileSync(join(ARCADE, `STEN_00${k}_0000.png`), join(dir, 'images', `${k}.png`));
  copyFileSync(join(ARCADE, 'stenosis_images_1-3.json'), join(dir, 'annotations', 'val.json'));
  return root;
}

describe('Stenosis dataset (Danilov et al.)', () => {
  it('VOC XML: frames, boxes in the continuous convention (default) or detectron2 -1', () => {
    const root = stenosisTree();
    const ds = openDetectionDataset(root, { split: 'frame', testFraction: 2 / 6, seed: 3 });
    expect(ds.format).toBe('stenosis');
    expect(ds.classes).toEqual(['Stenosis']);
    const all = [...ds.splits.train, ...ds.splits.test];
    expect(all).toHaveLength(6);
    expect(ds.splits.test).toHaveLength(2);
    expect(all.reduce((k, s) => k + s.boxes.length, 0)).toBe(7);
    const f17 = all.find((s) => s.id === '14_002_5_0017.png')!;
    expect(f17.boxes).toEqual([
      [161, 173, 179, 187],
      [222, 174, 241, 186],
    ]);
    expect(f17.patient).toBe('002');
    expect(f17.areas[0]).toBe(18 * 14);
    const voc = openDetectionDataset(root, { split: 'frame', coordinates: 'voc' });
    expect([...voc.splits.train, ...voc.splits.test].find((s) => s.id === f17.id)!.boxes[0]).toEqual([
      160, 172, 179, 187,
    ]);
  });

  it('frame split: seeded, reproducible, another seed another split', () => {
    const root = stenosisTree();
    const ids = (seed: number) =>
      openDetectionDataset(root, { split: 'frame', testFraction: 0.5, seed }).splits.test.map((s) => s.id);
    expect(ids(1)).toEqual(ids(1));
    const seeds = [1, 2, 3, 4, 5].map((s) => ids(s).join());
    expect(new Set(seeds).size).toBeGreaterThan(1);
  });

  it('patient split: no patient on both sides; the default without label CSVs', () => {
    const root = stenosisTree((_, i) => `14_00${Math.floor(i / 2) + 1}_1_00${i}`);
    for (const seed of [0, 1, 2]) {
      const ds = openDetectionDataset(root, { testFraction: 0.3, seed });
      expect(ds.split).toBe('patient');
      const train = new Set(ds.splits.train.map((s) => s.patient));
      const test = new Set(ds.splits.test.map((s) => s.patient));
      expect(test.size).toBeGreaterThan(0);
      for (const p of test) expect(train.has(p)).toBe(false);
    }
    expect(patientOf('dataset/14_017_3_0042.bmp')).toBe('017');
  });

  it('train_labels.csv / test_labels.csv: the shipped split; frames without rows are left out', () => {
    const root = stenosisTree();
    const head = 'filename,width,height,class,xmin,ymin,xmax,ymax\n';
    writeFileSync(
      join(root, 'train_labels.csv'),
      head + '14_002_5_0017.png,512,512,Stenosis,161,173,179,187\n14_002_5_0017.png,512,512,Stenosis,222,174,241,186\n',
    );
    writeFileSync(join(root, 'test_labels.csv'), head + '14_002_5_0018.png,512,512,Stenosis,150,160,170,180\n');
    const ds = openDetectionDataset(root);
    expect(ds.split).toBe('files');
    expect(ds.splits.train.map((s) => [s.id, s.boxes.length])).toEqual([['14_002_5_0017.png', 2]]);
    expect(ds.splits.test[0]!.boxes).toEqual([[150, 160, 170, 180]]);
  });

  it('a frame without XML is a negative; the COCO ground truth of the samples evaluates', () => {
    const root = stenosisTree();
    copyFileSync(join(ARCADE, 'STEN_001_0000.png'), join(root, '14_009_1_0001.png'));
    const ds = openDetectionDataset(root, { split: 'frame', testFraction: 0 });
    const neg = ds.splits.train.find((s) => s.id === '14_009_1_0001.png')!;
    expect(neg.boxes).toEqual([]);
    const gt = datasetToCocoGt(ds.splits.train, ds.classes);
    expect(gt.annotations).toHaveLength(7);
    const perfect = gt.annotations.map((a) => ({ image_id: a.image_id, category_id: 1, bbox: a.bbox, score: 1 }));
    expect(cocoEvaluate(gt, perfect).summary.AP).toBe(1);
  });
});

describe('ARCADE stenosis and plain COCO', () => {
  it('ARCADE: the stenosis/ tree, category "stenosis", the bbox field', () => {
    const ds = openDetectionDataset(arcadeTree());
    expect(ds.format).toBe('arcade');
    expect(ds.split).toBe('files');
    expect(ds.splits.val).toHaveLength(3);
    expect(ds.splits.val.map((s) => s.boxes.length)).toEqual([1, 1, 2]);
    const b = ds.splits.val[0]!.boxes[0]!;
    expect(b[0]).toBeCloseTo(82.12, 10);
    expect(b[2]).toBeCloseTo(82.12 + 96.76, 10);
    expect(ds.splits.val[0]!.areas[0]).toBe(3314);
  });

  it('plain COCO: a .json with images/ beside it; categories chosen by name', () => {
    const root = fresh('coco');
    mkdirSync(join(root, 'images'));
    for (const k of [1, 2, 3]) copyFileSync(join(ARCADE, `STEN_00${k}_0000.png`), join(root, 'images', `${k}.png`));
    copyFileSync(join(ARCADE, 'stenosis_images_1-3.json'), join(root, 'ann.json'));
    const ds = openDetectionDataset(join(root, 'ann.json'), { categories: ['stenosis'], testFraction: 1 / 3 });
    expect(ds.format).toBe('coco');
    expect(ds.split).toBe('frame');
    expect(ds.splits.test).toHaveLength(1);
    expect(ds.splits.train).toHaveLength(2);
    expect(() => openDetectionDataset(join(root, 'ann.json'), { categories: ['plaque'] })).toThrow(
      /ann\.json: no category named "plaque" \(categories: 1, 2, .*stenosis\)/,
    );
  });
});

describe('bad input: one clear line each', () => {
  const xml17 = readFileSync(join(DANILOV, '14_002_5_0017.xml'), 'utf8');
  it('a box outside the image', () => {
    const root = stenosisTree();
    writeFileSync(join(root, '14_002_5_0017.xml'), xml17.replace('<xmax>241</xmax>', '<xmax>513</xmax>'));
    expect(() => openDetectionDataset(root, { split: 'frame' })).toThrow(
      /14_002_5_0017\.xml: object 2: box \[222, 174, 513, 186\] lies outside the 512x512 image$/,
    );
  });
  it('an empty box', () => {
    const root = stenosisTree();
    writeFileSync(join(root, '14_002_5_0017.xml'), xml17.replace('<xmax>179</xmax>', '<xmax>161</xmax>'));
    expect(() => openDetectionDataset(root, { split: 'frame' })).toThrow(/object 1: empty box \[161, 173, 161, 187\]/);
  });
  it('an empty annotation file (XML, CSV, JSON)', () => {
    const root = stenosisTree();
    writeFileSync(join(root, '14_002_5_0019.xml'), '');
    expect(() => openDetectionDataset(root)).toThrow(/14_002_5_0019\.xml: empty annotation file$/);
    const r2 = stenosisTree();
    writeFileSync(join(r2, 'train_labels.csv'), 'filename,width,height,class,xmin,ymin,xmax,ymax\n');
    expect(() => openDetectionDataset(r2)).toThrow(/train_labels\.csv: no rows below the header$/);
    const r3 = arcadeTree();
    writeFileSync(join(r3, 'stenosis', 'val', 'annotations', 'val.json'), '');
    expect(() => openDetectionDataset(r3)).toThrow(/val\.json: empty annotation file$/);
  });
  it('an unknown category name', () => {
    const root = stenosisTree();
    writeFileSync(join(root, '14_002_5_0017.xml'), xml17.replace('<name>Stenosis</name>', '<name>Plaque</name>'));
    expect(() => openDetectionDataset(root)).toThrow(
      /14_002_5_0017\.xml: object 1: unknown category "Plaque" \(detected classes: Stenosis\)$/,
    );
    const csv = stenosisTree();
    writeFileSync(
      join(csv, 'train_labels.csv'),
      'filename,width,height,class,xmin,ymin,xmax,ymax\n14_002_5_0017.png,512,512,lesion,1,2,3,4\n',
    );
    expect(() => openDetectionDataset(csv)).toThrow(/train_labels\.csv:2: unknown category "lesion"/);
  });
  it('a CSV row naming a missing image; a patient split of names without patients', () => {
    const root = stenosisTree();
    writeFileSync(
      join(root, 'test_labels.csv'),
      'filename,width,height,class,xmin,ymin,xmax,ymax\nnope.bmp,512,512,Stenosis,1,2,3,4\n',
    );
    expect(() => openDetectionDataset(root)).toThrow(/test_labels\.csv:2: no image "nope\.bmp" in the dataset folder/);
    const r2 = stenosisTree((_, i) => `frame${i}`);
    expect(() => openDetectionDataset(r2, { split: 'patient' })).toThrow(/frame0\.png: no patient id in the name/);
  });
});
