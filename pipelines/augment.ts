/**
 * Random augmentation on the GPU, identical for an image and its label map: left-right flip, small
 * affine transforms (rotation, scaling, translation), smooth elastic deformation (a coarse random
 * displacement grid interpolated trilinearly), and for the image only a smooth multiplicative bias field
 * and intensity (gamma, contrast, brightness) jitter. One `warp3d` pass moves the voxels.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { tensor } from "../engine/ops/create.ts";
import { map } from "../engine/ops/map.ts";
import { warp3d } from "../engine/ops/warp.ts";
import { concat } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { seededRandom } from "../nn/init.ts";

/** Augmentation strengths (0 or false disables one). */
export interface AugmentOptions {
  /** Probability of a left-right flip (default 0.5). */
  flipProbability?: number;
  /** Maximum rotation about each axis, degrees (default 8). */
  rotateDegrees?: number;
  /** Maximum relative scale change (default 0.08). */
  scale?: number;
  /** Maximum translation, voxels (default 1.5). */
  translate?: number;
  /** Standard deviation of the elastic displacement, voxels (default 1). */
  elastic?: number;
  /** Control points of the elastic grid per axis (default 4). */
  elasticGrid?: number;
  /** Standard deviation of the log bias field (default 0.15). */
  biasField?: number;
  /** Maximum |log γ| of the gamma jitter (default 0.2). */
  gamma?: number;
  /** Maximum relative contrast change (default 0.1). */
  contrast?: number;
  /** Maximum brightness shift in units of the range (default 0.05). */
  brightness?: number;
  /** Intensity range of the images (default [-1, 1]); intensity jitter works inside it. */
  range?: [number, number];
}

/** An augmented pair. */
export interface Augmented {
  /** The image [1, C, D, H, W]. */
  image: Tensor;
  /** The label map, moved identically with nearest sampling (when given). */
  labels?: Tensor;
}

function gaussian(random: () => number): number {
  // Box–Muller with 1 − u to avoid log(0).
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

function rotation(ax: number, ay: number, az: number): number[][] {
  const [cx, sx, cy, sy, cz, sz] = [
    Math.cos(ax),
    Math.sin(ax),
    Math.cos(ay),
    Math.sin(ay),
    Math.cos(az),
    Math.sin(az),
  ];
  const rx = [[1, 0, 0], [0, cx, -sx], [0, sx, cx]];
  const ry = [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]];
  const rz = [[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]];
  const mul = (a: number[][], b: number[][]) =>
    a.map((r) => [0, 1, 2].map((j) => r.reduce((s, v, k) => s + v * b[k][j], 0)));
  return mul(rz, mul(ry, rx));
}

/**
 * Draws random augmentation parameters from `seed` and applies them to `image` [1, C, D, H, W] (and
 * `labels` of the same spatial size). Deterministic for a given seed.
 */
