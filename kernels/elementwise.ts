/**
 * Strided element-wise kernels: one generator serves copies, fills, unary, binary and ternary maps with
 * NumPy broadcasting and arbitrary input/output strides (views). The rank is baked in (after the engine
 * coalesces dimensions it is usually 1–3) so the index arithmetic unrolls.
 *
 * Parameter block (u32 words): `[n, outOffset, inOffset × arity, shape × rank, outStrides × rank,
 * inStrides × arity × rank, scalars (f32 bits) × 4, first]`; `first` is the element index of the dispatch's
 * first element when an op runs a large index space in pieces (expressions of `i` see the whole space's index).
 *
 * @module
 */

import { INF, type Kernel, LINEAR_INDEX, paramsBlock, WG } from "./types.ts";

/** Number of f32 scalar parameters every map kernel has (`s0`..`s3` in expressions). */
export const MAP_SCALARS = 4;

const INPUT_NAMES = ["a", "b", "c"];

/** Word count of the parameter block of a map kernel. */
export function mapParamWords(arity: number, rank: number): number {
  return 2 + arity + rank + rank + arity * rank + MAP_SCALARS + 1;
}

/**
 * A kernel computing `out[i] = expr(a[i], b[i], c[i], s0..s3)` over a strided index space of `rank`
 * dimensions. `expr` is a WGSL f32 expression over the inputs `a`, `b`, `c` (first `arity` of them) and
 * the scalars `s0`..`s3`, and may use the element's index `i` (u32, counted over the whole index space, also
 * when it runs in pieces). `helpers` is extra WGSL (functions the expression calls).
 */
export function mapKernel(name: string, expr: string, arity: number, rank: number, helpers = ""): Kernel {
  const words = mapParamWords(arity, rank);
  const shapeAt = 2 + arity;
  const outStrideAt = shapeAt + rank;
  const inStrideAt = outStrideAt + rank;
  const scalarAt = inStrideAt + arity * rank;
  const firstAt = scalarAt + MAP_SCALARS;
  const inputs = INPUT_NAMES.slice(0, arity);
  const bindings = inputs.map((n, k) =>
    `@group(0) @binding(${k + 1}) var<storage, read> in_${n}: array<f32>;`
  ).join("\n");
  const lines: string[] = [];
  lines.push(`let i = pu(${firstAt}u) + t;`, `var rem = t;`, `var io = pu(1u);`);
  inputs.forEach((n, k) => lines.push(`var i${n} = pu(${2 + k}u);`));
  for (let d = rank - 1; d >= 0; d--) {
    if (d === 0) lines.push(`{ let c = rem;`);
    else lines.push(`{ let s = pu(${shapeAt + d}u); let c = rem % s; rem = rem / s;`);
    lines.push(`  io += c * pu(${outStrideAt + d}u);`);
    inputs.forEach((n, k) => lines.push(`  i${n} += c * pu(${inStrideAt + k * rank + d}u);`));
    lines.push(`}`);
  }
  inputs.forEach((n) => lines.push(`let ${n} = in_${n}[i${n}];`));
  for (let s = 0; s < MAP_SCALARS; s++) {
    if (expr.includes(`s${s}`)) lines.push(`let s${s} = pf(${scalarAt + s}u);`);
  }
  const code = /* wgsl */ `
${paramsBlock(words)}
${LINEAR_INDEX}
${INF}
${bindings}
@group(0) @binding(${arity + 1}) var<storage, read_write> out: array<f32>;
${helpers}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let t = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (t >= pu(0u)) { return; }
  ${lines.join("\n  ")}
  out[io] = ${expr};
}
`;
  return {
    key: `map:${name}:${arity}:${rank}`,
    code,
    bindings: [...inputs.map(() => "read" as const), "write"],
  };
}

/** Parameter words of a {@linkcode mapVec4Kernel}: `[vec4s, outOffset4, inOffset4 × arity, scalars × 4]`. */
export function mapVec4ParamWords(arity: number): number {
  return 2 + arity + MAP_SCALARS;
}

/**
 * The map kernel for contiguous operands of the same shape whose offsets and length are whole vec4s: each
 * thread loads one vec4 of every input and stores one vec4 (on lavapipe a load costs a per-lane loop, and a
 * vec4 about twice an f32 for four times the data). `expr` is the same scalar expression as for
 * {@linkcode mapKernel}, evaluated per component.
 */
export function mapVec4Kernel(name: string, expr: string, arity: number, helpers = ""): Kernel {
  const inputs = INPUT_NAMES.slice(0, arity);
  const scalarAt = 2 + arity;
  const bindings = inputs.map((n, k) =>
    `@group(0) @binding(${k + 1}) var<storage, read> in_${n}: array<vec4<f32>>;`
  ).join("\n");
  const component = (c: string) => expr.replace(/\b([abc])\b/g, (v) => inputs.includes(v) ? `${v}.${c}` : v);
  const scalars = Array.from({ length: MAP_SCALARS }, (_, s) => s)
    .filter((s) => expr.includes(`s${s}`))
    .map((s) => `let s${s} = pf(${scalarAt + s}u);`).join("\n  ");
  const code = /* wgsl */ `
${paramsBlock(mapVec4ParamWords(arity))}
${LINEAR_INDEX}
${INF}
${bindings}
@group(0) @binding(${arity + 1}) var<storage, read_write> out: array<vec4<f32>>;
${helpers}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= pu(0u)) { return; }
  ${inputs.map((n, k) => `let ${n} = in_${n}[pu(${2 + k}u) + i];`).join("\n  ")}
  ${scalars}
  out[pu(1u) + i] = vec4<f32>(${["x", "y", "z", "w"].map(component).join(", ")});
}
`;
  return {
    key: `map:${name}:${arity}:vec4`,
    code,
    bindings: [...inputs.map(() => "read" as const), "write"],
  };
}

/** WGSL helper functions available to map expressions. */
export const MAP_HELPERS = /* wgsl */ `
fn erf_approx(x: f32) -> f32 {
  // Abramowitz & Stegun 7.1.26 has 1.5e-7 absolute error: below f32 resolution of the result.
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
  return select(-y, y, x >= 0.0);
}
fn sigmoid_f(x: f32) -> f32 {
  // Written so that exp never overflows.
  if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
  let e = exp(x);
  return e / (1.0 + e);
}
fn tanh_f(x: f32) -> f32 {
  let e = exp(-2.0 * abs(x));
  let t = (1.0 - e) / (1.0 + e);
  return select(-t, t, x >= 0.0);
}
fn pow_f(x: f32, y: f32) -> f32 {
  // WGSL's pow is undefined for x <= 0; follow IEEE/PyTorch (integer exponents of negative bases work).
  if (y == 0.0) { return 1.0; }
  if (x == 0.0) { return select(f32_inf(), 0.0, y > 0.0); }
  if (x > 0.0) { return pow(x, y); }
  if (y == floor(y)) {
    let m = pow(-x, y);
    return select(m, -m, abs(y) % 2.0 == 1.0);
  }
  var nan_bits = 0x7fc00000u; // through a variable: Tint rejects a constant NaN (see INF in types.ts)
  return bitcast<f32>(nan_bits);
}
`;
