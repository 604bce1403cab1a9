/**
 * Convolution as an implicit GEMM in loop-free input-channel chunks, for software adapters (lavapipe).
 *
 * The direct kernel in `conv.ts` keeps its accumulators in registers across a loop over input channels, so
 * every operand — input rows and weights — is a load inside a loop, which llvmpipe compiles to a per-lane
 * scalar loop (~240 instructions per vec4). A strided convolution reuses each loaded input row for fewer
 * taps, so it needs ~1.7× the loads per FMA of a stride-1 one and cannot pass ~12% of the FMA peak that way.
 *
 * This kernel borrows the matmul chunk kernel's design instead (see `matmul.ts` and `bench/README.md`):
 * C[co, position] += Σ_k A[co, k] · B[k, position] with k = (input channel, tap), where one dispatch covers
 * `channels` input channels × all taps and has no loops at all. The weights of the chunk are staged in
 * workgroup memory and read at constant addresses — llvmpipe broadcasts those for free — so each thread's
 * only per-lane loads are one vec4 of B per k (4 adjacent output positions) and one read-modify-write of C
 * per output channel, independent of the stride.
 *
 * B needs 4 adjacent output positions of one tap to be one aligned vec4. {@linkcode convPlanesKernel}
 * makes that so by copying the zero-padded input once per kernel column kw into a "plane" whose element i
 * is input column `i·stride + kw·dilation` (im2col along w only: kw copies instead of taps copies).
 *
 * @module
 */

import type { ConvShapeKey } from "./conv.ts";
import { type Kernel, LINEAR_INDEX } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Geometry of a {@linkcode convChunkKernel}. */
export interface ConvChunkConfig {
  /** Threads per workgroup (a multiple of 8); each owns 4 adjacent output positions. */
  readonly threads: number;
  /** Output channels per workgroup (a multiple of 4); all threads share them. */
  readonly rows: number;
  /** Input channels per dispatch; a dispatch unrolls `channels × taps` k-values. */
  readonly channels: number;
}

const CHUNK_FIELDS = {
  /** Output positions per batch item (od·oh·ow, a multiple of 4), output extents h and w. */
  positions: "u32",
  oh: "u32",
  ow: "u32",
  /** Input channels per group, output channels per group, padded output channels of the packed weights. */
  cinG: "u32",
  coutG: "u32",
  coP: "u32",
  /** Groups; input channels of the whole tensor. */
  groups: "u32",
  cin: "u32",
  /** First input channel (within the group) of this dispatch; 1 for the first dispatch (store, not add). */
  ci0: "u32",
  first: "u32",
  /** Planes in vec4s: per input channel, per kw plane, per padded d row, per padded h row. */
  xChan: "u32",
  xPlane: "u32",
  xRowD: "u32",
  xRowH: "u32",
  /** Output in vec4s: offset, batch stride, channel stride. */
  outOff4: "u32",
  oN4: "u32",
  oC4: "u32",
  /** Bias element offset, 1 when there is a bias. */
  biasOff: "u32",
  hasBias: "u32",
  /** A runtime f32 zero and a never-set guard word (see the kernel). */
  zero: "f32",
  guard: "u32",
} as const;

/** Uniform layout of the chunk kernel's parameters. */
export const CHUNK: UniformLayout<typeof CHUNK_FIELDS> = uniforms("conv3d:chunk", CHUNK_FIELDS);

/**
 * One input-channel chunk of a convolution: `Out[n, g·coutG + co, p] (+)= Σ_{c < channels, tap}
 * Wp[g, ci0 + c, tap, co] · planes[n, g·cinG + ci0 + c, kw, od·sd + kd·dd, oh·sh + kh·dh, ow]` over the
 * positions p = (od, oh, ow) of a contiguous output whose width is a multiple of 4. The first dispatch
 * (`first` = 1) stores bias + sum, later ones add into Out. Input channels past `cinG` and output channels
 * past `coutG` contribute nothing; `Wp` is the [groups, cinG, taps, coP] packing of `conv.ts` with `coP` a
 * multiple of `rows`.
 *
 * Bindings: planes (vec4), packed weights (vec4), bias (any buffer when `hasBias` is 0), out (vec4).
 * Grid: `[ceil(positions / (4·threads)), coP / rows, n · groups]`.
 */
