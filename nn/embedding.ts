/**
 * Embeddings: the sinusoidal timestep embedding of diffusion U-Nets, exactly as MONAI's
 * `get_timestep_embedding`, and `Embedding` (`torch.nn.Embedding`, a learned table indexed by class label).
 *
 * @module
 */

import { tensor } from "../engine/ops/create.ts";
import { equal } from "../engine/ops/elementwise.ts";
import { map } from "../engine/ops/map.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { reshape } from "../engine/ops/view.ts";
import { withPrecision } from "../engine/precision.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { seededRandom } from "./init.ts";
import { Module } from "./module.ts";

/** Timesteps: a tensor [N], a list of N numbers, or one number (for a batch of one). */
export type Timesteps = Tensor | readonly number[] | number;

/**
 * The frequencies exp(−ln(maxPeriod)·i/half), i < half, rounded step by step like PyTorch computes them in
 * float32 (the scalar, the product, the quotient and the exponential are each rounded to float32).
 */
function frequencies(half: number, maxPeriod: number): Float32Array {
  const scale = Math.fround(-Math.log(maxPeriod));
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = Math.exp(Math.fround(Math.fround(scale * i) / half));
  return out;
}

function checkDim(dim: number, maxPeriod: number): void {
  if (!Number.isInteger(dim) || dim < 1) {
    throw new Error(`timestepEmbedding: embedding dimension must be a positive integer, got ${dim}.`);
  }
  if (!(maxPeriod > 0)) throw new Error(`timestepEmbedding: maxPeriod must be positive, got ${maxPeriod}.`);
}

// 2π split for range reduction (Cody–Waite): TWO_PI_HI has 8 significant bits, so k·TWO_PI_HI is exact in
// float32 for |k| < 2¹⁶, and the argument is reduced to [−π, π] where WGSL's sin/cos are accurate.
const INV_TWO_PI = "0.15915494";
const TWO_PI_HI = "6.28125";
const TWO_PI_LO = "0.0019353072";
const REDUCED =
  `((a * b) - round((a * b) * ${INV_TWO_PI}) * ${TWO_PI_HI}) - round((a * b) * ${INV_TWO_PI}) * ${TWO_PI_LO}`;

/**
 * MONAI's `get_timestep_embedding`: for timesteps t [N] and half = ⌊dim/2⌋, the frequencies
 * fᵢ = exp(−ln(maxPeriod)·i/half) and the embedding [cos(t·f), sin(t·f)] of shape [N, dim] (a zero column is
 * appended when dim is odd). The argument t·f is rounded to float32 like PyTorch's. Numbers are embedded on
 * the CPU (cos/sin in float64, then rounded); a tensor is embedded on the GPU with its argument reduced to
 * [−π, π] first. Not differentiable (timesteps are data).
 */
export function timestepEmbedding(timesteps: Timesteps, dim: number, maxPeriod = 10000): Tensor {
  checkDim(dim, maxPeriod);
  const half = Math.floor(dim / 2);
  const freqs = frequencies(half, maxPeriod);
  if (typeof timesteps === "number" || Array.isArray(timesteps)) {
    const ts = typeof timesteps === "number" ? [timesteps] : timesteps as readonly number[];
    if (ts.length === 0 || ts.some((t) => !Number.isFinite(t))) {
      throw new Error(
        `timestepEmbedding: timesteps must be finite numbers, got ${JSON.stringify(timesteps)}.`,
      );
    }
    const out = new Float32Array(ts.length * dim);
    ts.forEach((t, n) => {
      const tf = Math.fround(t);
      for (let i = 0; i < half; i++) {
        const arg = Math.fround(tf * freqs[i]);
        out[n * dim + i] = Math.cos(arg);
        out[n * dim + half + i] = Math.sin(arg);
      }
    });
    return tensor(out, [ts.length, dim]);
  }
  const t = timesteps as Tensor;
  if (t.rank !== 1) {
    throw new Error(`timestepEmbedding: timesteps must be a 1-D tensor [N], got ${formatShape(t.shape)}.`);
  }
  // Column table: the frequency of each output column and what it holds (0 cos, 1 sin, 2 zero padding).
  const freqRow = new Float32Array(dim);
  const kindRow = new Float32Array(dim).fill(2);
  for (let i = 0; i < half; i++) {
    freqRow[i] = freqRow[half + i] = freqs[i];
    kindRow[i] = 0;
    kindRow[half + i] = 1;
  }
  // f32 tables and output also inside an f16 forward: t·freq reaches 1000 radians, where f16's spacing is 0.5.
  return withPrecision("f32", () => {
    const column = reshape(t, [t.shape[0], 1]);
    const f = tensor(freqRow, [1, dim]);
    const kind = tensor(kindRow, [1, dim]);
    const out = map(
      "timestep_embedding",
      `select(select(cos(${REDUCED}), sin(${REDUCED}), c == 1.0), 0.0, c == 2.0)`,
      [column, f, kind],
    );
    column.dispose();
    f.dispose();
    kind.dispose();
    return out;
  });
}

