/**
 * Normalisation kernels (group norm, layer norm) over a contiguous input seen as `planes` rows of `S`
 * elements, grouped `planesPerRow` at a time into the rows that share statistics:
 *
 * - group norm of `[N, C, ...spatial]`: a plane is one (n, c) channel (S = spatial size) and a row is one
 *   (n, group) of C/G consecutive planes; the affine weight/bias is per plane, indexed by `c = plane % C`
 *   ("channel" affine);
 * - layer norm: a plane is one row of the trailing `normalizedShape` (planesPerRow = 1) and the affine
 *   weight/bias is per element within it ("element" affine).
 *
 * Forward is two kernels: {@linkcode normStatsKernel} (one-pass mean and centred sum of squares of each
 * chunk of a row: Welford per thread, Chan's pairwise merge across the workgroup; `chunks > 1` splits long
 * rows so that a few large groups still fill the GPU) and, for split rows, {@linkcode normStatsCombineKernel}
 * (the same merge over chunks). Then {@linkcode normApplyKernel} normalises, applies the affine map and
 * optionally SiLU.
 *
 * Backward is three: {@linkcode normGradReduceKernel} sums `g'·x̂` and `g'` per plane chunk (g' is the
 * gradient at the affine output, taken back through SiLU when fused), {@linkcode normGradCombineKernel} turns them into the per-row means of the closed
 * form and the channel weight/bias gradients, and {@linkcode normGradApplyKernel} computes
 * dx = rstd·(g'γ − mean(g'γ) − x̂·mean(g'γx̂)).
 *
 * `vec` 4 variants read and write `vec4<f32>`: the engine picks them when S and every offset are multiples
 * of 4. Statistics buffers hold `[mean, rstd]` pairs per row. The element-wise kernels (apply, gradient
 * apply) find their plane from a 2-D grid or by division ({@linkcode NormGrid}); on CPU adapters the
 * index arithmetic, not memory, is what limits them, hence also {@linkcode divHelper}.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Lanes per load of the normalisation kernels: scalar or vec4. */
export type NormVec = 1 | 4;

/** How the affine weight and bias index: one value per plane (group norm) or per element (layer norm). */
export type AffineMode = "channel" | "element";

/** What is baked into an apply or gradient kernel. */
export interface NormVariant {
  /** Lanes per load. */
  vec: NormVec;
  /** Affine indexing. */
  affine: AffineMode;
  /** A weight (γ) buffer is bound. */
  weight: boolean;
  /** A bias (β) buffer is bound. */
  bias: boolean;
  /** SiLU follows the affine map. */
  silu: boolean;
  /** Thread layout of the element-wise kernels (see {@linkcode NormGrid}). */
  grid: NormGrid;
  /** Every numerator divided is below {@linkcode FAST_DIV_LIMIT}, so {@linkcode divHelper}'s fast path applies. */
  fastDiv: boolean;
}

/**
 * Thread layout of the element-wise kernels: "planes" is a 2-D grid, loads within a plane along x and planes
 * along y (folded into z past 65535), so the plane comes from the workgroup id with no division — best for
 * long planes (group norm); "flat" numbers all loads in one range and divides to find the plane — for
 * short planes (layer norm), which would leave most of a workgroup idle in the 2-D grid.
 */
export type NormGrid = "planes" | "flat";

/** Numerators below this may use the float-reciprocal division of {@linkcode divHelper}. */
export const FAST_DIV_LIMIT = 1 << 24;

/** The f32 bits of 1/d, the reciprocal {@linkcode divHelper}'s `div_u` expects. */
export function reciprocalBits(d: number): number {
  const f = new Float32Array([1 / d]);
  return new Uint32Array(f.buffer)[0];
}

/**
 * WGSL \`div_u(n, d, rcp)\` = ⌊n/d⌋ for d ≥ 1 given rcp = f32(1/d) ({@linkcode reciprocalBits}). CPU adapters
 * such as lavapipe have no vector integer division and divide lane by lane; with \`fast\` (n < 2²⁴) the
 * quotient comes instead from the float estimate n·rcp, which is exact for d ≤ 2 and otherwise within
 * 2n/d·2⁻²⁴ < 1 of n/d, so one correction step makes it exact.
 */