export const convChunkKernel: (key: ConvShapeKey, cfg: ConvChunkConfig) => Kernel = defineKernel(
  "conv3d:chunk",
  (key: ConvShapeKey, cfg: ConvChunkConfig): KernelSource => {
    const { threads: W, rows: TM, channels: CC } = cfg;
    if (W % 8 !== 0 || TM % 4 !== 0 || CC < 1) {
      throw new Error(`convChunkKernel: bad config ${JSON.stringify(cfg)}`);
    }
    const [KD, KH, KW] = key.kernel;
    const [SD, SH] = key.stride;
    const [DD, DH] = key.dilation;
    const taps = KD * KH * KW;
    const depth = CC * taps; // k-values per dispatch
    const quads = TM / 4; // vec4s of weights per k
    const staged = depth * quads;
    const L: string[] = [];
    L.push(`let P = ${CHUNK.read("positions")}; let OH = ${CHUNK.read("oh")}; let OW = ${CHUNK.read("ow")};`);
    L.push(
      `let cinG = ${CHUNK.read("cinG")}; let coutG = ${CHUNK.read("coutG")}; let coP4 = ${
        CHUNK.read("coP")
      } / 4u;`,
    );
    L.push(`let ci0 = ${CHUNK.read("ci0")}; let first = ${CHUNK.read("first")} != 0u;`);
    // A runtime zero: accumulators start from a value with many uses, which keeps LLVM from scalarising the
    // FMA chains into the per-lane store loops (see matmul.ts).
    L.push(`let zero = vec4<f32>(${CHUNK.read("zero")});`);
    L.push(`let g = wid.z % ${CHUNK.read("groups")}; let n = wid.z / ${CHUNK.read("groups")};`);
    L.push(`let row0 = wid.y * ${TM}u;`);
    // Stage the chunk's weights as [k][co/4] vec4s: element e = j·W + li is k = e / quads, quad e % quads.
    L.push(`let w_base = (g * cinG + ci0) * ${taps}u * coP4 + row0 / 4u;`);
    for (let j = 0; j * W < staged; j++) {
      const e = `${j * W}u + li`;
      const bound = (j + 1) * W > staged ? `if (${e} < ${staged}u) ` : "";
      L.push(
        `${bound}{ let e = ${e}; let k = e / ${quads}u; let ok = ci0 + k / ${taps}u < cinG;` +
          ` Ws[e] = select(zero, Wp[select(0u, w_base + k * coP4 + e % ${quads}u, ok)], vec4<bool>(ok)); }`,
      );
    }
    L.push(`workgroupBarrier();`);
    // This thread's 4 output positions and, for every k of the chunk, their 4 input values (one vec4).
    L.push(`let col = (wid.x * ${W}u + li) * 4u; let valid = col < P;`);
    L.push(`let od = col / (OH * OW); let oh = (col / OW) % OH; let ow4 = (col % OW) / 4u;`);
    L.push(`let xChan = ${CHUNK.read("xChan")}; let xPlane = ${CHUNK.read("xPlane")};`);
    L.push(`let xRowD = ${CHUNK.read("xRowD")}; let xRowH = ${CHUNK.read("xRowH")};`);
    L.push(
      `let xb = (n * ${
        CHUNK.read("cin")
      } + g * cinG + ci0) * xChan + od * ${SD}u * xRowD + oh * ${SH}u * xRowH + ow4;`,
    );
    for (let c = 0; c < CC; c++) {
      L.push(`let ok${c} = valid && ci0 + ${c}u < cinG;`);
      for (let kd = 0; kd < KD; kd++) {
        for (let kh = 0; kh < KH; kh++) {
          for (let kw = 0; kw < KW; kw++) {
            const k = (c * KD + kd) * KH * KW + kh * KW + kw;
            const at = `xb + ${c}u * xChan + ${kw}u * xPlane + ${kd * DD}u * xRowD + ${kh * DH}u * xRowH`;
            L.push(`let b${k} = select(zero, X4[select(0u, ${at}, ok${c})], vec4<bool>(ok${c}));`);
          }
        }
      }
    }
    L.push(`var guard = zero;`);
    L.push(`let out_n = ${CHUNK.read("outOff4")} + n * ${CHUNK.read("oN4")} + col / 4u;`);
    L.push(`let oC4 = ${CHUNK.read("oC4")}; let has_bias = ${CHUNK.read("hasBias")} != 0u;`);
    // Four output channels at a time, interleaved so that four independent FMA chains are in flight.
    for (let m0 = 0; m0 < TM; m0 += 4) {
      for (let m = m0; m < m0 + 4; m++) L.push(`var c${m} = zero;`);
      for (let k = 0; k < depth; k++) {
        for (let m = m0; m < m0 + 4; m++) {
          L.push(`c${m} = fma(vec4<f32>(Ws[${k * quads + (m >> 2)}u][${m & 3}]), b${k}, c${m});`);
        }
      }
      for (let m = m0; m < m0 + 4; m++) {
        L.push(
          `if (valid && row0 + ${m}u < coutG) { let co = g * coutG + row0 + ${m}u; let i = out_n + co * oC4;` +
            ` var prev = zero; if (first) { if (has_bias) { prev = vec4<f32>(Bias[${
              CHUNK.read("biasOff")
            } + co]); } }` +
            ` else { prev = Out4[i]; } Out4[i] = prev + c${m}; }`,
          `guard = guard + c${m};`,
        );
      }
    }
    // Never true (the engine passes 0); gives every accumulator a second use, see `zero` above.
    L.push(`if (${CHUNK.read("guard")} == 1u) { Out4[li] = guard; }`);
    const code = /* wgsl */ `
  ${CHUNK.wgsl}
  @group(0) @binding(1) var<storage, read> X4: array<vec4<f32>>;
  @group(0) @binding(2) var<storage, read> Wp: array<vec4<f32>>;
  @group(0) @binding(3) var<storage, read> Bias: array<f32>;
  @group(0) @binding(4) var<storage, read_write> Out4: array<vec4<f32>>;
  var<workgroup> Ws: array<vec4<f32>, ${staged}>;
  @compute @workgroup_size(${W})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    ${L.join("\n  ")}
  }
  `;
    return {
      code,
      bindings: ["read", "read", "read", "write"],
    };
  },
);

