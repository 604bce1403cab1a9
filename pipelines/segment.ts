/**
 * A segmenter for generated T1 volumes (the stand-in for the SynthSeg the paper implies): 1-D k-means on
 * intensity with four clusters (background, CSF, grey, white matter) started at the template's class means,
 * and the ventricle analogue as the CSF in the central box (pipelines/control_data.ts, the rule that made the
 * conditions). Calibrated on
 * real deformed template volumes against their own deformed labels: that agreement is the ceiling any
 * generator can reach under this segmenter.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { assd, dice, hausdorff95 } from "../metrics/segmentation.ts";
import { augment, type AugmentOptions } from "./augment.ts";
import { type TemplatePair, ventricleMask } from "./control_data.ts";

/** Initial centroids of the clusters: [background, CSF, grey, white] intensities. */
export type TissueCentroids = [number, number, number, number];

/**
 * Centroids from a volume and its labels (0 background, 1 CSF, 2 grey, 3 white): the tissue classes' means,
 * and for the background its 1st intensity percentile (air; the class also holds skull and scalp, whose
 * mean would sit among the tissues).
 */
export function tissueCentroids(image: ArrayLike<number>, labels: ArrayLike<number>): TissueCentroids {
  const sums = [0, 0, 0, 0];
  const counts = [0, 0, 0, 0];
  const background: number[] = [];
  for (let i = 0; i < image.length; i++) {
    const k = Math.round(labels[i]);
    if (k < 0 || k > 3) continue;
    sums[k] += image[i];
    counts[k]++;
    if (k === 0) background.push(image[i]);
  }
  if (counts.some((c) => c === 0)) {
    throw new Error(`tissueCentroids: every class 0..3 needs voxels; counts ${counts.join(", ")}.`);
  }
  background.sort((a, b) => a - b);
  return [
    background[Math.floor(background.length / 100)],
    sums[1] / counts[1],
    sums[2] / counts[2],
    sums[3] / counts[3],
  ];
}

/** Labels 0..3 by 1-D k-means from `init` (centroids stay in their order, so labels keep their meaning). */
export function segmentTissue(image: ArrayLike<number>, init: TissueCentroids, iterations = 20): Uint8Array {
  const centroids = [...init];
  const labels = new Uint8Array(image.length);
  for (let it = 0; it < iterations; it++) {
    const sums = [0, 0, 0, 0];
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < image.length; i++) {
      const v = image[i];
      let best = 0;
      for (let k = 1; k < 4; k++) if (Math.abs(v - centroids[k]) < Math.abs(v - centroids[best])) best = k;
      labels[i] = best;
      sums[best] += v;
      counts[best]++;
    }
    let moved = 0;
    for (let k = 0; k < 4; k++) {
      if (counts[k] === 0) continue;
      const next = sums[k] / counts[k];
      moved = Math.max(moved, Math.abs(next - centroids[k]));
      centroids[k] = next;
    }
    if (moved < 1e-6) break;
  }
  return labels;
}

/** The segmentation of one volume: tissue labels and the ventricle mask. */
export interface Segmentation {
  /** 0 background, 1 CSF, 2 grey, 3 white. */
  tissue: Uint8Array;
  /** 0/1 ventricle analogue. */
  ventricles: Float32Array;
}

/** Segments a volume (x fastest over `shape` [nx, ny, nz]). */
export function segmentVolume(
  image: ArrayLike<number>,
  shape: readonly [number, number, number],
  init: TissueCentroids,
): Segmentation {
  const tissue = segmentTissue(image, init);
  return { tissue, ventricles: ventricleMask(tissue, shape) };
}

/** Agreement of a mask with a reference: Dice, HD95 and ASSD (voxels). */
export interface MaskScores {
  /** Dice. */
  dice: number;
  /** 95th-percentile Hausdorff distance. */
  hd95: number;
  /** Average symmetric surface distance. */
  assd: number;
}

/** Dice, HD95 and ASSD of `pred` against `ref` (0/1 masks, x fastest over `shape` [nx, ny, nz]). */
export function maskScores(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  shape: readonly [number, number, number],
): MaskScores {
  const dims = [shape[2], shape[1], shape[0]];
  const a = { data: pred, shape: dims };
  const b = { data: ref, shape: dims };
  return { dice: dice(a, b), hd95: hausdorff95(a, b), assd: assd(a, b) };
}

/** Calibration of the segmenter on real deformed volumes (means over the volumes). */
export interface SegmenterCeiling {
  /** Volumes scored. */
  volumes: number;
  /** Ventricle mask: Dice, HD95, ASSD. */
  ventricles: MaskScores;
  /** Dice per tissue class (CSF, grey, white). */
  tissueDice: [number, number, number];
}

/**
 * Scores the segmenter on `seeds.length` real volumes: the template pair deformed with each seed (as the
 * training pairs are), segmented, against its own deformed labels.
 */
export async function segmenterCeiling(
  pair: TemplatePair,
  seeds: readonly number[],
  init: TissueCentroids,
  augmentOptions: AugmentOptions,
): Promise<SegmenterCeiling> {
  const [, , nz, ny, nx] = pair.image.shape;
  const shape: [number, number, number] = [nx, ny, nz];
  const voxels = nx * ny * nz;
  const sum: MaskScores = { dice: 0, hd95: 0, assd: 0 };
  const tissueDice: [number, number, number] = [0, 0, 0];
  for (const seed of seeds) {
    const moved = augment(pair.image, seed, augmentOptions, pair.labels);
    const [image, labels] = await Promise.all([moved.image.toArray(), (moved.labels as Tensor).toArray()]);
    moved.image.dispose();
    moved.labels?.dispose();
    const seg = segmentVolume(image, shape, init);
    const refTissue = labels.subarray(0, voxels);
    const refVentricles = labels.subarray(voxels, 2 * voxels);
    const s = maskScores(seg.ventricles, refVentricles, shape);
    sum.dice += s.dice;
    sum.hd95 += s.hd95;
    sum.assd += s.assd;
    for (let k = 1; k <= 3; k++) {
      const dims = [nz, ny, nx];
      tissueDice[k - 1] += dice({ data: seg.tissue, shape: dims }, { data: refTissue, shape: dims }, {
        label: k,
      });
    }
  }
  const n = seeds.length;
  return {
    volumes: n,
    ventricles: { dice: sum.dice / n, hd95: sum.hd95 / n, assd: sum.assd / n },
    tissueDice: tissueDice.map((d) => d / n) as [number, number, number],
  };
}
