/**
 * TenVOO (Li et al., parameter-efficient fine-tuning of 3-D DDPMs with tensor networks): the update of a convolution kernel W [O, I, kD, kH, kW] as a tensor network.
 * The channels are tensorised, I = i0·i1·i2 and O = o0·o1·o2, and ten cores joined by rank-r bonds are
 * contracted into ΔW; the spatial axes sit on separate cores, so the network models spatial structure.
 *
 * Cores (the TenVOO repository's `generate_weights`):
 *
 * | core | TenVOO-L         | TenVOO-Q         |
 * |------|------------------|------------------|
 * | 0    | (i1, i0, r, r)   | (i1, i0, r, r)   |
 * | 1    | (i2, r, r, r)    | (i2, r, r, r)    |
 * | 2    | (kD, r, r, r)    | (kD, r, r, r)    |
 * | 3    | (kH, r, r, r)    | (kH, 1, r, r)    |
 * | 4    | (kW, r, r, r)    | (kW, r, r, r)    |
 * | 5    | (o2, r, r, r)    | (o2, r, r, r)    |
 * | 6    | (o1, r, r, o0)   | (o1, r, r, o0)   |
 * | 7, 8 | (r, r, r, r)     | (r, r, r, r)     |
 * | 9    | (r, r, r)        | (r, r, r, r)     |
 *
 * #P_L = r²(i0i1 + o0o1) + r³(i2 + o2 + kD + kH + kW + 1) + 2r⁴ and
 * #P_Q = r²(i0i1 + o0o1 + kH) + r³(i2 + o2 + kD + kW) + 3r⁴ (Eq. 6). In 2-D, kD = 1 (the paper's remark that
 * TenVOO degenerates to a 2-D convolution when a kernel axis is removed).
 *
 * The cores start kaiming-uniform (relu gain) and a frozen copy T* of them is kept: the layer computes with
 * W − f(T*) + f(T), which equals W at the start while the gradients are not degenerate (section 2.4).
 *
 * @module
 */

import { einsum } from "../engine/ops/einsum.ts";
import { reshape } from "../engine/ops/view.ts";
import { factorize3 } from "./factorize.ts";
import { GAIN, kaimingUniform, type LayerMethod, type MethodOptions, type WeightShape } from "./method.ts";

/**
 * The TenVOO contractions with the output reordered to (o0, o1, o2, i0, i1, i2, kD, kH, kW), which is
 * ΔW [O, I, kD, kH, kW] in row-major order: one reshape, no permutation, and a contiguous result.
 */
export const TENVOO_SPECS = {
  "tenvoo-l": "bade,cefg,xghi,yijk,zklm,Cmno,BopA,fdqh,lrpn,jqr->ABCabcxyz",
  "tenvoo-q": "bade,cefg,xghi,yijk,zjlm,Cmop,BpqA,oqrs,dftr,hlst->ABCabcxyz",
} as const;

/** TenVOO-L or TenVOO-Q. */
export type TenvooVariant = keyof typeof TENVOO_SPECS;

/** Kernel sizes as (kD, kH, kW): 2-D kernels get kD = 1. */
function kernel3(shape: WeightShape, variant: TenvooVariant): [number, number, number] {
  const k = shape.kernel;
  if (k.length === 3) return [k[0], k[1], k[2]];
  if (k.length === 2) return [1, k[0], k[1]];
  throw new Error(
    `${variant}: adapts 2-D and 3-D convolution kernels; a weight with kernel ${JSON.stringify(k)} is not ` +
      "one (linear layers use QuanTA).",
  );
}

/** The core shapes of TenVOO-L/Q for the given factors, rank and kernel. */
export function tenvooCoreShapes(
  variant: TenvooVariant,
  inFactors: readonly number[],
  outFactors: readonly number[],
  kernel: readonly [number, number, number],
  r: number,
): number[][] {
  const [i0, i1, i2] = inFactors;
  const [o0, o1, o2] = outFactors;
  const [kD, kH, kW] = kernel;
  const q = variant === "tenvoo-q";
  return [
    [i1, i0, r, r],
    [i2, r, r, r],
    [kD, r, r, r],
    q ? [kH, 1, r, r] : [kH, r, r, r],
    [kW, r, r, r],
    [o2, r, r, r],
    [o1, r, r, o0],
    [r, r, r, r],
    [r, r, r, r],
    q ? [r, r, r, r] : [r, r, r],
  ];
}

/** Eq. 6 of the TenVOO paper for a convolution of this shape (channels factorised by `factors`, kD = 1 in 2-D). */
export function tenvooParameterCount(
  variant: TenvooVariant,
  shape: WeightShape,
  rank: number,
  factors: Readonly<Record<number, readonly number[]>> = {},
): number {
  const [i0, i1, i2] = factorize3(shape.in, factors);
  const [o0, o1, o2] = factorize3(shape.out, factors);
  const [kD, kH, kW] = kernel3(shape, variant);
  const r = rank;
  return variant === "tenvoo-l"
    ? r ** 2 * (i0 * i1 + o0 * o1) + r ** 3 * (i2 + o2 + kD + kH + kW + 1) + 2 * r ** 4
    : r ** 2 * (i0 * i1 + o0 * o1 + kH) + r ** 3 * (i2 + o2 + kD + kW) + 3 * r ** 4;
}

/**
 * The TenVOO repository's core initialisation: kaiming-uniform with the relu gain on each core viewed as a
 * matrix — (s0·s1, s2·s3) for 4-D cores, (s0·s1/2, 2·s2) for TenVOO-L's 3-D core.
 */
function coreFanIn(s: readonly number[]): number {
  if (s.length === 4) return s[2] * s[3];
  return s[1] > 1 ? 2 * s[2] : s[2];
}

/** TenVOO-L or TenVOO-Q for a convolution weight: cores `tenvoo_weights.0…9`, frozen copy `tenvoo_weights2`. */
export function tenvoo(variant: TenvooVariant, shape: WeightShape, opts: MethodOptions): LayerMethod {
  const kernel = kernel3(shape, variant);
  const inFactors = factorize3(shape.in, opts.factors);
  const outFactors = factorize3(shape.out, opts.factors);
  const shapes = tenvooCoreShapes(variant, inFactors, outFactors, kernel, opts.rank);
  const spec = TENVOO_SPECS[variant];
  const weightShape = [shape.out, shape.in, ...shape.kernel];
  const formula = variant === "tenvoo-l"
    ? "r²(i0i1+o0o1) + r³(i2+o2+kD+kH+kW+1) + 2r⁴"
    : "r²(i0i1+o0o1+kH) + r³(i2+o2+kD+kW) + 3r⁴";
  return {
    kind: variant,
    cores: shapes.map((s, i) => ({
      name: `tenvoo_weights.${i}`,
      shape: s,
      values: kaimingUniform(s, coreFanIn(s), GAIN.relu, opts.random),
    })),
    frozenPrefix: "tenvoo_weights2",
    scale: opts.scale,
    inFactors: [...inFactors],
    outFactors: [...outFactors],
    formulaCount: tenvooParameterCount(variant, shape, opts.rank, opts.factors),
    formula,
    delta(cores) {
      const full = einsum(spec, ...cores);
      const out = reshape(full, weightShape);
      full.dispose();
      return out;
    },
  };
}
