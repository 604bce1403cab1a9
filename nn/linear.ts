/**
 * `Linear`: y = x·Wᵀ + b over the last dimension, with PyTorch's parameter names and layout
 * (`weight` [out, in], `bias` [out]).
 *
 * @module
 */

import { add } from "../engine/ops/elementwise.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { transpose } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { formatShape } from "../engine/shape.ts";
import { defaultInit, seededRandom } from "./init.ts";
import { Module } from "./module.ts";

/** Options of {@linkcode Linear}. */
export interface LinearOptions {
  /** Add a bias (default true). */
  bias?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** A fully connected layer. */
export class Linear extends Module {
  /** Weight [outFeatures, inFeatures]. */
  readonly weight: Tensor;
  /** Bias [outFeatures], or null. */
  readonly bias: Tensor | null;

  /** A layer mapping `inFeatures` to `outFeatures`, initialised like PyTorch from `opts.seed`. */
  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: LinearOptions = {}) {
    super();
    const random = seededRandom(opts.seed ?? 0);
    this.weight = this.param("weight", defaultInit([outFeatures, inFeatures], inFeatures, random));
    this.bias = (opts.bias ?? true)
      ? this.param("bias", defaultInit([outFeatures], inFeatures, random))
      : null;
  }

  /** Applies the layer to `x` [..., inFeatures]. */
  forward(x: Tensor): Tensor {
    if (x.shape[x.rank - 1] !== this.inFeatures) {
      throw new Error(
        `Linear(${this.inFeatures} → ${this.outFeatures}): input ${
          formatShape(x.shape)
        } must end in ${this.inFeatures}.`,
      );
    }
    const wt = transpose(this.weight);
    const y = matmul(x, wt);
    wt.dispose();
    if (!this.bias) return y;
    const out = add(y, this.bias);
    y.dispose();
    return out;
  }
}