export function divHelper(fast: boolean): string {
  if (!fast) return `fn div_u(n: u32, d: u32, rcp: f32) -> u32 { return n / d; }`;
  return /* wgsl */ `
fn div_u(n: u32, d: u32, rcp: f32) -> u32 {
  let q = u32(f32(n) * rcp);
  let r = bitcast<i32>(n - q * d);
  return select(select(q, q + 1u, r >= i32(d)), q - 1u, r < 0);
}`;
}

function vecType(vec: NormVec): string {
  return vec === 4 ? "vec4<f32>" : "f32";
}

/** Sum of the components of a loaded value. */
function hsum(vec: NormVec, e: string): string {
  return vec === 4 ? `dot(${e}, vec4<f32>(1.0))` : e;
}

/**
 * WGSL `seg_sum(v, li, lane)`: the sum of `v` over the `tpr` consecutive threads of a workgroup that share
 * a row, returned to all of them. Call from uniform control flow (it has barriers).
 */
function segmentSum(tpr: number): string {
  if (tpr === 1) return `fn seg_sum(v: f32, li: u32, lane: u32) -> f32 { return v; }`;
  return /* wgsl */ `
var<workgroup> sh: array<f32, ${WG}>;
fn seg_sum(v: f32, li: u32, lane: u32) -> f32 {
  sh[li] = v;
  workgroupBarrier();
  for (var s = ${tpr / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) { sh[li] = sh[li] + sh[li + s]; }
    workgroupBarrier();
  }
  let total = sh[li - lane];
  workgroupBarrier(); // every thread has read before sh is reused
  return total;
}`;
}

/** Threads per row for chunks of `len` loads: enough to give each thread a few loads, at most 256. */
export function normThreadsPerRow(len: number): number {
  let tpr = 1;
  while (tpr < WG && tpr * 4 < len) tpr *= 2;
  return tpr;
}

/** WGSL Chan et al. merge of two (count, mean, M2) summaries: stable, unlike E[x²] − E[x]². */
const STAT = /* wgsl */ `
struct Stat { n: f32, mean: f32, m2: f32 }
fn merge(a: Stat, b: Stat) -> Stat {
  let n = a.n + b.n;
  if (n == 0.0) { return a; }
  let d = b.mean - a.mean;
  let f = b.n / n;
  return Stat(n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f);
}`;

/**
 * WGSL `seg_merge(s, li, lane)`: the merge of the summaries of the `tpr` consecutive threads of a workgroup
 * that share a row, returned to all of them. Call from uniform control flow (it has barriers).
 */
function segmentMerge(tpr: number): string {
  if (tpr === 1) return `fn seg_merge(s: Stat, li: u32, lane: u32) -> Stat { return s; }`;
  return /* wgsl */ `
var<workgroup> sn: array<f32, ${WG}>;
var<workgroup> smean: array<f32, ${WG}>;
var<workgroup> sm2: array<f32, ${WG}>;
fn seg_merge(s: Stat, li: u32, lane: u32) -> Stat {
  sn[li] = s.n;
  smean[li] = s.mean;
  sm2[li] = s.m2;
  workgroupBarrier();
  for (var h = ${tpr / 2}u; h > 0u; h = h >> 1u) {
    if (lane < h) {
      let r = merge(Stat(sn[li], smean[li], sm2[li]), Stat(sn[li + h], smean[li + h], sm2[li + h]));
      sn[li] = r.n;
      smean[li] = r.mean;
      sm2[li] = r.m2;
    }
    workgroupBarrier();
  }
  let first = li - lane;
  return Stat(sn[first], smean[first], sm2[first]);
}`;
}

const STATS_FIELDS = {
  /** Rows × chunks, row length and chunk length in loads, chunks per row. */
  rows: "u32",
  len: "u32",
  chunks: "u32",
  chunkLen: "u32",
  /** Element offset of the input; eps of the variance. */
  inOffset: "u32",
  eps: "f32",
} as const;

