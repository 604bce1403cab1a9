/**
 * Strided element-wise kernels: one generator serves copies, fills, unary, binary and ternary maps with
 * NumPy broadcasting and arbitrary input/output strides (views). The rank is baked in (after the engine
 * coalesces dimensions it is usually 1–3) so the index arithmetic unrolls.
 *
 * Parameters: see {@linkcode mapUniforms} and {@linkcode mapVec4Uniforms}.
 *
 * @module
 */

import { INF, type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Number of f32 scalar parameters every map kernel has (`s0`..`s3` in expressions). */
export const MAP_SCALARS = 4;

const INPUT_NAMES = ["a", "b", "c"];

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

function mapFields(arity: number, rank: number) {
  return {
    /** Elements, output element offset, input element offsets. */
    n: "u32",
    outOffset: "u32",
    inOffsets: ["u32", arity],
    /** The (coalesced) index space and the element strides of the output and of each input in it. */
    shape: ["u32", rank],
    outStrides: ["u32", rank],
    inStrides: ["u32", arity * rank],
    /** `s0`..`s3` of the expression. */
    scalars: ["f32", MAP_SCALARS],
    /**
     * Index of the dispatch's first element in the whole index space: an op over more than one binding runs
     * in pieces, and expressions of `i` must see the whole space's index.
     */
    first: "u32",
  } as const;
}

/** Uniform layout of a {@linkcode mapKernel} of `arity` inputs over `rank` dimensions. */
export function mapUniforms(arity: number, rank: number): UniformLayout<ReturnType<typeof mapFields>> {
  return uniforms("map", mapFields(arity, rank));
}

/**
 * A kernel computing `out[i] = expr(a[i], b[i], c[i], s0..s3)` over a strided index space of `rank`
 * dimensions. `expr` is a WGSL f32 expression over the inputs `a`, `b`, `c` (first `arity` of them) and
 * the scalars `s0`..`s3`, and may use the element's index `i` (u32, counted over the whole index space, also
 * when the op runs in pieces). The expression may call the functions of {@linkcode MAP_HELPERS}.
 */
export const mapKernel: (name: string, expr: string, arity: number, rank: number) => Kernel = defineKernel(
  (name) => `map:${name}`,
  (_name: string, expr: string, arity: number, rank: number): KernelSource => {
    const U = mapUniforms(arity, rank);
    const inputs = INPUT_NAMES.slice(0, arity);
    const bindings = inputs.map((n, k) =>
      `@group(0) @binding(${k + 1}) var<storage, read> in_${n}: array<f32>;`
    ).join("\n");
    const lines: string[] = [];
    lines.push(`let i = ${U.read("first")} + t;`, `var rem = t;`, `var io = ${U.read("outOffset")};`);
    inputs.forEach((n, k) => lines.push(`var i${n} = ${U.read("inOffsets", k)};`));
    for (let d = rank - 1; d >= 0; d--) {
      if (d === 0) lines.push(`{ let c = rem;`);
      else lines.push(`{ let s = ${U.read("shape", d)}; let c = rem % s; rem = rem / s;`);
      lines.push(`  io += c * ${U.read("outStrides", d)};`);
      inputs.forEach((n, k) => lines.push(`  i${n} += c * ${U.read("inStrides", k * rank + d)};`));
      lines.push(`}`);
    }
    inputs.forEach((n) => lines.push(`let ${n} = in_${n}[i${n}];`));
    for (let s = 0; s < MAP_SCALARS; s++) {
      if (expr.includes(`s${s}`)) lines.push(`let s${s} = ${U.read("scalars", s)};`);
    }
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  ${INF}
  ${bindings}
  @group(0) @binding(${arity + 1}) var<storage, read_write> out: array<f32>;
  ${MAP_HELPERS}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let t = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (t >= ${U.read("n")}) { return; }
    ${lines.join("\n  ")}
    out[io] = ${expr};
  }
  `;
    return {
      code,
      bindings: [...inputs.map(() => "read" as const), "write"],
    };
  },
);

function mapVec4Fields(arity: number) {
  return {
    /** vec4s, output and input offsets in vec4s, `s0`..`s3` of the expression. */
    vec4s: "u32",
    outOffset4: "u32",
    inOffsets4: ["u32", arity],
    scalars: ["f32", MAP_SCALARS],
  } as const;
}

/** Uniform layout of a {@linkcode mapVec4Kernel} of `arity` inputs. */
export function mapVec4Uniforms(arity: number): UniformLayout<ReturnType<typeof mapVec4Fields>> {
  return uniforms("map", mapVec4Fields(arity));
}

/**
 * The map kernel for contiguous operands of the same shape whose offsets and length are whole vec4s: each
 * thread loads one vec4 of every input and stores one vec4 (on lavapipe a load costs a per-lane loop, and a
 * vec4 about twice an f32 for four times the data). `expr` is the same scalar expression as for
 * {@linkcode mapKernel}, evaluated per component.
 */
export const mapVec4Kernel: (name: string, expr: string, arity: number) => Kernel = defineKernel(
  (name) => `map:${name}`,
  (_name: string, expr: string, arity: number): KernelSource => {
    const inputs = INPUT_NAMES.slice(0, arity);
    const U = mapVec4Uniforms(arity);
    const bindings = inputs.map((n, k) =>
      `@group(0) @binding(${k + 1}) var<storage, read> in_${n}: array<vec4<f32>>;`
    ).join("\n");
    const component = (c: string) =>
      expr.replace(/\b([abc])\b/g, (v) => inputs.includes(v) ? `${v}.${c}` : v);
    const scalars = Array.from({ length: MAP_SCALARS }, (_, s) => s)
      .filter((s) => expr.includes(`s${s}`))
      .map((s) => `let s${s} = ${U.read("scalars", s)};`).join("\n  ");
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  ${INF}
  ${bindings}
  @group(0) @binding(${arity + 1}) var<storage, read_write> out: array<vec4<f32>>;
  ${MAP_HELPERS}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (i >= ${U.read("vec4s")}) { return; }
    ${inputs.map((n, k) => `let ${n} = in_${n}[${U.read("inOffsets4", k)} + i];`).join("\n  ")}
    ${scalars}
    out[${U.read("outOffset4")} + i] = vec4<f32>(${["x", "y", "z", "w"].map(component).join(", ")});
  }
  `;
    return {
      code,
      bindings: [...inputs.map(() => "read" as const), "write"],
    };
  },
);
