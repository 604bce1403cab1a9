/**
 * Training data of slice models (cDPM): which slices of a volume a training example conditions on and
 * which it denoises, and the batch of slots built from them.
 *
 * The index sampler is FDM's (Harvey et al., `train_util.py`), which the cDPM code uses: sets are built
 * from evenly spaced groups of slices whose gap is log-uniform, so short- and long-range pairs both occur.
 * The target set starts with one group; further groups go to the condition or the target set with
 * probability ½ each (indices already taken are dropped) until a group would no longer fit in the slots.
 * Slots left over are filled with slices of another volume (padding), which the slice attention keeps
 * apart from the real slots and the loss ignores.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { tensor } from "../engine/ops/create.ts";
import { concat, reshape, slice } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { SliceInputs, SlotRole } from "../models/slice_unet.ts";
import { seededRandom } from "../nn/init.ts";
import type { Batch } from "./train.ts";

/** The slice indices of one training example. */
export interface SliceSets {
  /** Clean slices the example is conditioned on (ascending; may be empty). */
  condition: number[];
  /** Slices it denoises (ascending; at least one). */
  target: number[];
}

function checkCounts(where: string, depth: number, slots: number): void {
  if (!Number.isInteger(depth) || depth < 1) {
    throw new Error(`${where}: depth must be a positive integer, got ${depth}.`);
  }
  if (!Number.isInteger(slots) || slots < 1) {
    throw new Error(`${where}: slots must be a positive integer, got ${slots}.`);
  }
}

/**
 * One evenly spaced group of slices in 0..depth−1 (FDM's `sample_some_indices`): s ~ U{1..maxCount}
 * slices, a gap g log-uniform in [1, depth/(s − 0.999)], a start uniform in [0, depth − g·(s − 1)); slice
 * i is ⌊start + i·g⌋ (repeats dropped). Redrawn until every slice is inside the volume.
 */
export function sampleIndexGroup(maxCount: number, depth: number, random: () => number): number[] {
  checkCounts("sampleIndexGroup", depth, maxCount);
  for (;;) {
    const s = 1 + Math.floor(random() * maxCount);
    const gap = Math.exp(random() * Math.log(depth / (s - 0.999)));
    const start = random() * (depth - gap * (s - 1));
    const group = Array.from({ length: s }, (_, i) => Math.floor(start + i * gap));
    // A gap below 1 (more slices than the depth allows) repeats slices: each counts once.
    if (group.every((i) => i >= 0 && i < depth)) return [...new Set(group)];
  }
}

/**
 * Condition and target slices for one example with at most `slots` slices in all (FDM's
 * `sample_all_masks`): the target set gets one group, then groups go to either set with probability ½
 * (indices already taken are dropped) until a group would overflow the free slots.
 */
export function sampleSliceSets(depth: number, slots: number, random: () => number): SliceSets {
  checkCounts("sampleSliceSets", depth, slots);
  const condition = new Set<number>();
  const target = new Set<number>(sampleIndexGroup(slots, depth, random));
  // Until a group overflows (or, in a volume with no more slices than slots, until every slice is taken).
  while (condition.size + target.size < depth) {
    const into = random() < 0.5 ? condition : target;
    const group = sampleIndexGroup(slots, depth, random).filter((i) => !condition.has(i) && !target.has(i));
    if (group.length > slots - condition.size - target.size) break;
    for (const i of group) into.add(i);
  }
  const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b);
  return { condition: sorted(condition), target: sorted(target) };
}

/** A batch of slots for a slice model, ready for `train` (its x0, slot layout and loss mask). */
export interface SliceBatch extends Batch {
  /** Slots [B, T, C, H, W]. */
  x0: Tensor;
  /** Roles, indices, depth; `clean` is `x0` itself (freed with it). */
  slices: SliceInputs;
  /** 1 on target slots, [B, T, 1, 1, 1]: the loss is taken there only. */
  lossMask: Tensor;
}

/**
 * Packs volumes [B, C, D, H, W] (slices along D, the first spatial axis) into slots: volume b gets its
 * sampled condition and target slices in ascending order in the first slots, and the remaining slots hold
 * random slices of volume (b + 1) mod B as padding (of itself when B = 1: still kept apart by the masks).
 */