/** Options of {@linkcode Embedding}. */
export interface EmbeddingOptions {
  /** Seed of the initial table, drawn from N(0, 1) like PyTorch's (default 0). */
  seed?: number;
}

/** Standard normal values by Box–Muller from a seeded uniform stream. */
function normalTable(n: number, seed: number): Float32Array {
  const random = seededRandom(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - random()));
    const a = 2 * Math.PI * random();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

/**
 * `torch.nn.Embedding`: a learned table `weight` [numEmbeddings, dim]; `forward(indices)` returns the rows
 * [N, dim]. The lookup is a one-hot matrix product, so the table receives gradients. Indices outside
 * [0, numEmbeddings) are an error when given as numbers; in a tensor they select a zero row (checking would
 * need a readback).
 */
export class Embedding extends Module {
  /** The table [numEmbeddings, dim]. */
  readonly weight: Tensor;

  /** A table of `numEmbeddings` rows of width `dim`, drawn from N(0, 1). */
  constructor(readonly numEmbeddings: number, readonly dim: number, opts: EmbeddingOptions = {}) {
    super();
    if (!Number.isInteger(numEmbeddings) || numEmbeddings < 1 || !Number.isInteger(dim) || dim < 1) {
      throw new Error(
        `Embedding: numEmbeddings (${numEmbeddings}) and dim (${dim}) must be positive integers.`,
      );
    }
    this.weight = this.param(
      "weight",
      tensor(normalTable(numEmbeddings * dim, opts.seed ?? 0), [numEmbeddings, dim]),
    );
  }

  /** The rows of `indices` ([N] tensor of integer values, or a list of integers): [N, dim]. */
  forward(indices: Tensor | readonly number[]): Tensor {
    let oneHot: Tensor;
    if (Array.isArray(indices)) {
      const list = indices as readonly number[];
      const bad = list.find((i) => !Number.isInteger(i) || i < 0 || i >= this.numEmbeddings);
      if (list.length === 0 || bad !== undefined) {
        throw new Error(
          `Embedding(${this.numEmbeddings}, ${this.dim}): indices ${
            JSON.stringify(list)
          } must be integers in ` +
            `[0, ${this.numEmbeddings}).`,
        );
      }
      const data = new Float32Array(list.length * this.numEmbeddings);
      list.forEach((i, n) => (data[n * this.numEmbeddings + i] = 1));
      oneHot = tensor(data, [list.length, this.numEmbeddings]);
    } else {
      const t = indices as Tensor;
      if (t.rank !== 1) {
        throw new Error(
          `Embedding(${this.numEmbeddings}, ${this.dim}): indices must be a 1-D tensor [N], got ${
            formatShape(t.shape)
          }.`,
        );
      }
      const column = reshape(t, [t.shape[0], 1]);
      const ids = tensor(Float32Array.from({ length: this.numEmbeddings }, (_, i) => i), [
        1,
        this.numEmbeddings,
      ]);
      oneHot = equal(column, ids);
      column.dispose();
      ids.dispose();
    }
    const out = matmul(oneHot, this.weight);
    oneHot.dispose();
    return out;
  }
}