/** Uniform layout of {@linkcode normStatsKernel}. */
export const NORM_STATS_UNIFORMS: UniformLayout<typeof STATS_FIELDS> = uniforms("norm:stats", STATS_FIELDS);

const STATS_COMBINE_FIELDS = {
  /** Rows, row length, chunks per row and chunk length in floats; eps of the variance. */
  rows: "u32",
  len: "u32",
  chunks: "u32",
  chunkLen: "u32",
  eps: "f32",
} as const;

/** Uniform layout of {@linkcode normStatsCombineKernel}. */
export const NORM_STATS_COMBINE_UNIFORMS: UniformLayout<typeof STATS_COMBINE_FIELDS> = uniforms(
  "norm:stats_combine",
  STATS_COMBINE_FIELDS,
);

/**
 * The fields the element-wise kernels share (see `locate`): loads, planes, loads per plane, planes per
 * statistics row, channels, and the f32 reciprocals of the three divisors.
 */
const HEAD_FIELDS = {
  loads: "u32",
  planes: "u32",
  planeLoads: "u32",
  planesPerRow: "u32",
  channels: "u32",
  rcpPlaneLoads: "f32",
  rcpPlanesPerRow: "f32",
  rcpChannels: "f32",
} as const;

const APPLY_FIELDS = {
  ...HEAD_FIELDS,
  /** Element offsets of x, weight and bias. */
  xOffset: "u32",
  wOffset: "u32",
  bOffset: "u32",
} as const;

/** Uniform layout of {@linkcode normApplyKernel}. */
export const NORM_APPLY_UNIFORMS: UniformLayout<typeof APPLY_FIELDS> = uniforms("norm:apply", APPLY_FIELDS);

const GRAD_REDUCE_FIELDS = {
  /** Planes × chunks, loads per plane, chunks per plane, loads per chunk, planes per row, channels. */
  virtualPlanes: "u32",
  planeLoads: "u32",
  chunks: "u32",
  chunkLen: "u32",
  planesPerRow: "u32",
  channels: "u32",
  /** Element offsets of x, the output gradient, weight and bias. */
  xOffset: "u32",
  gOffset: "u32",
  wOffset: "u32",
  bOffset: "u32",
} as const;

/** Uniform layout of {@linkcode normGradReduceKernel}. */
export const NORM_GRAD_REDUCE_UNIFORMS: UniformLayout<typeof GRAD_REDUCE_FIELDS> = uniforms(
  "norm:grad_reduce",
  GRAD_REDUCE_FIELDS,
);

const GRAD_COMBINE_FIELDS = {
  /** Rows, planes, chunks per plane, planes per row, channels, floats per row, element offset of the weight. */
  rows: "u32",
  planes: "u32",
  chunks: "u32",
  planesPerRow: "u32",
  channels: "u32",
  rowLen: "u32",
  wOffset: "u32",
} as const;

/** Uniform layout of {@linkcode normGradCombineKernel}. */
export const NORM_GRAD_COMBINE_UNIFORMS: UniformLayout<typeof GRAD_COMBINE_FIELDS> = uniforms(
  "norm:grad_combine",
  GRAD_COMBINE_FIELDS,
);

const GRAD_APPLY_FIELDS = {
  ...HEAD_FIELDS,
  /** Element offsets of x, the output gradient, weight and bias. */
  xOffset: "u32",
  gOffset: "u32",
  wOffset: "u32",
  bOffset: "u32",
} as const;

/** Uniform layout of {@linkcode normGradApplyKernel}. */
export const NORM_GRAD_APPLY_UNIFORMS: UniformLayout<typeof GRAD_APPLY_FIELDS> = uniforms(
  "norm:grad_apply",
  GRAD_APPLY_FIELDS,
);