const PLANES_FIELDS = {
  /** Plane rows to write (rows × kw × pd × ph). */
  count: "u32",
  /** Planes per channel (kernel w extent), padded d and h extents, vec4s per plane row. */
  kw: "u32",
  pd: "u32",
  ph: "u32",
  row4: "u32",
  /** Source extents. */
  d: "u32",
  h: "u32",
  w: "u32",
  /** Source coordinate of padded index 0 along d, h, w (i32; negative = zero padding). */
  d0: "i32",
  h0: "i32",
  w0: "i32",
  /** Stride and dilation along w; valid elements per plane row; source element offset. */
  sw: "u32",
  dw: "u32",
  ow: "u32",
  xOff: "u32",
} as const;

/** Uniform layout of the planes kernel's parameters. */
export const PLANES: UniformLayout<typeof PLANES_FIELDS> = uniforms("conv3d:planes", PLANES_FIELDS);

/** Threads per workgroup of the planes kernel. */
export const PLANES_WG = 64;

/**
 * Copies the contiguous [rows of] d×h×w volume into `kw` planes per row of the source: plane j, padded row
 * (z, y), element i holds source (z + d0, y + h0, i·sw + j·dw + w0), zero outside the source and for
 * i ≥ ow. Output layout [rows][kw][pd][ph][row4] of vec4s; one thread per plane row of `row4` vec4s
 * (1-D grid, folded): the index arithmetic, integer divisions that a CPU adapter runs lane by lane, is done
 * once per row instead of once per vec4 (6× faster at 32 channels × 32³, 10× at 16 × 64³, same output).
 */
