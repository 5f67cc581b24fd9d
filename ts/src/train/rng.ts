// A small, seeded, serialisable random number generator for everything the training loop draws
// in TypeScript (masks, shuffles). xoshiro128** (Blackman & Vigna) on four uint32 words, seeded
// through SplitMix32 from a list of integer keys, so a stream can be derived from
// (seed, epoch, sample index) and is the same whatever the batch size, worker count or resume
// point. State is four numbers: `state()` / `Rng.fromState()` round-trip it exactly.

function splitmix32(x: number): [number, number] {
  x = (x + 0x9e3779b9) >>> 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return [x, (z ^ (z >>> 16)) >>> 0];
}

const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

export type RngState = [number, number, number, number];

export class Rng {
  private s: RngState;

  private constructor(s: RngState) {
    this.s = s;
  }

  /** A stream keyed by integers, e.g. `Rng.forKeys(seed, epoch, index)`. Keys must be integers in [0, 2^53). */
  static forKeys(...keys: number[]): Rng {
    let x = 0x6a09e667;
    for (const k of keys) {
      if (!Number.isSafeInteger(k) || k < 0) throw new Error(`rng key ${k} is not a non-negative safe integer`);
      // mix the high and low 32 bits of each key
      [x] = splitmix32((x ^ (k >>> 0)) >>> 0);
      [x] = splitmix32((x ^ Math.floor(k / 2 ** 32)) >>> 0);
    }
    const s: number[] = [];
    for (let i = 0; i < 4; i++) {
      let out: number;
      [x, out] = splitmix32(x);
      s.push(out);
    }
    if (!s.some((v) => v !== 0)) s[0] = 1;
    return new Rng(s as RngState);
  }

  static fromState(s: RngState): Rng {
    if (s.length !== 4 || s.some((v) => !Number.isInteger(v) || v < 0 || v > 0xffffffff))
      throw new Error('rng state must be four uint32 values');
    return new Rng([...s] as RngState);
  }

  state(): RngState {
    return [...this.s] as RngState;
  }

  /** Next uint32. */
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] = (s[2] ^ s[0]) >>> 0;
    s[3] = (s[3] ^ s[1]) >>> 0;
    s[1] = (s[1] ^ s[2]) >>> 0;
    s[0] = (s[0] ^ s[3]) >>> 0;
    s[2] = (s[2] ^ t) >>> 0;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform in (0, 1): never 0, so log(u) is finite. */
  open01(): number {
    let u = this.uniform();
    while (u === 0) u = this.uniform();
    return u;
  }

  /** Uniform integer in [0, n) without modulo bias. */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 0x100000000)
      throw new Error(`int(n): n = ${n} must be an integer in [1, 2^32]`);
    const limit = 0x100000000 - (0x100000000 % n);
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % n;
    }
  }

  /** Standard Gumbel sample: -log(-log(u)). */
  gumbel(): number {
    return -Math.log(-Math.log(this.open01()));
  }

  /** Fisher–Yates shuffle in place. */
  shuffle<T>(a: T[] | Int32Array): void {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }
}
