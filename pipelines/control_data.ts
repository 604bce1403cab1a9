/**
 * Paired training data for control modules: the MNI template and its tissue map, moved together by the same
 * random deformation (pipelines/augment.ts; labels with nearest sampling), and spatial conditions computed
 * from each pair:
 *
 * - `ventricles`: the CSF component nearest the centre of the template (a lateral-ventricle analogue), found
 *   once on the template and carried by the deformation (1 channel, 0/1);
 * - `tissue`: one-hot CSF, grey and white matter (3 channels);
 * - `outside`: the image outside the brain (a partial image): [image where not brain, else 0; the known mask];
 * - `slices`: every k-th axial slice (super-resolution): [image on kept slices, else 0; the known mask].
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { tensor } from "../engine/ops/create.ts";
import { map } from "../engine/ops/map.ts";
import { concat, slice } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { seededRandom } from "../nn/init.ts";
import { augment, type AugmentOptions } from "./augment.ts";
import { loadLabels, loadVolume, volumeTensor } from "./dataset.ts";
import type { Batch } from "./train.ts";

/** The conditions a paired volume provides. */
export const CONDITION_KINDS = ["ventricles", "tissue", "outside", "slices"] as const;

/** One kind of condition. */
export type ConditionKind = typeof CONDITION_KINDS[number];

/** Channels of each condition kind. */
export const CONDITION_CHANNELS: Readonly<Record<ConditionKind, number>> = {
  ventricles: 1,
  tissue: 3,
  outside: 2,
  slices: 2,
};

/** Checks a list of condition names, with an error naming the accepted ones. */
export function parseConditionKinds(names: readonly string[]): ConditionKind[] {
  if (names.length === 0) throw new Error(`no condition given; accepted: ${CONDITION_KINDS.join(", ")}.`);
  for (const n of names) {
    if (!(CONDITION_KINDS as readonly string[]).includes(n)) {
      throw new Error(`unknown condition "${n}"; accepted: ${CONDITION_KINDS.join(", ")}.`);
    }
  }
  if (new Set(names).size !== names.length) throw new Error(`condition listed twice: ${names.join(", ")}.`);
  return names as ConditionKind[];
}

/** The template pair on the GPU. */
export interface TemplatePair {
  /** The image [1, 1, D, H, W] in the model's intensity range. */
  image: Tensor;
  /** [1, 2, D, H, W]: tissue classes (0 background, 1 CSF, 2 grey, 3 white) and the ventricle mask. */
  labels: Tensor;
}

/**
 * The CSF (label 1) component, 6-connected, with the most voxels in the central box (the middle half along
 * every axis): on a brain template, the lateral ventricles. `labels` is x-fastest over `shape` [nx, ny, nz].
 */
export function ventricleMask(labels: Float32Array, shape: readonly [number, number, number]): Float32Array {
  const [nx, ny, nz] = shape;
  const component = new Int32Array(labels.length).fill(-1);
  const central = (i: number) => {
    const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
    const inside = (v: number, n: number) => v >= n / 4 && v < (3 * n) / 4;
    return inside(x, nx) && inside(y, ny) && inside(z, nz);
  };
  let best = -1;
  let bestCount = 0;
  let next = 0;
  const stack: number[] = [];
  for (let seed = 0; seed < labels.length; seed++) {
    if (labels[seed] !== 1 || component[seed] >= 0) continue;
    const id = next++;
    let count = 0;
    component[seed] = id;
    stack.push(seed);
    while (stack.length) {
      const i = stack.pop()!;
      if (central(i)) count++;
      const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
      const neighbours = [
        x > 0 ? i - 1 : -1,
        x < nx - 1 ? i + 1 : -1,
        y > 0 ? i - nx : -1,
        y < ny - 1 ? i + nx : -1,
        z > 0 ? i - nx * ny : -1,
        z < nz - 1 ? i + nx * ny : -1,
      ];
      for (const j of neighbours) {
        if (j >= 0 && labels[j] === 1 && component[j] < 0) {
          component[j] = id;
          stack.push(j);
        }
      }
    }
    if (count > bestCount) {
      best = id;
      bestCount = count;
    }
  }
  if (best < 0) {
    throw new Error("ventricleMask: no CSF voxel (label 1) in the central box of the tissue map.");
  }
  return Float32Array.from(component, (c) => (c === best ? 1 : 0));
}

/**
 * Loads the template and its tissue map onto a model grid (`shape` [nx, ny, nz], fitted to the foreground, the
 * image normalised to `range`) and computes the ventricle mask.
 */
export async function loadTemplatePair(
  imagePath: string,
  labelPath: string,
  shape: [number, number, number],
  range: [number, number],
): Promise<TemplatePair> {
  const volume = await loadVolume(imagePath, { shape, fov: "foreground", range });
  const tissue = await loadLabels(labelPath, volume);
  const ventricles = ventricleMask(tissue.data, shape);
  const image = volumeTensor(volume);
  const labels = noGrad(() =>
    scope(() => concat([volumeTensor(tissue), volumeTensor({ data: ventricles, shape })], 1))
  );
  return { image, labels };
}