export const convPlanesKernel: () => Kernel = defineKernel(
  "conv3d:planes",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${PLANES.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> X: array<f32>;
  @group(0) @binding(2) var<storage, read_write> Xq: array<vec4<f32>>;
  @compute @workgroup_size(${PLANES_WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let t = linear_workgroup(wid, nwg) * ${PLANES_WG}u + li;
    if (t >= ${PLANES.read("count")}) { return; }
    let R4 = ${PLANES.read("row4")}; let PH = ${PLANES.read("ph")}; let PD = ${PLANES.read("pd")};
    let KW = ${PLANES.read("kw")};
    let y = i32(t % PH) + ${PLANES.read("h0")};
    let z = i32((t / PH) % PD) + ${PLANES.read("d0")};
    let j = (t / (PH * PD)) % KW;
    let row = t / (PH * PD * KW);
    let D = i32(${PLANES.read("d")}); let H = i32(${PLANES.read("h")}); let W = i32(${PLANES.read("w")});
    let OW = ${PLANES.read("ow")}; let SW = ${PLANES.read("sw")};
    let inside = z >= 0 && z < D && y >= 0 && y < H;
    let src = ${
      PLANES.read("xOff")
    } + select(0u, ((row * u32(D) + u32(z)) * u32(H) + u32(y)) * u32(W), inside);
    let x0 = i32(j * ${PLANES.read("dw")}) + ${PLANES.read("w0")};
    for (var v = 0u; v < R4; v++) {
      var out = vec4<f32>(0.0);
      if (inside) {
        for (var e = 0u; e < 4u; e++) {
          let i = v * 4u + e;
          let x = i32(i * SW) + x0;
          if (i < OW && x >= 0 && x < W) { out[e] = X[src + u32(x)]; }
        }
      }
      Xq[t * R4 + v] = out;
    }
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);

/** Geometry of a {@linkcode convWeightGradChunkKernel}. */
export interface ConvWeightGradChunkConfig {
  /** Threads per workgroup (a multiple of 8); each owns one k = (input channel, tap). */
  readonly threads: number;
  /** Output channels per workgroup (a multiple of 4). */
  readonly rows: number;
  /** Groups of 4 output positions per dispatch (the contraction chunk). */
  readonly depth: number;
}

/** The fields of the weight-gradient chunk kernel's parameters for a chunk of `depth` position groups. */
function weightGradChunkFields(depth: number) {
  return {
    /** k-values (input channels × taps), output channels. */
    K: "u32",
    cout: "u32",
    /** Planes in vec4s: batch item's offset, per input channel, per kw plane, per padded d row, per h row. */
    xN: "u32",
    xChan: "u32",
    xPlane: "u32",
    xRowD: "u32",
    xRowH: "u32",
    /** gradOut in vec4s: offset of this batch item and chunk, channel stride. */
    gOff4: "u32",
    gC4: "u32",
    /** Valid position groups in this chunk (≤ depth); 1 for the first dispatch (store, not add). */
    valid: "u32",
    first: "u32",
    /** A runtime f32 zero and a never-set guard word (see `convChunkKernel`). */
    zero: "f32",
    guard: "u32",
    /** The planes offset (vec4s) of each position group's (od·sd, oh·sh, ow/4) row. */
    rows: ["u32", depth],
  } as const;
}

/** Uniform layout of the weight-gradient chunk kernel's parameters for a chunk of `depth` position groups. */
export function weightGradChunkUniforms(
  depth: number,
): UniformLayout<ReturnType<typeof weightGradChunkFields>> {
  return uniforms("conv3d:wgrad-chunk", weightGradChunkFields(depth));
}

/**
 * One position chunk of a convolution's weight gradient (groups = 1): `dW[co, k] (+)= Σ_{j < valid}
 * Σ_{e < 4} gradOut[co, chunk position 4j + e] · planes[ci(k), kw(k), row_j + kd(k)·dd, + kh(k)·dh, e]` with
 * k = (ci, kd, kh, kw) and `row_j` the planes offset of position group j, passed in the uniforms
 * (uniform loads at constant offsets are free on llvmpipe; computing it in the kernel would divide). The
 * chunk of gradOut ([rows][depth] vec4s) is staged in workgroup memory and read at constant addresses; each
 * thread loads one vec4 of planes per position group. The first dispatch stores, later ones add.
 *
 * Bindings: planes (vec4, as {@linkcode convPlanesKernel} writes them for the forward), gradOut (vec4,
 * contiguous [cout][positions]), dW (f32, [cout][K]). Grid: `[ceil(K / threads), ceil(cout / rows), 1]`,
 * one dispatch per (batch item, chunk).
 */
export const convWeightGradChunkKernel: (key: ConvShapeKey, cfg: ConvWeightGradChunkConfig) => Kernel =
  defineKernel(
    "conv3d:wgrad-chunk",
    (key: ConvShapeKey, cfg: ConvWeightGradChunkConfig): KernelSource => {
      const { threads: W, rows: TM, depth: D } = cfg;
      if (W % 8 !== 0 || TM % 4 !== 0 || D < 1) {
        throw new Error(`convWeightGradChunkKernel: bad config ${JSON.stringify(cfg)}`);
      }
      const [KD, KH, KW] = key.kernel;
      const [DD, DH] = key.dilation;
      const taps = KD * KH * KW;
      const staged = TM * D;
      const U = weightGradChunkUniforms(D);
      const L: string[] = [];
      L.push(`let K = ${U.read("K")}; let cout = ${U.read("cout")}; let valid = ${U.read("valid")};`);
      L.push(`let first = ${U.read("first")} != 0u; let zero = vec4<f32>(${U.read("zero")});`);
      L.push(`let row0 = wid.y * ${TM}u; let gC4 = ${U.read("gC4")}; let gOff4 = ${U.read("gOff4")};`);
      // Stage gradOut's chunk as [co][j] vec4s: element e = i·W + li is channel e / D, position group e % D.
      for (let i = 0; i * W < staged; i++) {
        const e = `${i * W}u + li`;
        const bound = (i + 1) * W > staged ? `if (${e} < ${staged}u) ` : "";
        L.push(
          `${bound}{ let e = ${e}; let co = row0 + e / ${D}u; let ok = co < cout && e % ${D}u < valid;` +
            ` Gs[e] = select(zero, G4[select(0u, gOff4 + co * gC4 + e % ${D}u, ok)], vec4<bool>(ok)); }`,
        );
      }
      L.push(`workgroupBarrier();`);
      L.push(`let k = wid.x * ${W}u + li; let kvalid = k < K;`);
      L.push(`let ci = k / ${taps}u; let tap = k % ${taps}u;`);
      L.push(`let kd = tap / ${KH * KW}u; let kh = (tap / ${KW}u) % ${KH}u; let kw = tap % ${KW}u;`);
      L.push(
        `let tb = ${U.read("xN")} + ci * ${U.read("xChan")} + kw * ${U.read("xPlane")} + ` +
          `kd * ${DD}u * ${U.read("xRowD")} + kh * ${DH}u * ${U.read("xRowH")};`,
      );
      for (let j = 0; j < D; j++) {
        L.push(
          `let b${j} = select(zero, X4[select(0u, tb + ${U.read("rows", j)}, kvalid && ${j}u < valid)],` +
            ` vec4<bool>(kvalid && ${j}u < valid));`,
        );
      }
      L.push(`var guard = zero;`);
      for (let m0 = 0; m0 < TM; m0 += 4) {
        for (let m = m0; m < m0 + 4; m++) L.push(`var c${m} = zero;`);
        for (let j = 0; j < D; j++) {
          for (let m = m0; m < m0 + 4; m++) L.push(`c${m} = fma(Gs[${m * D + j}u], b${j}, c${m});`);
        }
        for (let m = m0; m < m0 + 4; m++) {
          L.push(
            `if (kvalid && row0 + ${m}u < cout) { let i = (row0 + ${m}u) * K + k;` +
              ` var prev = 0.0; if (!first) { prev = dW[i]; } dW[i] = prev + dot(c${m}, vec4<f32>(1.0)); }`,
            `guard = guard + c${m};`,
          );
        }
      }
      L.push(`if (${U.read("guard")} == 1u) { dW[li] = guard.x; }`);
      const code = /* wgsl */ `
  ${U.wgsl}
  @group(0) @binding(1) var<storage, read> X4: array<vec4<f32>>;
  @group(0) @binding(2) var<storage, read> G4: array<vec4<f32>>;
  @group(0) @binding(3) var<storage, read_write> dW: array<f32>;
  var<workgroup> Gs: array<vec4<f32>, ${staged}>;
  @compute @workgroup_size(${W})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    ${L.join("\n  ")}
  }
  `;
      return {
        code,
        bindings: ["read", "read", "write"],
      };
    },
  );
