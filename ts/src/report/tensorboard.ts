// TensorBoard event files, written without TensorFlow. The npm registry has TFRecord readers and
// writers but no maintained writer of TensorBoard's Event/Summary messages, and the format is small
// and documented:
//
//   file      events.out.tfevents.<unix seconds>.<host>.<pid> — TensorBoard reads every file
//             whose name contains "tfevents" under --logdir
//   record    uint64 length (LE) | uint32 masked CRC-32C of the length bytes | data |
//             uint32 masked CRC-32C of data            (TFRecord; mask: rotate right 15, + 0xa282ead8)
//   data      an `Event` protobuf (tensorflow/core/util/event.proto): wall_time = 1 (double),
//             step = 2 (int64), file_version = 3 (the first record: "brain.Event:2"),
//             summary = 5 { repeated value = 1 { tag = 1, simple_value = 2 (float),
//             image = 4 { height = 1, width = 2, colorspace = 3, encoded_image_string = 4 (PNG) } } }
//
//   crc32c          CRC-32C (Castagnoli) of bytes
//   EventWriter     scalars (simple_value) and PNG images into one event file, appended record by record
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli polynomial, reflected), as TFRecord frames its records. */
export function crc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function maskedCrc(bytes: Uint8Array): number {
  const c = crc32c(bytes);
  return (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, its masked CRC, the data, its masked CRC. */
export function tfRecord(data: Uint8Array): Buffer {
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(data.length));
  const head = Buffer.alloc(4);
  head.writeUInt32LE(maskedCrc(len));
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(maskedCrc(data));
  return Buffer.concat([len, head, data, tail]);
}

// Protobuf encoding: only the field kinds an Event needs.
function varint(v: number | bigint): Buffer {
  let x = BigInt(v);
  if (x < 0n) x += 1n << 64n; // int64: two's complement, 10 bytes
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) b |= 0x80;
    out.push(b);
  } while (x > 0n);
  return Buffer.from(out);
}
const key = (field: number, wire: number) => varint((field << 3) | wire);
const fVarint = (field: number, v: number | bigint) => Buffer.concat([key(field, 0), varint(v)]);
const fBytes = (field: number, b: Uint8Array) => Buffer.concat([key(field, 2), varint(b.length), b]);
const fString = (field: number, s: string) => fBytes(field, Buffer.from(s, 'utf8'));
function fDouble(field: number, v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(v);
  return Buffer.concat([key(field, 1), b]);
}
function fFloat(field: number, v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeFloatLE(v);
  return Buffer.concat([key(field, 5), b]);
}

/** `Event` bytes: wall time, step and either a file version or summary values. */
function event(wallTime: number, step: number, body: { fileVersion?: string; values?: Buffer[] }): Buffer {
  const parts = [fDouble(1, wallTime), fVarint(2, step)];
  if (body.fileVersion !== undefined) parts.push(fString(3, body.fileVersion));
  if (body.values) parts.push(fBytes(5, Buffer.concat(body.values.map((v) => fBytes(1, v)))));
  return Buffer.concat(parts);
}

export interface TbImage {
  /** PNG bytes. */
  png: Buffer;
  width: number;
  height: number;
  /** 1 grey, 3 RGB, 4 RGBA. */
  colorspace: 1 | 3 | 4;
}

/** Width, height and colour space of a PNG from its IHDR chunk. */
export function pngInfo(png: Buffer): TbImage {
  if (png.length < 33 || png.toString('latin1', 1, 4) !== 'PNG') throw new Error('not a PNG');
  const colour = png[25]!;
  const colorspace = colour === 2 ? 3 : colour === 6 ? 4 : 1;
  return { png, width: png.readUInt32BE(16), height: png.readUInt32BE(20), colorspace };
}

/** Appends TensorBoard events to one new event file in `dir`. */
export class EventWriter {
  readonly path: string;

  constructor(dir: string) {
    if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
    const now = Date.now() / 1000;
    this.path = join(dir, `events.out.tfevents.${Math.floor(now)}.${hostname()}.${process.pid}`);
    appendFileSync(this.path, tfRecord(event(now, 0, { fileVersion: 'brain.Event:2' })));
  }

  /** Scalars at `step` (non-finite values are left out: TensorBoard draws no gaps). */
  scalars(step: number, values: Record<string, number>): void {
    const vals = Object.entries(values)
      .filter(([, v]) => Number.isFinite(v))
      .map(([tag, v]) => Buffer.concat([fString(1, tag), fFloat(2, v)]));
    if (vals.length) appendFileSync(this.path, tfRecord(event(Date.now() / 1000, step, { values: vals })));
  }

  /** A PNG image under `tag` at `step`. */
  image(step: number, tag: string, img: TbImage): void {
    const body = Buffer.concat([
      fVarint(1, img.height),
      fVarint(2, img.width),
      fVarint(3, img.colorspace),
      fBytes(4, img.png),
    ]);
    const value = Buffer.concat([fString(1, tag), fBytes(4, body)]);
    appendFileSync(this.path, tfRecord(event(Date.now() / 1000, step, { values: [value] })));
  }
}