/** Options of {@linkcode conditionsOf}. */
export interface ConditionOptions {
  /** `slices` keeps axial slices z ≡ 0 (mod sliceEvery) (default 4). */
  sliceEvery?: number;
}

/**
 * The condition volumes [B, CONDITION_CHANNELS[kind], D, H, W] of images [B, 1, D, H, W] and their labels
 * [B, 2, D, H, W] (tissue, ventricles).
 */
export function conditionsOf(
  kinds: readonly ConditionKind[],
  image: Tensor,
  labels: Tensor,
  opts: ConditionOptions = {},
): Tensor[] {
  const every = opts.sliceEvery ?? 4;
  if (!Number.isInteger(every) || every < 1) {
    throw new Error(`sliceEvery must be a positive integer, got ${every}.`);
  }
  return noGrad(() =>
    kinds.map((kind) =>
      scope(() => {
        const tissue = slice(labels, [0, 0], [labels.shape[0], 1]);
        switch (kind) {
          case "ventricles":
            return map("copy", "a", [slice(labels, [0, 1], [labels.shape[0], 2])]);
          case "tissue":
            return concat(
              [1, 2, 3].map((k) => map(`onehot_${k}`, `select(0.0, 1.0, round(a) == ${k}.0)`, [tissue])),
              1,
            );
          case "outside": {
            const known = map("outside_mask", "select(0.0, 1.0, round(a) == 0.0)", [tissue]);
            return concat([map("mul", "a * b", [image, known]), known], 1);
          }
          case "slices": {
            const d = image.shape[2];
            const rows = tensor(Float32Array.from({ length: d }, (_, z) => (z % every === 0 ? 1 : 0)), [
              1,
              1,
              d,
              1,
              1,
            ]);
            // Both broadcast over the image's shape.
            const known = map("broadcast_b", "b + 0.0 * a", [image, rows]);
            return concat([map("mul", "a * b", [image, rows]), known], 1);
          }
        }
      })
    )
  );
}

/** Options of {@linkcode pairedBatches}. */
export interface PairedBatchOptions {
  /** Pairs per batch. */
  batch: number;
  /** Seed of the deformations and of the modality latent dropout. */
  seed: number;
  /** The conditions each batch carries, in order. */
  conditions: readonly ConditionKind[];
  /** Deformation strengths (defaults of augment.ts, in the model's intensity range). */
  augment: AugmentOptions;
  /**
   * Number of distinct training pairs (a fixed pool of deformations, e.g. the paper's 10 or 50); 0 draws a new
   * deformation for every sample (default 0).
   */
  pool?: number;
  /**
   * Modality latent dropout with several conditions (default true): per sample, all conditions with
   * probability 0.4, else one of them, chosen uniformly (the paper's mask 0.3 / skull 0.3 / both 0.4 for two).
   */
  latentDropout?: boolean;
  /** See {@linkcode ConditionOptions}. */
  sliceEvery?: number;
}

/** The deformation seed of training pair `index` (pairs of a pool repeat; validation uses other seeds). */
export function pairSeed(seed: number, index: number): number {
  return (seed * 2654435761 + index * 40503 + 17) >>> 0;
}

/**
 * A deterministic batch source for `train`: sample b of micro-step `micro` at `step` is pair k = step·7919 +
 * micro·104729 + b·31 (mod `pool` when a pool is set), deformed with {@linkcode pairSeed}; the batch carries
 * the image as x0 and the conditions as `control`.
 */
export function pairedBatches(
  pair: TemplatePair,
  opts: PairedBatchOptions,
): (step: number, micro: number) => Batch {
  const pool = opts.pool ?? 0;
  return (step, micro) =>
    noGrad(() => {
      const images: Tensor[] = [];
      const labels: Tensor[] = [];
      for (let b = 0; b < opts.batch; b++) {
        const k = (step * 7919 + micro * 104729 + b * 31) >>> 0;
        const moved = augment(
          pair.image,
          pairSeed(opts.seed, pool > 0 ? k % pool : k),
          opts.augment,
          pair.labels,
        );
        images.push(moved.image);
        labels.push(moved.labels!);
      }
      const x0 = images.length === 1 ? images[0] : concat(images, 0);
      const lab = labels.length === 1 ? labels[0] : concat(labels, 0);
      const conditions = conditionsOf(opts.conditions, x0, lab, { sliceEvery: opts.sliceEvery });
      if (images.length > 1) { for (const t of [...images, ...labels]) t.dispose(); }
      else lab.dispose();
      const n = opts.conditions.length;
      let keep: number[][] | undefined;
      if (n > 1 && (opts.latentDropout ?? true)) {
        const random = seededRandom((opts.seed * 7 + step * 131 + micro * 17 + 5) >>> 0);
        keep = opts.conditions.map(() => new Array<number>(opts.batch).fill(1));
        for (let b = 0; b < opts.batch; b++) {
          if (random() < 0.4) continue;
          const only = Math.min(n - 1, Math.floor(random() * n));
          keep.forEach((row, i) => (row[b] = i === only ? 1 : 0));
        }
      }
      return { x0, control: { conditions, keep } };
    });
}
