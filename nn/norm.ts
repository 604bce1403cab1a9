/**
 * Normalisation layers with PyTorch's parameter names: `GroupNorm` (`weight`, `bias` [C]) and `LayerNorm`
 * (`weight`, `bias` of the normalised shape). Scales start at one and shifts at zero, like PyTorch.
 *
 * @module
 */

import { ones, zeros } from "../engine/ops/create.ts";
import { groupNorm, groupNormSilu, layerNorm } from "../engine/ops/norm.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Module } from "./module.ts";

/** Options of {@linkcode GroupNorm}. */
export interface GroupNormOptions {
  /** Added to the variance (default 1e-5, PyTorch's; MONAI's U-Net uses 1e-6). */
  eps?: number;
  /** Learnable per-channel scale and shift (default true). */
  affine?: boolean;
}

/** `torch.nn.GroupNorm`: normalises each group of C/G channels of each sample over channels and space. */
export class GroupNorm extends Module {
  /** Scale [numChannels], or null without affine. */
  readonly weight: Tensor | null;
  /** Shift [numChannels], or null without affine. */
  readonly bias: Tensor | null;
  /** Added to the variance. */
  readonly eps: number;

  /** `numChannels` split into `numGroups` groups (the count must divide evenly). */
  constructor(readonly numGroups: number, readonly numChannels: number, opts: GroupNormOptions = {}) {
    super();
    if (
      !Number.isInteger(numGroups) || !Number.isInteger(numChannels) || numGroups < 1 ||
      numChannels < 1 || numChannels % numGroups !== 0
    ) {
      throw new Error(
        `GroupNorm: numChannels (${numChannels}) must be a positive multiple of numGroups (${numGroups}).`,
      );
    }
    this.eps = opts.eps ?? 1e-5;
    const affine = opts.affine ?? true;
    this.weight = affine ? this.param("weight", ones([numChannels])) : null;
    this.bias = affine ? this.param("bias", zeros([numChannels])) : null;
  }

  #check(x: Tensor): void {
    if (x.rank < 2 || x.shape[1] !== this.numChannels) {
      throw new Error(
        `GroupNorm(${this.numGroups}, ${this.numChannels}): input ${
          formatShape(x.shape)
        } must be [N, ${this.numChannels}, ...].`,
      );
    }
  }

  /** Normalises x [N, C, ...]. */
  forward(x: Tensor): Tensor {
    this.#check(x);
    return groupNorm(x, this.numGroups, this.weight ?? undefined, this.bias ?? undefined, this.eps);
  }

  /** `silu(forward(x))` in one fused pass (every U-Net ResnetBlock starts with GN → SiLU). */
  forwardSilu(x: Tensor): Tensor {
    this.#check(x);
    return groupNormSilu(x, this.numGroups, this.weight ?? undefined, this.bias ?? undefined, this.eps);
  }
}

/** Options of {@linkcode LayerNorm}. */
export interface LayerNormOptions {
  /** Added to the variance (default 1e-5, PyTorch's). */
  eps?: number;
  /** Learnable element-wise scale and shift (default true). */
  elementwiseAffine?: boolean;
}

/** `torch.nn.LayerNorm`: normalises over the trailing `normalizedShape` axes. */
export class LayerNorm extends Module {
  /** The trailing shape normalised over. */
  readonly normalizedShape: readonly number[];
  /** Scale of shape `normalizedShape`, or null. */
  readonly weight: Tensor | null;
  /** Shift of shape `normalizedShape`, or null. */
  readonly bias: Tensor | null;
  /** Added to the variance. */
  readonly eps: number;

  /** Normalises over the trailing `normalizedShape` axes (a number is one axis of that size). */
  constructor(normalizedShape: number | readonly number[], opts: LayerNormOptions = {}) {
    super();
    const shape = typeof normalizedShape === "number" ? [normalizedShape] : [...normalizedShape];
    if (shape.length === 0 || shape.some((d) => !Number.isInteger(d) || d < 1)) {
      throw new Error(
        `LayerNorm: normalizedShape ${JSON.stringify(normalizedShape)} must be positive integers.`,
      );
    }
    this.normalizedShape = shape;
    this.eps = opts.eps ?? 1e-5;
    const affine = opts.elementwiseAffine ?? true;
    this.weight = affine ? this.param("weight", ones(shape)) : null;
    this.bias = affine ? this.param("bias", zeros(shape)) : null;
  }

  /** Normalises x [..., ...normalizedShape]. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.normalizedShape, this.weight ?? undefined, this.bias ?? undefined, this.eps);
  }
}
