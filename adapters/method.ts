/**
 * What every adapter method provides: the shapes and initial values of its cores, whether it keeps a frozen
 * copy of them, and the weight update ΔW built from the cores with differentiable engine ops (so that each
 * training step contracts the cores on the GPU and gradients flow back to them).
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";

/** The adapter methods. TenVOO-L/Q adapt convolutions; their linear layers use QuanTA. */
export type AdapterKind = "locon" | "loha" | "lokr" | "tenvoo-l" | "tenvoo-q" | "quanta";

/** Every adapter kind, in a stable order. */
export const ADAPTER_KINDS: readonly AdapterKind[] = [
  "locon",
  "loha",
  "lokr",
  "tenvoo-l",
  "tenvoo-q",
  "quanta",
];

/** The weight an adapter updates: a Linear [out, in] or a convolution [out, in, …kernel]. */
export interface WeightShape {
  /** Output features or channels. */
  out: number;
  /** Input features or channels. */
  in: number;
  /** Kernel size per spatial axis: [] for a Linear, [kH, kW] in 2-D, [kD, kH, kW] in 3-D. */
  kernel: readonly number[];
}

/** One core tensor of an adapter: its name within the layer, shape and initial values. */
export interface CoreInit {
  /** Name under the adapted layer, e.g. `tenvoo_weights.0` or `lora_down.weight`. */
  name: string;
  /** Shape. */
  shape: number[];
  /** Initial values (row-major). */
  values: Float32Array;
}

/** A method instantiated for one layer's weight shape. */
export interface LayerMethod {
  /** The method used for this layer (TenVOO kinds use "quanta" for linear layers). */
  kind: AdapterKind;
  /** Trainable cores with their initial values. */
  cores: CoreInit[];
  /**
   * Name prefix of the frozen copy T* of the initial cores (`tenvoo_weights2`, `quanta_weights2`), or null
   * for methods that start from ΔW = 0 by zero-initialising a factor (LoCon, LoHa, LoKr).
   */
  frozenPrefix: string | null;
  /** ΔW is multiplied by this (alpha / rank). */
  scale: number;
  /** Factors of the input dimension (TenVOO, QuanTA: three; LoKr: two), or null. */
  inFactors: number[] | null;
  /** Factors of the output dimension, or null. */
  outFactors: number[] | null;
  /** The parameter count of the method's formula for this shape (checked against the cores' sizes). */
  formulaCount: number;
  /** The formula, for summaries (e.g. "r²(i0i1+o0o1) + r³(i2+o2+kD+kH+kW+1) + 2r⁴"). */
  formula: string;
  /** ΔW (unscaled) from the cores, in the weight's layout [out, in, …kernel]. Differentiable. */
  delta(cores: readonly Tensor[]): Tensor;
}

/** Options every method factory receives. */
export interface MethodOptions {
  /** Rank. */
  rank: number;
  /** ΔW scale (alpha / rank). */
  scale: number;
  /** Uniform [0, 1) generator for the initial values (seeded per layer). */
  random: () => number;
  /** Channel-count → three-factor overrides (TenVOO, QuanTA). */
  factors?: Readonly<Record<number, readonly number[]>>;
}

/** Product of the kernel sizes (1 for a Linear). */
export function kernelVolume(shape: WeightShape): number {
  return shape.kernel.reduce((a, b) => a * b, 1);
}

/** Number of elements of a shape. */
export function countOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * PyTorch's `kaiming_uniform_` on a tensor viewed as a matrix with `fanIn` columns: U(−b, b) with
 * b = gain·√(3 / fanIn). Gains: √(1/3) for leaky_relu with a = √5 (LoRA's and LyCORIS's default, which gives
 * b = 1/√fanIn), √2 for relu (TenVOO's cores), 1 for linear (QuanTA's cores).
 */
export function kaimingUniform(
  shape: readonly number[],
  fanIn: number,
  gain: number,
  random: () => number,
): Float32Array {
  const bound = gain * Math.sqrt(3 / fanIn);
  const out = new Float32Array(countOf(shape));
  for (let i = 0; i < out.length; i++) out[i] = (2 * random() - 1) * bound;
  return out;
}

/** Gains of {@linkcode kaimingUniform}. */
export const GAIN = { leakyReluSqrt5: Math.sqrt(1 / 3), relu: Math.SQRT2, linear: 1 } as const;

/** N(0, std²) values by the Box–Muller transform. */
export function normal(shape: readonly number[], std: number, random: () => number): Float32Array {
  const out = new Float32Array(countOf(shape));
  for (let i = 0; i < out.length; i += 2) {
    const u = 1 - random(); // (0, 1]: log(u) is finite
    const radius = Math.sqrt(-2 * Math.log(u)) * std;
    const angle = 2 * Math.PI * random();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < out.length) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}

/** A core of zeros. */
export function zerosOf(shape: readonly number[]): Float32Array {
  return new Float32Array(countOf(shape));
}
