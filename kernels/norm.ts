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

import { type Kernel, LINEAR_INDEX, paramsBlock, WG } from "./types.ts";
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

/**
 * Statistics of each chunk of each row of a contiguous `[rows, len]` input in one pass: every thread runs
 * Welford's update over its loads (vec4 loads are four interleaved streams), then the threads' summaries
 * merge pairwise (Chan et al.) through workgroup memory. Both steps are numerically robust, and one pass
 * is ~1.7× faster than two (mean, then centred squares) on lavapipe. `tpr` threads share a chunk. With
 * `final` (one chunk per row) it writes `[mean, 1/√(M2/len + eps)]` per row; otherwise `[mean, M2]` per
 * chunk for {@linkcode normStatsCombineKernel}.
 *
 * Parameter block (lengths in loads of `vec` floats, `inOffset` in floats):
 * `[virtualRows, len, chunks, chunkLen, inOffset, eps (f32 bits)]`.
 */
export const normStatsKernel: (tpr: number, vec: NormVec, final: boolean) => Kernel = defineKernel(
  "norm:stats",
  (tpr: number, vec: NormVec, final: boolean): KernelSource => {
    const rowsPerWg = WG / tpr;
    const T = vecType(vec);
    const lanes = vec === 4
      ? "merge(merge(Stat(k, mean.x, m2.x), Stat(k, mean.y, m2.y)), merge(Stat(k, mean.z, m2.z), Stat(k, mean.w, m2.w)))"
      : "Stat(k, mean, m2)";
    const code = /* wgsl */ `
  ${paramsBlock(6)}
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
    let valid = v < pu(0u);
    let len = pu(1u);
    let chunks = pu(2u);
    let start = (v % chunks) * pu(3u);
    // Threads past the last row get an empty range and still take part in the barriers.
    let end = select(start, min(len, start + pu(3u)), valid);
    let base = pu(4u) / ${vec}u + (v / chunks) * len;
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
      dst[2u * v + 1u] = ${final ? "inverseSqrt(s.m2 / s.n + pf(5u))" : "s.m2"};
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
 * Parameter block: `[rows, len, chunks, chunkLen, eps (f32 bits)]` (lengths in floats).
 */
export const normStatsCombineKernel: () => Kernel = defineKernel(
  "norm:stats_combine",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${paramsBlock(5)}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> part: array<f32>;
  @group(0) @binding(2) var<storage, read_write> dst: array<f32>;
  ${STAT}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (row >= pu(0u)) { return; }
    let len = pu(1u);
    let chunks = pu(2u);
    let chunk_len = pu(3u);
    var s = Stat(0.0, 0.0, 0.0);
    for (var k = 0u; k < chunks; k = k + 1u) {
      let p = 2u * (row * chunks + k);
      s = merge(s, Stat(f32(min(len - k * chunk_len, chunk_len)), part[p], part[p + 1u]));
    }
    dst[2u * row] = s.mean;
    dst[2u * row + 1u] = inverseSqrt(s.m2 / s.n + pf(4u));
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
 * by the channel `c` (channel affine) or by the load index `j` within the plane (element affine). The
 * weight and bias offsets (in floats) are parameter words `wAt` and `wAt + 1`.
 */
function affineValues(v: NormVariant, wAt: number): string {
  const T = v.affine === "element" ? vecType(v.vec) : "f32";
  const at = v.affine === "element" ? "j" : "c";
  const unit = v.affine === "element" ? v.vec : 1;
  return [
    `let gam = ${v.weight ? `weight[pu(${wAt}u) / ${unit}u + ${at}]` : `${T}(1.0)`};`,
    `let bet = ${v.bias ? `bias[pu(${wAt + 1}u) / ${unit}u + ${at}]` : `${T}(0.0)`};`,
  ].join("\n  ");
}

/** Parameter words common to the element-wise kernels; their own words start at {@linkcode HEAD_WORDS}. */
const HEAD_WORDS = 8;

/**
 * WGSL locating this thread's load `i`: its `plane`, load index `j` within the plane, statistics `row` and
 * channel `c`, from the head words `[loads, planes, planeLoads, planesPerRow, C, rcp(planeLoads),
 * rcp(planesPerRow), rcp(C)]`. Returns early for threads past the end.
 */
function locate(grid: NormGrid): string {
  const find = grid === "planes"
    ? /* wgsl */ `
  let plane = wid.y + wid.z * nwg.y;
  let j = wid.x * ${WG}u + li;
  if (plane >= pu(1u) || j >= pu(2u)) { return; }
  let i = plane * pu(2u) + j;`
    : /* wgsl */ `
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= pu(0u)) { return; }
  let plane = div_u(i, pu(2u), pf(5u));
  let j = i - plane * pu(2u);`;
  return `${find}
  let row = div_u(plane, pu(3u), pf(6u));
  let c = plane - div_u(plane, pu(4u), pf(7u)) * pu(4u);`;
}

const SILU = /* wgsl */ `
fn sigmoid_of(z: VT) -> VT { return 1.0 / (1.0 + exp(-z)); } // exp overflow gives 0: the right limit
`;

/**
 * y = ((x − mean)·rstd)·γ + β, then SiLU when baked in, one thread per load. The statistics row of a plane
 * is `plane / planesPerRow`, its channel `plane % C`.
 *
 * Parameter block: the head words of `locate` (reciprocals as f32 bits), then `[xOffset, wOffset,
 * bOffset]` in floats. Bindings: x, stats, [weight], [bias], out.
 */
export const normApplyKernel: (v: NormVariant) => Kernel = defineKernel(
  "norm:apply",
  (v: NormVariant): KernelSource => {
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 3);
    const code = /* wgsl */ `
  ${paramsBlock(HEAD_WORDS + 3)}
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
  ${locate(v.grid)}
    ${affineValues(v, HEAD_WORDS + 1)}
    let xh = (x[pu(${HEAD_WORDS}u) / ${v.vec}u + i] - stats[2u * row]) * stats[2u * row + 1u];
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
function gradAtAffine(v: NormVariant): string {
  return /* wgsl */ `
  let xh = (x[pu(${HEAD_WORDS}u) / ${v.vec}u + i] - mean) * rstd;
  ${
    v.silu
      ? `let z = xh * gam + bet;
  let sg = sigmoid_of(z);
  let gp = g[pu(${HEAD_WORDS + 1}u) / ${v.vec}u + i] * (sg * (1.0 + z * (1.0 - sg)));`
      : `let gp = g[pu(${HEAD_WORDS + 1}u) / ${v.vec}u + i];`
  }`;
}

/**
 * Per chunk of each plane, the partial sums `[Σ g'·x̂·γₑ, Σ g'·γₑ]` where g' is the gradient at the affine
 * output and γₑ is the element weight (element affine) or 1 (channel affine: the combine kernel applies
 * the channel's γ). `tpr` threads share a chunk.
 *
 * Parameter block (lengths in loads, offsets in floats):
 * `[virtualPlanes, planeLoads, chunks, chunkLen, planesPerRow, C, _, _, xOffset, gOffset, wOffset, bOffset]`
 * (offsets at the words of {@linkcode normGradApplyKernel}'s, so both share the gradient expression).
 * Bindings: x, g, stats, [weight], [bias], partials.
 */
export const normGradReduceKernel: (tpr: number, v: NormVariant) => Kernel = defineKernel(
  "norm:grad_reduce",
  (tpr: number, v: NormVariant): KernelSource => {
    const rowsPerWg = WG / tpr;
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 4);
    const element = v.affine === "element";
    const code = /* wgsl */ `
  ${paramsBlock(HEAD_WORDS + 4)}
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
    let valid = vp < pu(0u);
    let len = pu(1u);
    let chunks = pu(2u);
    let plane = vp / chunks;
    let start = (vp % chunks) * pu(3u);
    let end = select(start, min(len, start + pu(3u)), valid);
    let row = plane / pu(4u);
    let c = plane % pu(5u);
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    ${element ? "" : affineValues(v, HEAD_WORDS + 2)}
    var a = ${T}(0.0);
    var b = ${T}(0.0);
    for (var j = start + lane; j < end; j = j + ${tpr}u) {
      let i = plane * len + j;
      ${element ? affineValues(v, HEAD_WORDS + 2) : ""}
      ${gradAtAffine(v)}
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
 * Parameter block: `[rows, planes, chunks, planesPerRow, C, rowLen (floats), wOffset]`.
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
    const code = /* wgsl */ `
  ${paramsBlock(7)}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> part: array<f32>;
  ${weightDecl}
  @group(0) @binding(${coefBinding}) var<storage, read_write> coef: array<f32>;
  ${dwbDecl}
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let t = linear_workgroup(wid, nwg) * ${WG}u + li;
    let planes = pu(1u);
    let chunks = pu(2u);
    let ppr = pu(3u);
    let C = pu(4u);
    if (t < pu(0u)) {
      var sa = 0.0;
      var sb = 0.0;
      for (var p = t * ppr; p < (t + 1u) * ppr; p = p + 1u) {
        var a = 0.0;
        var b = 0.0;
        for (var k = 0u; k < chunks; k = k + 1u) {
          a = a + part[2u * (p * chunks + k)];
          b = b + part[2u * (p * chunks + k) + 1u];
        }
        let gam = ${weighted ? "weight[pu(6u) + p % C]" : "1.0"};
        sa = sa + gam * a;
        sb = sb + gam * b;
      }
      let inv_len = 1.0 / f32(pu(5u));
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
 * Parameter block: the head words of `locate`, then `[xOffset, gOffset, wOffset, bOffset]` in floats.
 * Bindings: x, g, stats, coef, [weight], [bias], dx.
 */
export const normGradApplyKernel: (v: NormVariant) => Kernel = defineKernel(
  "norm:grad_apply",
  (v: NormVariant): KernelSource => {
    const T = vecType(v.vec);
    const { decl, next } = affineBindings(v, 5);
    const code = /* wgsl */ `
  ${paramsBlock(HEAD_WORDS + 4)}
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
  ${locate(v.grid)}
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    ${affineValues(v, HEAD_WORDS + 2)}
    ${gradAtAffine(v)}
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
