/**
 * Counter-based random numbers: Philox-4x32-10 (Salmon et al., SC'11; the generator of cuRAND, PyTorch's
 * CUDA RNG and JAX). Each thread turns one 128-bit counter into four 32-bit words and writes four values, so
 * any element can be computed without touching the others and the output does not depend on the launch grid.
 *
 * Thread `t` handles elements `4t … 4t + 3` with counter `[c0 + t (64-bit carry into c1), c1, c2, c3]` and
 * key `[k0, k1]`. Parameters: {@linkcode RANDOM_UNIFORMS}.
 *
 * The transforms avoid the WGSL built-ins whose accuracy the spec leaves loose (`log` has an absolute error
 * bound of 2⁻²¹ near 1; `sin`/`cos` 2⁻¹¹ on [−π, π], unbounded outside): our own range reductions are exact
 * and the polynomials accurate to a few ulp, so normals agree across GPUs to ~1e-7·|z| (up to FMA
 * contraction), and uniforms and raw words bit for bit.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** What a random kernel writes: raw Philox words (u32), uniform [0, 1) or standard normal f32 values. */
export type RandomDistribution = "bits" | "uniform" | "normal";

const RANDOM_FIELDS = {
  /** Values to write, the Philox counter of the first block (4 words, low first), the key (2 words). */
  n: "u32",
  counter: ["u32", 4],
  key: ["u32", 2],
} as const;

/** Uniform layout of the random kernels. */
export const RANDOM_UNIFORMS: UniformLayout<typeof RANDOM_FIELDS> = uniforms("random", RANDOM_FIELDS);

const U = RANDOM_UNIFORMS;

/** Packs the parameters of a random kernel: `n` values from `counter` (4 words) under `key` (2 words). */
export function randomParams(n: number, counter: readonly number[], key: readonly number[]): Uint32Array {
  return U.pack({ n, counter, key });
}

/** WGSL `philox4x32_10(counter, key) -> vec4<u32>`, and its 32×32 → 64-bit multiply. */
export const PHILOX_WGSL = /* wgsl */ `
// The high and low words of a * b. WGSL has no widening multiply: combine 16-bit partial products, each of
// whose sums stays below 2^32 ((2^16 - 1)^2 + 2^16 - 1 = 2^32 - 2^16).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let w0 = a0 * b0;
  let t = a1 * b0 + (w0 >> 16u);
  let w1 = a0 * b1 + (t & 0xffffu);
  return vec2<u32>(a1 * b1 + (t >> 16u) + (w1 >> 16u), a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = counter;
  var k = key;
  for (var r = 0u; r < 10u; r++) {
    if (r > 0u) { k += vec2<u32>(0x9e3779b9u, 0xbb67ae85u); }
    let p0 = mulhilo(0xd2511f53u, c.x);
    let p1 = mulhilo(0xcd9e8d57u, c.z);
    c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
  }
  return c;
}
`;

/** WGSL for turning Philox words into uniform and normal f32 values. */
const TRANSFORMS_WGSL = /* wgsl */ `
const TWO_POW_M24 = 5.9604644775390625e-8; // 2^-24, exact

// Top 24 bits of u as a float in [0, 1): every value is exact in f32.
fn uniform_of(u: u32) -> f32 {
  return f32(u >> 8u) * TWO_POW_M24;
}

// Natural log of a positive normal f32 with a relative error of a few ulp everywhere, including near 1
// (where the built-in's bound is absolute). x = m·2^e with m in [√½, √2); ln m = 2·atanh(s) with
// s = (m − 1)/(m + 1), |s| ≤ 0.172, as an odd series truncated past s^11 (next term < 1e-9 relative).
fn log_accurate(x: f32) -> f32 {
  let bits = bitcast<u32>(x);
  var e = i32(bits >> 23u) - 127;
  var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
  if (m > 1.41421356) {
    m *= 0.5;
    e += 1;
  }
  let f = m - 1.0; // exact (Sterbenz)
  let s = f / (2.0 + f);
  let z = s * s;
  let series = 1.0 + z * (1.0 / 3.0 + z * (1.0 / 5.0 + z * (1.0 / 7.0 + z * (1.0 / 9.0 + z * (1.0 / 11.0)))));
  return f32(e) * 0.69314718055994531 + 2.0 * s * series;
}

// (sin, cos) of 2π·k/2^24 for a 24-bit integer k. The reduction to the nearest quarter turn is exact in
// integers; the remaining angle |x| ≤ π/4 goes through Taylor series truncated below 1e-9.
fn sincos_turns(k: u32) -> vec2<f32> {
  let quarter = (k + 0x200000u) >> 22u; // nearest multiple of 2^22 = a quarter turn, 0..4
  let rest = f32(i32(k) - i32(quarter << 22u)) * (1.0 / 4194304.0); // in [-1/2, 1/2] quarter turns, exact
  let x = rest * 1.5707963267948966;
  let x2 = x * x;
  let s = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362880.0)))));
  let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0 +
    x2 * (-1.0 / 3628800.0)))));
  switch (quarter & 3u) {
    case 0u: { return vec2<f32>(s, c); }
    case 1u: { return vec2<f32>(c, -s); }
    case 2u: { return vec2<f32>(-s, -c); }
    default: { return vec2<f32>(-c, s); }
  }
}

// Box–Muller: r·(cos θ, sin θ) with r = √(−2 ln(1 − u)) (1 − u in (0, 1]: the log is finite) and θ = 2π·u'.
fn box_muller(radius_word: u32, angle_word: u32) -> vec2<f32> {
  let one_minus_u = f32(0x1000000u - (radius_word >> 8u)) * TWO_POW_M24; // exact
  let r = sqrt(max(-2.0 * log_accurate(one_minus_u), 0.0));
  let sc = sincos_turns(angle_word >> 8u);
  return r * vec2<f32>(sc.y, sc.x);
}
`;

const OUTPUT: Record<RandomDistribution, { type: string; values: string }> = {
  bits: { type: "u32", values: "x" },
  uniform: {
    type: "f32",
    values: "vec4<f32>(uniform_of(x.x), uniform_of(x.y), uniform_of(x.z), uniform_of(x.w))",
  },
  normal: { type: "f32", values: "vec4<f32>(box_muller(x.x, x.y), box_muller(x.z, x.w))" },
};

/** The kernel writing `n` values of `dist` from consecutive Philox blocks (one block per thread). */
export const randomKernel: (dist: RandomDistribution) => Kernel = defineKernel(
  (dist) => `random:${dist}`,
  (dist: RandomDistribution): KernelSource => {
    const { type, values } = OUTPUT[dist];
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  ${PHILOX_WGSL}
  ${TRANSFORMS_WGSL}
  @group(0) @binding(1) var<storage, read_write> out: array<${type}>;

  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let t = linear_workgroup(wid, nwg) * ${WG}u + li;
    let n = ${U.read("n")};
    if (t > (n - 1u) >> 2u) { return; } // past the last block (n ≥ 1; written so that 4t cannot overflow)
    let lo = ${U.read("counter", 0)} + t;
    let hi = ${U.read("counter", 1)} + select(0u, 1u, lo < t); // carry of the 64-bit counter
    let x = philox4x32_10(
      vec4<u32>(lo, hi, ${U.read("counter", 2)}, ${U.read("counter", 3)}),
      vec2<u32>(${U.read("key", 0)}, ${U.read("key", 1)}),
    );
    let v = ${values};
    for (var lane = 0u; lane < 4u; lane++) {
      let i = 4u * t + lane;
      if (i < n) { out[i] = v[lane]; }
    }
  }
  `;
    return { code, bindings: ["write"] };
  },
);