/**
 * Statistics of each chunk of each row of a contiguous `[rows, len]` input in one pass: every thread runs
 * Welford's update over its loads (vec4 loads are four interleaved streams), then the threads' summaries
 * merge pairwise (Chan et al.) through workgroup memory. Both steps are numerically robust, and one pass
 * is ~1.7× faster than two (mean, then centred squares) on lavapipe. `tpr` threads share a chunk. With
 * `final` (one chunk per row) it writes `[mean, 1/√(M2/len + eps)]` per row; otherwise `[mean, M2]` per
 * chunk for {@linkcode normStatsCombineKernel}.
 *
 * Parameters: {@linkcode NORM_STATS_UNIFORMS} (lengths in loads of `vec` floats, `inOffset` in floats).
 */
export const normStatsKernel: (tpr: number, vec: NormVec, final: boolean) => Kernel = defineKernel(
  "norm:stats",
  (tpr: number, vec: NormVec, final: boolean): KernelSource => {
    const rowsPerWg = WG / tpr;
    const T = vecType(vec);
    const U = NORM_STATS_UNIFORMS;
    const lanes = vec === 4
      ? "merge(merge(Stat(k, mean.x, m2.x), Stat(k, mean.y, m2.y)), merge(Stat(k, mean.z, m2.z), Stat(k, mean.w, m2.w)))"
      : "Stat(k, mean, m2)";
    const code = /* wgsl */ `
  ${NORM_STATS_UNIFORMS.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> src: array<${T}>;
  @group(0) @binding(2) var<storage, read_write> dst: array<f32>;
  ${STAT}
  ${segmentMerge(tpr)}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let lane = li % ${tpr}u;
    let v = linear_workgroup(wid, nwg) * ${rowsPerWg}u + li / ${tpr}u;
    let valid = v < ${U.read("rows")};
    let len = ${U.read("len")};
    let chunks = ${U.read("chunks")};
    let start = (v % chunks) * ${U.read("chunkLen")};
    // Threads past the last row get an empty range and still take part in the barriers.
    let end = select(start, min(len, start + ${U.read("chunkLen")}), valid);
    let base = ${U.read("inOffset")} / ${vec}u + (v / chunks) * len;
    var k = 0.0;
    var mean = ${T}(0.0);
    var m2 = ${T}(0.0);
    for (var j = start + lane; j < end; j = j + ${tpr}u) {
      let x = src[base + j];
      k = k + 1.0;
      let d = x - mean;
      mean = mean + d * (1.0 / k);
      m2 = m2 + d * (x - mean);
    }
    let s = seg_merge(${lanes}, li, lane);
    if (valid && lane == 0u) {
      dst[2u * v] = s.mean;
      dst[2u * v + 1u] = ${final ? `inverseSqrt(s.m2 / s.n + ${U.read("eps")})` : "s.m2"};
    }
  }
  `;
    return {
      code,
      bindings: ["read", "write"],
    };
  },
);

/**
 * Merges the per-chunk `[mean, M2]` pairs of each row with the same pairwise update and writes
 * `[mean, rstd]` per row.
 *
 * Parameters: {@linkcode NORM_STATS_COMBINE_UNIFORMS} (lengths in floats).
 */