export function packSlices(volumes: Tensor, slots: number, random: () => number): SliceBatch {
  if (volumes.rank !== 5) {
    throw new Error(`packSlices: volumes ${formatShape(volumes.shape)} must be [B, C, D, H, W].`);
  }
  const [b, c, depth, h, w] = volumes.shape;
  checkCounts("packSlices", depth, slots);
  const roles: SlotRole[][] = [];
  const indices: number[][] = [];
  const source: number[][] = []; // the volume each slot's slice comes from
  for (let i = 0; i < b; i++) {
    const sets = sampleSliceSets(depth, slots, random);
    const chosen = [...sets.condition, ...sets.target].sort((x, y) => x - y);
    const isCondition = new Set(sets.condition);
    const pads = Array.from({ length: slots - chosen.length }, () => Math.floor(random() * depth));
    roles.push([
      ...chosen.map((k): SlotRole => isCondition.has(k) ? "condition" : "target"),
      ...pads.map((): SlotRole => "padding"),
    ]);
    indices.push([...chosen, ...pads]);
    source.push([...chosen.map(() => i), ...pads.map(() => (i + 1) % b)]);
  }
  const x0 = noGrad(() =>
    scope(() => {
      const parts = source.flatMap((row, i) =>
        row.map((v, t) =>
          reshape(slice(volumes, [v, 0, indices[i][t]], [v + 1, c, indices[i][t] + 1]), [1, c, h, w])
        )
      );
      return reshape(concat(parts, 0), [b, slots, c, h, w]);
    })
  );
  const lossMask = tensor(roles.flat().map((r) => (r === "target" ? 1 : 0)), [b, slots, 1, 1, 1]);
  return { x0, slices: { roles, indices, depth, clean: x0 }, lossMask };
}

/**
 * Training examples of a network without slice attention (the "2-D independent" baseline): `perVolume`
 * distinct random slices of each volume [B, C, D, H, W], each its own example of one target slot — x0
 * [B·perVolume, 1, C, H, W] — so that each slice gets its own timestep. Only the slice index tells the
 * network where the slice is.
 */
export function packIndependentSlices(volumes: Tensor, perVolume: number, random: () => number): SliceBatch {
  if (volumes.rank !== 5) {
    throw new Error(`packIndependentSlices: volumes ${formatShape(volumes.shape)} must be [B, C, D, H, W].`);
  }
  const [b, c, depth, h, w] = volumes.shape;
  checkCounts("packIndependentSlices", depth, perVolume);
  if (perVolume > depth) {
    throw new Error(
      `packIndependentSlices: ${perVolume} distinct slices per volume, but the depth is ${depth}.`,
    );
  }
  const picks: Array<[number, number]> = []; // [volume, slice]
  for (let v = 0; v < b; v++) {
    const order = Array.from({ length: depth }, (_, z) => z);
    for (let i = 0; i < perVolume; i++) {
      const j = i + Math.floor(random() * (depth - i)); // partial Fisher–Yates: distinct slices
      [order[i], order[j]] = [order[j], order[i]];
      picks.push([v, order[i]]);
    }
  }
  const x0 = noGrad(() =>
    scope(() =>
      reshape(
        concat(picks.map(([v, z]) => reshape(slice(volumes, [v, 0, z], [v + 1, c, z + 1]), [1, c, h, w])), 0),
        [picks.length, 1, c, h, w],
      )
    )
  );
  const lossMask = tensor(picks.map(() => 1), [picks.length, 1, 1, 1, 1]);
  return {
    x0,
    slices: { roles: picks.map((): SlotRole[] => ["target"]), indices: picks.map(([, z]) => [z]), depth },
    lossMask,
  };
}

/** Options of {@linkcode sliceBatches}. */
export interface SliceBatchOptions {
  /**
   * Pack `slots` independent slices per volume ({@linkcode packIndependentSlices}: a network without slice
   * attention) instead of one example of `slots` slots per volume (default false).
   */
  independent?: boolean;
}

/**
 * Turns a source of volume batches (e.g. `augmentedBatches`) into a source of slot batches for `train`;
 * the slice choice is drawn from (seed, step, micro-batch), so a resumed run continues the same sequence.
 */
export function sliceBatches(
  volumes: (step: number, micro: number) => Batch | Promise<Batch>,
  slots: number,
  seed: number,
  opts: SliceBatchOptions = {},
): (step: number, micro: number) => Promise<SliceBatch> {
  const pack = opts.independent ? packIndependentSlices : packSlices;
  return async (step, micro) => {
    const batch = await volumes(step, micro);
    try {
      return pack(batch.x0, slots, seededRandom((seed * 2654435761 + step * 7919 + micro * 31 + 17) >>> 0));
    } finally {
      batch.x0.dispose();
    }
  };
}
