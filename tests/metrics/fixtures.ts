/**
 * Loader of `tests/fixtures/monai_metrics.json` (made by `tests/fixtures/make_monai_metric_fixtures.py`) and
 * the integer recipes that rebuild the inputs the script fed to MONAI, bit for bit (see the script's
 * `hash_u32`, `image_pair` and `mask`).
 *
 * @module
 */

const HERE = new URL(".", import.meta.url);

/** The fixtures directory. */
export const FIXTURES: URL = new URL("../fixtures/", HERE);

/** A number from the JSON ("NaN", "Infinity" and "-Infinity" come as strings). */
export type Num = number | "NaN" | "Infinity" | "-Infinity";

/** Decodes a {@linkcode Num}. */
export function num(v: Num): number {
  return typeof v === "number" ? v : Number(v);
}

/** A mask recipe. */
export type MaskSpec =
  | { kind: "empty" }
  | { kind: "box"; lo: number[]; hi: number[] }
  | { kind: "ellipsoid"; center: number[]; radii: number[] }
  | { kind: "random"; seed: number; p256: number }
  | { kind: "union"; parts: MaskSpec[] };

/** The fixture file's content. */
export interface MetricFixtures {
  ssim: Array<{
    name: string;
    metric: "ssim" | "ms_ssim";
    shape: number[];
    seed: number;
    kind: PairKind;
    options: Record<string, unknown>;
    sums: [number, number];
    expected: Num[];
  }>;
  ms_ssim_too_small: Array<{ shape: number[]; options: Record<string, unknown>; monai_error: string | null }>;
  regression: Array<{
    name: string;
    shape: number[];
    seed: number;
    max_val: number;
    identical_first: boolean;
    mse: Num[];
    mae: Num[];
    psnr: Num[];
  }>;
  mmd_linear: Array<
    { name: string; shape: number[]; seed: number; y_scale: number; float32: Num; float64: Num }
  >;
  mmd_gaussian: Array<{ name: string; x: number[][]; y: number[][]; alpha: Num; expected: Num }>;
  fid: Array<{ name: string; a: number[][]; b: number[][]; expected: Num }>;
  segmentation: Array<{
    name: string;
    shape: number[];
    spacing: number[];
    pred: MaskSpec;
    gt: MaskSpec;
    counts: [number, number];
    dice: Num;
    dice_keep_empty: Num;
    hd95: Num;
    hd: Num;
    hd95_directed: Num;
    assd: Num;
    asd: Num;
  }>;
  med3d: Array<{
    name: string;
    file: string;
    width: number;
    shortcut: "A" | "B";
    layers: number[];
    bottleneck: boolean;
    shape: number[];
    seed: number;
    features_shape: number[];
    features: Num[];
  }>;
}

let cached: MetricFixtures | null = null;

/** The parsed fixture file. */
export async function metricFixtures(): Promise<MetricFixtures> {
  cached ??= JSON.parse(await Deno.readTextFile(new URL("monai_metrics.json", FIXTURES))) as MetricFixtures;
  return cached;
}

/** The script's `hash_u32` of index i: a murmur3-style finaliser, exact with Math.imul. */
export function hashU32(i: number, seed: number): number {
  let h = (Math.imul(i, 0x9e3779b1) + Math.imul(seed, 0x85ebca77)) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d) >>> 0;
  h ^= h >>> 12;
  h = Math.imul(h, 0x297a2d39) >>> 0;
  h ^= h >>> 15;
  return h >>> 0;
}

/** How the second image of a pair relates to the first. */
export type PairKind = "correlated" | "negated" | "identical";

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Row-major coordinates of flat index i. */
function coords(i: number, shape: readonly number[]): number[] {
  const c = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    c[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return c;
}

/** The script's `image_pair(shape, seed, kind)`: two float32 images of `shape` ([N, C, ...spatial]). */
export function imagePair(
  shape: readonly number[],
  seed: number,
  kind: PairKind,
): [Float32Array, Float32Array] {
  const n = sizeOf(shape);
  const spatial = shape.slice(2);
  const plane = sizeOf(spatial);
  const x = new Float32Array(n);
  const y = new Float32Array(n);
  const primes = [37, 23, 11];
  const scale = 2 ** -23;
  for (let i = 0; i < n; i++) {
    const u1 = hashU32(i, seed) >>> 12;
    const u2 = hashU32(i, seed + 1) >>> 12;
    const c = coords(i % plane, spatial);
    const g = (c.reduce((s, v, a) => s + v * primes[a], 0) % 128) << 15;
    const xi = 4 * u1 + g;
    const yi = kind === "correlated" ? 3 * u1 + u2 + g : kind === "negated" ? 2 ** 23 - 1 - xi : xi;
    x[i] = xi * scale;
    y[i] = yi * scale;
  }
  return [x, y];
}

/** The script's `mask(shape, spec)` as a 0/1 array. */
export function makeMask(shape: readonly number[], spec: MaskSpec): Uint8Array {
  const n = sizeOf(shape);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const c = coords(i, shape);
    out[i] = inside(spec, c, i) ? 1 : 0;
  }
  return out;
}

function inside(spec: MaskSpec, c: number[], i: number): boolean {
  switch (spec.kind) {
    case "empty":
      return false;
    case "box":
      return c.every((v, a) => v >= spec.lo[a] && v < spec.hi[a]);
    case "ellipsoid": {
      let acc = 0;
      c.forEach((v, a) => {
        const t = (v - spec.center[a]) / spec.radii[a];
        acc = acc + t * t;
      });
      return acc <= 1;
    }
    case "random":
      return hashU32(i, spec.seed) >>> 24 < spec.p256;
    case "union":
      return spec.parts.some((p) => inside(p, c, i));
  }
}

/** Sum in float64 (to compare with the script's checksums). */
export function sum(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i];
  return s;
}