export const normStatsCombineKernel: () => Kernel = defineKernel(
  "norm:stats_combine",
  (): KernelSource => {
    const U = NORM_STATS_COMBINE_UNIFORMS;
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> part: array<f32>;
  @group(0) @binding(2) var<storage, read_write> dst: array<f32>;
  ${STAT}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (row >= ${U.read("rows")}) { return; }
    let len = ${U.read("len")};
    let chunks = ${U.read("chunks")};
    let chunk_len = ${U.read("chunkLen")};
    var s = Stat(0.0, 0.0, 0.0);
    for (var k = 0u; k < chunks; k = k + 1u) {
      let p = 2u * (row * chunks + k);
      s = merge(s, Stat(f32(min(len - k * chunk_len, chunk_len)), part[p], part[p + 1u]));
    }
    dst[2u * row] = s.mean;
    dst[2u * row + 1u] = inverseSqrt(s.m2 / s.n + ${U.read("eps")});
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);

/** Storage declarations of the optional weight/bias bindings starting at `first`; returns the next free one. */
function affineBindings(v: NormVariant, first: number): { decl: string; next: number } {
  const T = v.affine === "element" ? vecType(v.vec) : "f32";
  let b = first;
  const lines: string[] = [];
  if (v.weight) lines.push(`@group(0) @binding(${b++}) var<storage, read> weight: array<${T}>;`);
  if (v.bias) lines.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<${T}>;`);
  return { decl: lines.join("\n"), next: b };
}

/**
 * WGSL statements defining `gam` and `bet` (γ and β, 1 and 0 when absent) for the current element: indexed
 * by the channel `c` (channel affine) or by the load index `j` within the plane (element affine), at the
 * weight and bias offsets (in floats) the kernel's uniforms hold.
 */
function affineValues(v: NormVariant, read: (name: "wOffset" | "bOffset") => string): string {
  const T = v.affine === "element" ? vecType(v.vec) : "f32";
  const at = v.affine === "element" ? "j" : "c";
  const unit = v.affine === "element" ? v.vec : 1;
  return [
    `let gam = ${v.weight ? `weight[${read("wOffset")} / ${unit}u + ${at}]` : `${T}(1.0)`};`,
    `let bet = ${v.bias ? `bias[${read("bOffset")} / ${unit}u + ${at}]` : `${T}(0.0)`};`,
  ].join("\n  ");
}

/**
 * WGSL locating this thread's load `i`: its `plane`, load index `j` within the plane, statistics `row` and
 * channel `c`, from the fields of `HEAD_FIELDS`. Returns early for threads past the end.
 */
function locate(grid: NormGrid, read: (name: keyof typeof HEAD_FIELDS) => string): string {
  const find = grid === "planes"
    ? /* wgsl */ `
  let plane = wid.y + wid.z * nwg.y;
  let j = wid.x * ${WG}u + li;
  if (plane >= ${read("planes")} || j >= ${read("planeLoads")}) { return; }
  let i = plane * ${read("planeLoads")} + j;`
    : /* wgsl */ `
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= ${read("loads")}) { return; }
  let plane = div_u(i, ${read("planeLoads")}, ${read("rcpPlaneLoads")});
  let j = i - plane * ${read("planeLoads")};`;
  return `${find}
  let row = div_u(plane, ${read("planesPerRow")}, ${read("rcpPlanesPerRow")});
  let c = plane - div_u(plane, ${read("channels")}, ${read("rcpChannels")}) * ${read("channels")};`;
}

const SILU = /* wgsl */ `
fn sigmoid_of(z: VT) -> VT { return 1.0 / (1.0 + exp(-z)); } // exp overflow gives 0: the right limit
`;

/**
 * y = ((x − mean)·rstd)·γ + β, then SiLU when baked in, one thread per load. The statistics row of a plane
 * is `plane / planesPerRow`, its channel `plane % C`.
 *
 * Parameters: {@linkcode NORM_APPLY_UNIFORMS}. Bindings: x, stats, [weight], [bias], out.
 */
export const normApplyKernel: (v: NormVariant) => Kernel = defineKernel(
  "norm:apply",
  (v: NormVariant): KernelSource => {
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 3);
    const U = NORM_APPLY_UNIFORMS;
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  ${divHelper(v.fastDiv)}
  @group(0) @binding(1) var<storage, read> x: array<${T}>;
  @group(0) @binding(2) var<storage, read> stats: array<f32>;
  ${decl}
  @group(0) @binding(${next}) var<storage, read_write> out: array<${T}>;
  ${SILU.replaceAll("VT", T)}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
  ${locate(v.grid, U.read)}
    ${affineValues(v, U.read)}
    let xh = (x[${U.read("xOffset")} / ${v.vec}u + i] - stats[2u * row]) * stats[2u * row + 1u];
    let z = xh * gam + bet;
    out[i] = ${v.silu ? "z * sigmoid_of(z)" : "z"};
  }
  `;
    return {
      code,
      bindings: [
        "read",
        "read",
        ...(v.weight ? ["read" as const] : []),
        ...(v.bias ? ["read" as const] : []),
        "write",
      ],
    };
  },
);

/**
 * WGSL statements giving `xh` (x̂), `gp` (the gradient at the affine output, i.e. through SiLU when baked
 * in) for load `i`, with `mean`, `rstd`, `gam` and `bet` in scope.
 */
