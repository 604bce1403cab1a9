/**
 * Slabs: crops of a few consecutive slices along z (the axis slice models stack) of whole volumes. A 3-D
 * U-Net trained on slabs is the "3-D DPM, limited" model of the cDPM study (docs/cdpm.md): the cDPM paper's
 * 3-D DPM could only ever generate 32 of the 128 slices, and was scored on those alone.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { concat, slice } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { seededRandom } from "../nn/init.ts";
import type { Batch } from "./train.ts";

/** Where each slab of {@linkcode cropSlabs} starts along z: uniform in 0..D − depth, one per volume. */
export function slabStarts(
  volumes: number,
  volumeDepth: number,
  depth: number,
  random: () => number,
): number[] {
  if (!Number.isInteger(depth) || depth < 1 || depth > volumeDepth) {
    throw new Error(`slab depth must be an integer in 1..${volumeDepth} (the volume depth), got ${depth}.`);
  }
  return Array.from({ length: volumes }, () => Math.floor(random() * (volumeDepth - depth + 1)));
}

/** Crops volume b of [B, C, D, H, W] to slices starts[b] … starts[b] + depth − 1: [B, C, depth, H, W]. */
export function cropSlabs(volumes: Tensor, depth: number, starts: readonly number[]): Tensor {
  if (volumes.rank !== 5) {
    throw new Error(`cropSlabs: volumes ${formatShape(volumes.shape)} must be [B, C, D, H, W].`);
  }
  const [b, c, d] = volumes.shape;
  if (starts.length !== b || starts.some((z) => !Number.isInteger(z) || z < 0 || z + depth > d)) {
    throw new Error(
      `cropSlabs: ${b} slab starts in 0..${d - depth} are needed (depth ${depth} of ${d}), got ${
        JSON.stringify(starts)
      }.`,
    );
  }
  return noGrad(() =>
    scope(() => concat(starts.map((z, i) => slice(volumes, [i, 0, z], [i + 1, c, z + depth])), 0))
  );
}

/**
 * Turns a source of volume batches (e.g. `augmentedBatches`) into batches of random slabs of `depth`
 * slices, one per volume; the positions are drawn from (seed, step, micro-batch), so a resumed run
 * continues the same sequence.
 */
export function slabBatches(
  volumes: (step: number, micro: number) => Batch | Promise<Batch>,
  depth: number,
  seed: number,
): (step: number, micro: number) => Promise<Batch> {
  return async (step, micro) => {
    const batch = await volumes(step, micro);
    try {
      const random = seededRandom((seed * 2246822519 + step * 6151 + micro * 53 + 29) >>> 0);
      const [b, , d] = batch.x0.shape;
      return { x0: cropSlabs(batch.x0, depth, slabStarts(b, d, depth, random)) };
    } finally {
      batch.x0.dispose();
    }
  };
}
