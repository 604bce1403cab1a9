/**
 * Parameter initialisation, deterministic from a seed (PyTorch's default layer initialisations).
 *
 * @module
 */

import { tensor } from "../engine/ops/create.ts";
import { sizeOf } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";

/** A seeded uniform [0, 1) generator (SplitMix32): cheap, deterministic across machines. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

/** A tensor of `shape` with values uniform in [−bound, bound]. */
export function uniform(shape: readonly number[], bound: number, random: () => number): Tensor {
  const data = new Float32Array(sizeOf(shape));
  for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * bound;
  return tensor(data, shape);
}

/**
 * PyTorch's default for Linear and Conv weights and biases: kaiming-uniform with a = √5, which reduces to
 * U(−1/√fanIn, 1/√fanIn) for both.
 */
export function defaultInit(shape: readonly number[], fanIn: number, random: () => number): Tensor {
  return uniform(shape, fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0, random);
}