function gradAtAffine(v: NormVariant, read: (name: "xOffset" | "gOffset") => string): string {
  return /* wgsl */ `
  let xh = (x[${read("xOffset")} / ${v.vec}u + i] - mean) * rstd;
  ${
    v.silu
      ? `let z = xh * gam + bet;
  let sg = sigmoid_of(z);
  let gp = g[${read("gOffset")} / ${v.vec}u + i] * (sg * (1.0 + z * (1.0 - sg)));`
      : `let gp = g[${read("gOffset")} / ${v.vec}u + i];`
  }`;
}

/**
 * Per chunk of each plane, the partial sums `[Σ g'·x̂·γₑ, Σ g'·γₑ]` where g' is the gradient at the affine
 * output and γₑ is the element weight (element affine) or 1 (channel affine: the combine kernel applies
 * the channel's γ). `tpr` threads share a chunk.
 *
 * Parameters: {@linkcode NORM_GRAD_REDUCE_UNIFORMS} (lengths in loads, offsets in floats).
 * Bindings: x, g, stats, [weight], [bias], partials.
 */
export const normGradReduceKernel: (tpr: number, v: NormVariant) => Kernel = defineKernel(
  "norm:grad_reduce",
  (tpr: number, v: NormVariant): KernelSource => {
    const rowsPerWg = WG / tpr;
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 4);
    const element = v.affine === "element";
    const U = NORM_GRAD_REDUCE_UNIFORMS;
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> x: array<${T}>;
  @group(0) @binding(2) var<storage, read> g: array<${T}>;
  @group(0) @binding(3) var<storage, read> stats: array<f32>;
  ${decl}
  @group(0) @binding(${next}) var<storage, read_write> part: array<f32>;
  ${SILU.replaceAll("VT", T)}
  ${segmentSum(tpr)}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let lane = li % ${tpr}u;
    let vp = linear_workgroup(wid, nwg) * ${rowsPerWg}u + li / ${tpr}u;
    let valid = vp < ${U.read("virtualPlanes")};
    let len = ${U.read("planeLoads")};
    let chunks = ${U.read("chunks")};
    let plane = vp / chunks;
    let start = (vp % chunks) * ${U.read("chunkLen")};
    let end = select(start, min(len, start + ${U.read("chunkLen")}), valid);
    let row = plane / ${U.read("planesPerRow")};
    let c = plane % ${U.read("channels")};
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    ${element ? "" : affineValues(v, U.read)}
    var a = ${T}(0.0);
    var b = ${T}(0.0);
    for (var j = start + lane; j < end; j = j + ${tpr}u) {
      let i = plane * len + j;
      ${element ? affineValues(v, U.read) : ""}
      ${gradAtAffine(v, U.read)}
      ${element ? "a = a + gp * gam * xh;\n    b = b + gp * gam;" : "a = a + gp * xh;\n    b = b + gp;"}
    }
    let sa = seg_sum(${hsum(v.vec, "a")}, li, lane);
    let sb = seg_sum(${hsum(v.vec, "b")}, li, lane);
    if (valid && lane == 0u) {
      part[2u * vp] = sa;
      part[2u * vp + 1u] = sb;
    }
  }
  `;
    return {
      code,
      bindings: [
        "read",
        "read",
        "read",
        ...(v.weight ? ["read" as const] : []),
        ...(v.bias ? ["read" as const] : []),
        "write",
      ],
    };
  },
);

/**
 * From the partial sums of {@linkcode normGradReduceKernel}: per row, `coef = [mean(g'γ), mean(g'γx̂)]`;
 * with channel affine also the weight and bias gradients `dwb = [Σ g'x̂ per channel, Σ g' per channel]`
 * (summed over the batch). One thread per row (and per channel).
 *
 * Parameters: {@linkcode NORM_GRAD_COMBINE_UNIFORMS}.
 * Bindings: partials, [weight], coef, [dwb (channel affine only)].
 */
export const normGradCombineKernel: (v: Pick<NormVariant, "affine" | "weight">) => Kernel = defineKernel(
  "norm:grad_combine",
  (v: Pick<NormVariant, "affine" | "weight">): KernelSource => {
    const channel = v.affine === "channel";
    const weighted = channel && v.weight;
    let b = 2;
    const weightDecl = weighted ? `@group(0) @binding(${b++}) var<storage, read> weight: array<f32>;` : "";
    const coefBinding = b++;
    const dwbDecl = channel ? `@group(0) @binding(${b++}) var<storage, read_write> dwb: array<f32>;` : "";
    const U = NORM_GRAD_COMBINE_UNIFORMS;
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> part: array<f32>;
  ${weightDecl}
  @group(0) @binding(${coefBinding}) var<storage, read_write> coef: array<f32>;
  ${dwbDecl}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let t = linear_workgroup(wid, nwg) * ${WG}u + li;
    let planes = ${U.read("planes")};
    let chunks = ${U.read("chunks")};
    let ppr = ${U.read("planesPerRow")};
    let C = ${U.read("channels")};
    if (t < ${U.read("rows")}) {
      var sa = 0.0;
      var sb = 0.0;
      for (var p = t * ppr; p < (t + 1u) * ppr; p = p + 1u) {
        var a = 0.0;
        var b = 0.0;
        for (var k = 0u; k < chunks; k = k + 1u) {
          a = a + part[2u * (p * chunks + k)];
          b = b + part[2u * (p * chunks + k) + 1u];
        }
        let gam = ${weighted ? `weight[${U.read("wOffset")} + p % C]` : "1.0"};
        sa = sa + gam * a;
        sb = sb + gam * b;
      }
      let inv_len = 1.0 / f32(${U.read("rowLen")});
      coef[2u * t] = sb * inv_len;
      coef[2u * t + 1u] = sa * inv_len;
    }${
      channel
        ? /* wgsl */ `
    if (t < C) {
      var a = 0.0;
      var b = 0.0;
      for (var p = t; p < planes; p = p + C) {
        for (var k = 0u; k < chunks; k = k + 1u) {
          a = a + part[2u * (p * chunks + k)];
          b = b + part[2u * (p * chunks + k) + 1u];
        }
      }
      dwb[t] = a;
      dwb[C + t] = b;
    }`
        : ""
    }
  }
  `;
    return {
      code,
      bindings: [
        "read",
        ...(weighted ? ["read" as const] : []),
        "write",
        ...(channel ? ["write" as const] : []),
      ],
    };
  },
);

