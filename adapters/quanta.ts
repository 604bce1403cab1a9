/**
 * QuanTA (Chen et al., NeurIPS 2024) as the TenVOO repository uses it for linear layers (d = 3): the input
 * and output dimensions are tensorised, I = i0·i1·i2 and O = o0·o1·o2, and ΔW is a "circuit" of three
 * two-axis gates applied over the axis pairs (−1, −2), (−1, −3), (−2, −3).
 *
 * When both sides have the same factors the gates are full (no rank): shapes (o1, o2, i1, i2),
 * (o0, o2, i0, i2), (o0, o1, i0, i1), #P = (i1i2)² + (i0i2)² + (i0i1)². Otherwise the wires between gates
 * carry rank r: (r, r, i1, i2), (r, o2, i0, r), (o0, o1, r, r), #P = r²(i1i2 + i0o2 + o0o1).
 *
 * Gates start kaiming-uniform (linear gain) with a frozen copy, like TenVOO. A convolution adapted with the
 * "quanta" kind is treated as the matrix [O, I·k] (its kernel flattened into the input, as LoCon does).
 *
 * @module
 */

import { einsum } from "../engine/ops/einsum.ts";
import { reshape } from "../engine/ops/view.ts";
import { factorize3 } from "./factorize.ts";
import {
  GAIN,
  kaimingUniform,
  kernelVolume,
  type LayerMethod,
  type MethodOptions,
  type WeightShape,
} from "./method.ts";

/**
 * The circuit: gates "efbc" (axes −1, −2), "diaf" (−1, −3), "ghde" (−2, −3) over input axes a, b, c; the
 * output (g, h, i, a, b, c) is ΔW [O, I] in row-major order.
 */
export const QUANTA_SPEC = "efbc,diaf,ghde->ghiabc";

function sameFactors(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** The input and output factors QuanTA uses for a weight (the input includes the kernel volume). */
export function quantaFactors(
  shape: WeightShape,
  factors: Readonly<Record<number, readonly number[]>> = {},
): { in: number[]; out: number[] } {
  return {
    in: [...factorize3(shape.in * kernelVolume(shape), factors)],
    out: [...factorize3(shape.out, factors)],
  };
}

/** The gate shapes for these factors and rank. */
export function quantaCoreShapes(
  inFactors: readonly number[],
  outFactors: readonly number[],
  r: number,
): number[][] {
  const [i0, i1, i2] = inFactors;
  const [o0, o1, o2] = outFactors;
  return sameFactors(inFactors, outFactors)
    ? [[o1, o2, i1, i2], [o0, o2, i0, i2], [o0, o1, i0, i1]]
    : [[r, r, i1, i2], [r, o2, i0, r], [o0, o1, r, r]];
}

/** QuanTA's parameter count for a weight of this shape. */
export function quantaParameterCount(
  shape: WeightShape,
  rank: number,
  factors: Readonly<Record<number, readonly number[]>> = {},
): number {
  const f = quantaFactors(shape, factors);
  const [i0, i1, i2] = f.in;
  const [o0, o1, o2] = f.out;
  return sameFactors(f.in, f.out)
    ? (i1 * i2) ** 2 + (i0 * i2) ** 2 + (i0 * i1) ** 2
    : rank ** 2 * (i1 * i2 + i0 * o2 + o0 * o1);
}

/** QuanTA for a Linear (or a convolution viewed as [O, I·k]): gates `quanta_weights.0…2`, frozen copy. */
export function quanta(shape: WeightShape, opts: MethodOptions): LayerMethod {
  const f = quantaFactors(shape, opts.factors);
  const shapes = quantaCoreShapes(f.in, f.out, opts.rank);
  const weightShape = [shape.out, shape.in, ...shape.kernel];
  return {
    kind: "quanta",
    cores: shapes.map((s, i) => ({
      name: `quanta_weights.${i}`,
      shape: s,
      // The repository views each gate as the matrix (s0·s1, s2·s3).
      values: kaimingUniform(s, s[2] * s[3], GAIN.linear, opts.random),
    })),
    frozenPrefix: "quanta_weights2",
    scale: opts.scale,
    inFactors: f.in,
    outFactors: f.out,
    formulaCount: quantaParameterCount(shape, opts.rank, opts.factors),
    formula: sameFactors(f.in, f.out) ? "(i1i2)² + (i0i2)² + (i0i1)²" : "r²(i1i2 + i0o2 + o0o1)",
    delta(cores) {
      const full = einsum(QUANTA_SPEC, ...cores);
      const out = reshape(full, weightShape);
      full.dispose();
      return out;
    },
  };
}