export function augment(image: Tensor, seed: number, opts: AugmentOptions = {}, labels?: Tensor): Augmented {
  if (image.rank !== 5 || image.shape[0] !== 1) {
    throw new Error(`augment: image ${formatShape(image.shape)} must be [1, C, D, H, W].`);
  }
  const [nz, ny, nx] = image.shape.slice(2);
  if (labels && labels.shape.slice(2).join() !== image.shape.slice(2).join()) {
    throw new Error(
      `augment: labels ${formatShape(labels.shape)} must match the image's spatial size ${
        formatShape(image.shape)
      }.`,
    );
  }
  const random = seededRandom(seed);
  const uniform = (m: number) => (2 * random() - 1) * m;
  const deg = (opts.rotateDegrees ?? 8) * Math.PI / 180;
  const r = rotation(uniform(deg), uniform(deg), uniform(deg));
  const s = 1 + uniform(opts.scale ?? 0.08);
  const flip = random() < (opts.flipProbability ?? 0.5) ? -1 : 1;
  const t = [0, 1, 2].map(() => uniform(opts.translate ?? 1.5));
  // Output voxel o → source p = c + R·S·F·(o − c) + t about the volume centre c.
  const c = [(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2];
  const lin = r.map((row) => row.map((v, j) => v * s * (j === 0 ? flip : 1)));
  const matrix = lin.map((row, i) => [...row, c[i] + t[i] - row.reduce((acc, v, j) => acc + v * c[j], 0)]);
  const elastic = opts.elastic ?? 1;
  const g = opts.elasticGrid ?? 4;
  return noGrad(() => {
    const field = elastic > 0
      ? tensor(Float32Array.from({ length: 3 * g * g * g }, () => gaussian(random) * elastic), [3, g, g, g])
      : undefined;
    const moved = warp3d(image, { matrix, field, mode: "linear", padding: "border" });
    const movedLabels = labels
      ? warp3d(labels, { matrix, field, mode: "nearest", padding: "fill", fill: 0 })
      : undefined;
    field?.dispose();
    const out = jitterIntensity(moved, random, opts, [nz, ny, nx]);
    moved.dispose();
    return { image: out, labels: movedLabels };
  });
}

/** Smooth bias field, then gamma / contrast / brightness jitter, inside the intensity range. */
function jitterIntensity(
  x: Tensor,
  random: () => number,
  opts: AugmentOptions,
  size: [number, number, number],
): Tensor {
  const [r0, r1] = opts.range ?? [-1, 1];
  const bias = opts.biasField ?? 0.15;
  const logGamma = (2 * random() - 1) * (opts.gamma ?? 0.2);
  const contrast = 1 + (2 * random() - 1) * (opts.contrast ?? 0.1);
  const brightness = (2 * random() - 1) * (opts.brightness ?? 0.05);
  let field: Tensor | null = null;
  if (bias > 0) {
    // A 3×3×3 grid of log-gains, upsampled trilinearly over the whole volume.
    const coarse = tensor(Float32Array.from({ length: 27 }, () => gaussian(random) * bias), [1, 3, 3, 3]);
    const [nz, ny, nx] = size;
    const scale = (n: number) => (n > 1 ? 2 / (n - 1) : 0);
    field = warp3d(coarse, {
      size,
      matrix: [[scale(nx), 0, 0, 0], [0, scale(ny), 0, 0], [0, 0, scale(nz), 0]],
      padding: "border",
    });
    coarse.dispose();
  }
  // u = (x − r0)/(r1 − r0) ∈ [0, 1]; u ← clamp((u·gain)^γ·c + d) with d = ½ − ½c + brightness; back to range.
  // The range is a constant of a training run, so it is baked into the kernel; the random values are scalars.
  const lo = r0.toPrecision(9);
  const span = (r1 - r0).toPrecision(9);
  const gain = field ? "exp(b)" : "1.0";
  const expr =
    `${lo} + ${span} * clamp(pow(max((a - ${lo}) / ${span} * ${gain}, 0.0), s0) * s1 + s2, 0.0, 1.0)`;
  const scalars = [Math.exp(logGamma), contrast, 0.5 - 0.5 * contrast + brightness];
  const name = `intensity_jitter_${field ? "bias" : "plain"}_${lo}_${span}`;
  const out = map(name, expr, field ? [x, field] : [x], scalars);
  field?.dispose();
  return out;
}

/** Options of {@linkcode augmentedBatches}. */
export interface BatchOptions {
  /** Volumes per batch. */
  batch: number;
  /** Seed of the augmentation draws. */
  seed: number;
  /** Augmentation strengths, or null to use the volumes as they are. */
  augment: AugmentOptions | null;
}

/** The draw number k of batch item b at (step, micro) in {@linkcode augmentedBatches}: it picks volume k mod N. */
export function batchDraw(step: number, micro: number, b: number): number {
  return (step * 7919 + micro * 104729 + b * 31) >>> 0;
}

/**
 * A deterministic batch source for the training loop: batch b of micro-step `micro` at `step` takes volume
 * k mod N with k = step·7919 + micro·104729 + b·31, augmented with seed `seed·2654435761 + k` (mod 2³²), and
 * the batch is their concatenation [batch, C, D, H, W]; `sources` lists the index of each item's volume
 * (so a caller can attach each one's condition). `paired` volumes (one per source, e.g. condition masks)
 * are moved with their image (nearest sampling, no intensity changes) and batched as `paired`.
 */
export function augmentedBatches(
  sources: readonly Tensor[],
  opts: BatchOptions,
  paired?: readonly Tensor[],
): (step: number, micro: number) => { x0: Tensor; sources: number[]; paired?: Tensor } {
  if (sources.length === 0) throw new Error("augmentedBatches: no source volumes.");
  if (paired && paired.length !== sources.length) {
    throw new Error(`augmentedBatches: ${paired.length} paired volumes for ${sources.length} sources.`);
  }
  const join = (items: Tensor[]): Tensor => {
    if (items.length === 1) return items[0];
    const out = concat(items, 0);
    for (const t of items) t.dispose();
    return out;
  };
  return (step, micro) =>
    noGrad(() => {
      const items: Tensor[] = [];
      const pairs: Tensor[] = [];
      const picked: number[] = [];
      for (let b = 0; b < opts.batch; b++) {
        const k = batchDraw(step, micro, b);
        const index = k % sources.length;
        picked.push(index);
        const pair = paired?.[index];
        if (opts.augment) {
          const a = augment(sources[index], (opts.seed * 2654435761 + k) >>> 0, opts.augment, pair);
          items.push(a.image);
          if (a.labels) pairs.push(a.labels);
        } else {
          items.push(concat([sources[index]], 0));
          if (pair) pairs.push(concat([pair], 0));
        }
      }
      return { x0: join(items), sources: picked, ...(paired ? { paired: join(pairs) } : {}) };
    });
}