/**
 * dx = rstd·(g'γ − mean(g'γ) − x̂·mean(g'γx̂)) per element, with the row means from
 * {@linkcode normGradCombineKernel}.
 *
 * Parameters: {@linkcode NORM_GRAD_APPLY_UNIFORMS}.
 * Bindings: x, g, stats, coef, [weight], [bias], dx.
 */
export const normGradApplyKernel: (v: NormVariant) => Kernel = defineKernel(
  "norm:grad_apply",
  (v: NormVariant): KernelSource => {
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 5);
    const U = NORM_GRAD_APPLY_UNIFORMS;
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  ${divHelper(v.fastDiv)}
  @group(0) @binding(1) var<storage, read> x: array<${T}>;
  @group(0) @binding(2) var<storage, read> g: array<${T}>;
  @group(0) @binding(3) var<storage, read> stats: array<f32>;
  @group(0) @binding(4) var<storage, read> coef: array<f32>;
  ${decl}
  @group(0) @binding(${next}) var<storage, read_write> dx: array<${T}>;
  ${SILU.replaceAll("VT", T)}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
  ${locate(v.grid, U.read)}
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    ${affineValues(v, U.read)}
    ${gradAtAffine(v, U.read)}
    dx[i] = rstd * (gp * gam - coef[2u * row] - xh * coef[2u * row + 1u]);
  }
  `;
    return {
      code,
      bindings: [
        "read",
        "read",
        "read",
        "read",
        ...(v.weight ? ["read" as const] : []),
        ...(v.bias ? ["read" as const] : []),
        "write",
      ],
    };
  },
);
