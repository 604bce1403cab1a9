/**
 * 3-D convolution kernels (NCDHW, PyTorch cross-correlation semantics): a register-blocked direct
 * convolution used for the forward pass and, phase by phase, for the gradient w.r.t. the input; a
 * weight-gradient kernel that reduces over batch and space; a zero-padding kernel that prepares their
 * inputs; a packing kernel that lays weights out the way the convolution reads them; and an unblocked
 * fallback for geometries the tiles cannot hold.
 *
 * Why direct rather than an im2col GEMM: on lavapipe every load from workgroup or storage memory is a scalar
 * loop over the 8 SIMD lanes (~240 instructions for a vec4, the time of ~120 FMAs), so what pays is FMAs per
 * loaded vec4. A thread here owns `channels × block` outputs; per input channel it loads the input rows of
 * its window once — each row value then serves every kernel tap that reaches it, the reuse im2col throws
 * away — and each tap's weights once, as a vec4 over 4 output channels. With 4 channels × 2×4×4 positions
 * that is 75 vec4 loads for 3456 FMAs at kernel 3³. Kernel size, stride, dilation and tile shape are baked
 * into the code so that every tap and index is a constant; shapes and offsets are uniforms.
 *
 * Inputs arrive zero-padded ({@linkcode convPadKernel}) with rows of whole vec4s, so staging a tile into
 * workgroup memory is a plain vec4 copy: padding, crops and bounds are handled once, outside the hot loops.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** A per-axis triple (depth, height, width). */
export type Triple = readonly [number, number, number];

/** What is baked into a convolution kernel besides its tiling. */
export interface ConvShapeKey {
  /** Kernel extent per axis (taps). */
  kernel: Triple;
  /** Stride per axis. */
  stride: Triple;
  /** Dilation per axis. */
  dilation: Triple;
}

/** How the direct-convolution kernel splits the output among threads. */
export interface ConvTiling {
  /** Output channels per thread; a multiple of 4 (weights are read as vec4 over channels). */
  channels: number;
  /** Output positions per thread along d, h, w; w is a multiple of 4. */
  block: Triple;
  /** Threads along channels, d, h, w (their product is the workgroup size). */
  threads: readonly [number, number, number, number];
  /** Input channels staged into workgroup memory per step. */
  stage: number;
}

const CONV_FIELDS = {
  /** Padded input: channels of the whole tensor, extents d, h and w in vec4s. */
  cin: "u32",
  pd: "u32",
  ph: "u32",
  pw4: "u32",
  /** Input channels per group, output channels per group, padded output-channel stride of the packed weights. */
  cinG: "u32",
  coutG: "u32",
  coP: "u32",
  /** Output extent. */
  od: "u32",
  oh: "u32",
  ow: "u32",
  /** Tiles along d, h, w; output-channel tiles per group; groups. */
  tilesD: "u32",
  tilesH: "u32",
  tilesW: "u32",
  coTiles: "u32",
  groups: "u32",
  /** Offset of the padded input in vec4s; output and bias offsets in elements; 1 when there is a bias. */
  xOff4: "u32",
  outOff: "u32",
  biasOff: "u32",
  hasBias: "u32",
  /** Output element strides: batch, channel, d, h, w (so a kernel can write a strided phase of a tensor). */
  oN: "u32",
  oC: "u32",
  oD: "u32",
  oH: "u32",
  oW: "u32",
} as const;

/** Uniform layout of the direct-convolution parameters. */
export const CONV: UniformLayout<typeof CONV_FIELDS> = uniforms("conv3d:direct", CONV_FIELDS);

/** Derived sizes of a direct-convolution tile. */
export interface ConvTile {
  /** Output positions per workgroup along d, h, w. */
  out: Triple;
  /** Input positions the tile reads along d, h, w (with the kernel's halo). */
  in: Triple;
  /** vec4s per staged input row. */
  rowVec4s: number;
  /** Output channels per workgroup. */
  channels: number;
  /** Threads per workgroup. */
  threads: number;
  /** vec4s of workgroup memory per staged input channel (input tile + weights). */
  vec4sPerChannel: number;
}

/** Input span read by `outputs` consecutive outputs along one axis: (outputs − 1)·stride + (kernel − 1)·dilation + 1. */
export function inputSpan(outputs: number, kernel: number, stride: number, dilation: number): number {
  return (outputs - 1) * stride + (kernel - 1) * dilation + 1;
}

/** Tile geometry of `tiling` for a kernel of this shape. */
export function convTile(key: ConvShapeKey, tiling: ConvTiling): ConvTile {
  const [, td, th, tw] = tiling.threads;
  const out: Triple = [td * tiling.block[0], th * tiling.block[1], tw * tiling.block[2]];
  const span = (a: number) => inputSpan(out[a], key.kernel[a], key.stride[a], key.dilation[a]);
  const inDims: Triple = [span(0), span(1), span(2)];
  const rowVec4s = Math.ceil(inDims[2] / 4);
  const channels = tiling.threads[0] * tiling.channels;
  const taps = key.kernel[0] * key.kernel[1] * key.kernel[2];
  return {
    out,
    in: inDims,
    rowVec4s,
    channels,
    threads: tiling.threads.reduce((a, b) => a * b, 1),
    vec4sPerChannel: inDims[0] * inDims[1] * rowVec4s + taps * (channels / 4),
  };
}

/**
 * The direct convolution: `out[n, g·coutG + co, o] = bias + Σ_ci Σ_tap xp[n, g·cinG + ci, o·s + tap·dil] ·
 * Wp[g, ci, tap, co]` over an output of extent (od, oh, ow) written through the strides oN, oC, oD, oH, oW.
 * `xp` is the input zero-padded by {@linkcode convPadKernel} so that every tile's reads are in bounds
 * (index 0 of each axis is input coordinate −pad). `Wp` holds the weights packed by
 * {@linkcode convPackKernel} as [groups, cinG, taps, coP] (read as vec4s over output channels).
 *
 * Bindings: padded input, packed weights, bias (any buffer when `hasBias` is 0), out. One workgroup per
 * output tile (1-D grid folded with `linear_workgroup`).
 */
export const convKernel: (key: ConvShapeKey, tiling: ConvTiling) => Kernel = defineKernel(
  "conv3d:direct",
  (key: ConvShapeKey, tiling: ConvTiling): KernelSource => {
    const [KD, KH, KW] = key.kernel;
    const [SD, SH, SW] = key.stride;
    const [DD, DH, DW] = key.dilation;
    const [BD, BH, BW] = tiling.block;
    const [, LD, LH, LW] = tiling.threads;
    const M = tiling.channels;
    if (M % 4 !== 0 || BW % 4 !== 0) {
      throw new Error(
        `convKernel: tiling ${JSON.stringify(tiling)} needs channels and block w multiples of 4`,
      );
    }
    const tile = convTile(key, tiling);
    const taps = KD * KH * KW;
    const [ID, IH] = tile.in;
    const R4 = tile.rowVec4s;
    const channelVec4s = tile.channels / 4;
    const inUnits = tiling.stage * ID * IH * R4;
    const wUnits = tiling.stage * taps * channelVec4s;
    // The thread's input window: rows (dz, dy) that some (output, tap) pair reads, `spanVec4s` vec4s each.
    const spanVec4s = Math.ceil(((BW - 1) * SW + (KW - 1) * DW + 1) / 4);
    const rowsD = new Set<number>();
    const rowsH = new Set<number>();
    for (let b = 0; b < BD; b++) for (let k = 0; k < KD; k++) rowsD.add(b * SD + k * DD);
    for (let b = 0; b < BH; b++) for (let k = 0; k < KH; k++) rowsH.add(b * SH + k * DH);
    const body: string[] = [];
    for (let t = 0; t < taps; t++) {
      for (let q = 0; q < M / 4; q++) body.push(`let w${t}_${q} = ws[wb + ${t * channelVec4s + q}u];`);
    }
    for (const dz of rowsD) {
      for (const dy of rowsH) {
        for (let v = 0; v < spanVec4s; v++) {
          body.push(`let r${dz}_${dy}_${v} = xs[xb + ${(dz * IH + dy) * R4 + v}u];`);
        }
      }
    }
    const xAt = (dz: number, dy: number, e: number) => `r${dz}_${dy}_${e >> 2}[${e & 3}]`;
    const accs: string[] = [];
    // Accumulator-major order (each accumulator takes all its taps in a row): measured ~1.2× faster on
    // lavapipe than tap-major order, which keeps every accumulator live at once.
    for (let m = 0; m < M; m++) {
      for (let bd = 0; bd < BD; bd++) {
        for (let bh = 0; bh < BH; bh++) {
          for (let j = 0; j < BW / 4; j++) {
            const acc = `acc${m}_${bd}_${bh}_${j}`;
            accs.push(acc);
            for (let kd = 0; kd < KD; kd++) {
              for (let kh = 0; kh < KH; kh++) {
                for (let kw = 0; kw < KW; kw++) {
                  const t = (kd * KH + kh) * KW + kw;
                  const dz = bd * SD + kd * DD;
                  const dy = bh * SH + kh * DH;
                  const xv = [0, 1, 2, 3].map((i) => xAt(dz, dy, (4 * j + i) * SW + kw * DW));
                  body.push(
                    `${acc} = fma(vec4<f32>(w${t}_${m >> 2}[${m & 3}]), vec4<f32>(${
                      xv.join(", ")
                    }), ${acc});`,
                  );
                }
              }
            }
          }
        }
      }
    }
    const stores: string[] = [];
    for (let m = 0; m < M; m++) {
      stores.push(`if (co_t + ${m}u < coutG) {`);
      stores.push(`  let co = g * coutG + co_t + ${m}u;`);
      stores.push(`  var bias = 0.0;`);
      stores.push(`  if (${CONV.read("hasBias")} != 0u) { bias = B[${CONV.read("biasOff")} + co]; }`);
      stores.push(`  let oc = ${CONV.read("outOff")} + n * ${CONV.read("oN")} + co * ${CONV.read("oC")};`);
      for (let bd = 0; bd < BD; bd++) {
        for (let bh = 0; bh < BH; bh++) {
          stores.push(`  if (od_t + ${bd}u < OD && oh_t + ${bh}u < OH) {`);
          stores.push(
            `    let orow = oc + (od_t + ${bd}u) * ${CONV.read("oD")} + (oh_t + ${bh}u) * ${
              CONV.read("oH")
            };`,
          );
          for (let j = 0; j < BW / 4; j++) {
            for (let i = 0; i < 4; i++) {
              const e = 4 * j + i;
              stores.push(
                `    if (ow_t + ${e}u < OW) { Out[orow + (ow_t + ${e}u) * oW] = acc${m}_${bd}_${bh}_${j}[${i}] + bias; }`,
              );
            }
          }
          stores.push(`  }`);
        }
      }
      stores.push(`}`);
    }
    const code = /* wgsl */ `
  ${CONV.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> Xp: array<vec4<f32>>;
  @group(0) @binding(2) var<storage, read> Wp: array<vec4<f32>>;
  @group(0) @binding(3) var<storage, read> B: array<f32>;
  @group(0) @binding(4) var<storage, read_write> Out: array<f32>;
  var<workgroup> xs: array<vec4<f32>, ${inUnits}>;
  var<workgroup> ws: array<vec4<f32>, ${wUnits}>;
  @compute @workgroup_size(${tile.threads})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    var rest = linear_workgroup(wid, nwg);
    let tw = rest % ${CONV.read("tilesW")}; rest = rest / ${CONV.read("tilesW")};
    let th = rest % ${CONV.read("tilesH")}; rest = rest / ${CONV.read("tilesH")};
    let td = rest % ${CONV.read("tilesD")}; rest = rest / ${CONV.read("tilesD")};
    let ct = rest % ${CONV.read("coTiles")}; rest = rest / ${CONV.read("coTiles")};
    let g = rest % ${CONV.read("groups")};
    let n = rest / ${CONV.read("groups")};
    let PD = ${CONV.read("pd")}; let PH = ${CONV.read("ph")}; let PW4 = ${CONV.read("pw4")};
    let OD = ${CONV.read("od")}; let OH = ${CONV.read("oh")}; let OW = ${CONV.read("ow")};
    let cinG = ${CONV.read("cinG")}; let coutG = ${CONV.read("coutG")};
    let od0 = td * ${tile.out[0]}u; let oh0 = th * ${tile.out[1]}u; let ow0 = tw * ${tile.out[2]}u;
    let co0 = ct * ${tile.channels}u;
    // The tile's corner in the padded input, and the stride between its input channels.
    let x_tile = ${CONV.read("xOff4")} + ((n * ${CONV.read("cin")} + g * cinG) * PD * PH + od0 * ${SD}u * PH +
      oh0 * ${SH}u) * PW4 + tw * ${(tile.out[2] * SW) / 4}u;
    let x_chan = PD * PH * PW4;
    let w_row = ${CONV.read("coP")} / 4u;
    let w_g = g * cinG * ${taps}u * w_row + co0 / 4u;
    // This thread's place in the tile: channel group slowest, so a SIMD group shares its weights.
    let lw = li % ${LW}u;
    let lh = (li / ${LW}u) % ${LH}u;
    let ld = (li / ${LW * LH}u) % ${LD}u;
    let lc = li / ${LW * LH * LD}u;
    let x_t = (ld * ${BD * SD * IH}u + lh * ${BH * SH}u) * ${R4}u + lw * ${(BW * SW) / 4}u;
    let w_t = lc * ${M / 4}u;
    ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join("\n  ")}
    for (var ci0 = 0u; ci0 < cinG; ci0 += ${tiling.stage}u) {
      workgroupBarrier();
      // Stage the input tile (already padded: a plain copy) ...
      for (var u = li; u < ${inUnits}u; u += ${tile.threads}u) {
        let vx = u % ${R4}u;
        var q = u / ${R4}u;
        let dy = q % ${IH}u; q = q / ${IH}u;
        let dz = q % ${ID}u;
        let c = q / ${ID}u;
        var v = vec4<f32>(0.0);
        if (ci0 + c < cinG) { v = Xp[x_tile + (ci0 + c) * x_chan + (dz * PH + dy) * PW4 + vx]; }
        xs[u] = v;
      }
      // ... and the weights of these input channels for the tile's output channels.
      for (var u = li; u < ${wUnits}u; u += ${tile.threads}u) {
        let qv = u % ${channelVec4s}u;
        let q = u / ${channelVec4s}u;
        let tap = q % ${taps}u;
        let c = q / ${taps}u;
        var v = vec4<f32>(0.0);
        if (ci0 + c < cinG) { v = Wp[w_g + ((ci0 + c) * ${taps}u + tap) * w_row + qv]; }
        ws[u] = v;
      }
      workgroupBarrier();
      for (var c = 0u; c < ${tiling.stage}u; c++) {
        let xb = x_t + c * ${ID * IH * R4}u;
        let wb = w_t + c * ${taps * channelVec4s}u;
        ${body.join("\n      ")}
      }
    }
    let co_t = co0 + lc * ${M}u;
    let od_t = od0 + ld * ${BD}u;
    let oh_t = oh0 + lh * ${BH}u;
    let ow_t = ow0 + lw * ${BW}u;
    let oW = ${CONV.read("oW")};
    ${stores.join("\n  ")}
  }
  `;
    return {
      code,
      bindings: ["read", "read", "read", "write"],
    };
  },
);

const PAD_FIELDS = {
  /** Rows of the padded output (N · C · pd · ph). */
  rows: "u32",
  /** Padded extents (w in vec4s). */
  pd: "u32",
  ph: "u32",
  pw4: "u32",
  /** Source extents. */
  d: "u32",
  h: "u32",
  w: "u32",
  /** Source coordinate of padded index 0 along each axis (i32; negative = zero padding in front). */
  d0: "i32",
  h0: "i32",
  w0: "i32",
  /** Source element offset. */
  xOff: "u32",
} as const;

/** Uniform layout of the padding parameters. */
export const PAD: UniformLayout<typeof PAD_FIELDS> = uniforms("conv3d:pad", PAD_FIELDS);

/** Threads per workgroup of the padding kernel. */
export const PAD_WG = 64;

/**
 * Copies a contiguous [rows of] d×h×w volume into a zero-padded pd×ph×(4·pw4) volume whose index (0, 0, 0)
 * is source coordinate (d0, h0, w0); coordinates outside the source read zero (so negative d0 pads and
 * positive d0 crops). One thread per padded row; the rows are written as vec4s.
 */
export const convPadKernel: () => Kernel = defineKernel(
  "conv3d:pad",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${PAD.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> X: array<f32>;
  @group(0) @binding(2) var<storage, read_write> Xp: array<vec4<f32>>;
  @compute @workgroup_size(${PAD_WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row = linear_workgroup(wid, nwg) * ${PAD_WG}u + li;
    if (row >= ${PAD.read("rows")}) { return; }
    let PH = ${PAD.read("ph")}; let PD = ${PAD.read("pd")}; let PW4 = ${PAD.read("pw4")};
    let D = i32(${PAD.read("d")}); let H = i32(${PAD.read("h")}); let W = i32(${PAD.read("w")});
    let y = i32(row % PH) + ${PAD.read("h0")};
    let z = i32((row / PH) % PD) + ${PAD.read("d0")};
    let plane = row / (PH * PD);
    let inside = z >= 0 && z < D && y >= 0 && y < H;
    let src = ${PAD.read("xOff")} + ((plane * u32(D) + u32(max(z, 0))) * u32(H) + u32(max(y, 0))) * u32(W);
    for (var v = 0u; v < PW4; v++) {
      var out = vec4<f32>(0.0);
      if (inside) {
        let x0 = i32(v * 4u) + ${PAD.read("w0")};
        for (var e = 0; e < 4; e++) {
          if (x0 + e >= 0 && x0 + e < W) { out[e] = X[src + u32(x0 + e)]; }
        }
      }
      Xp[row * PW4 + v] = out;
    }
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);

const PACK_FIELDS = {
  /** Number of packed values. */
  count: "u32",
  /** Input channels per group of the packed convolution, its taps and kernel h, w extents. */
  cin: "u32",
  taps: "u32",
  kh: "u32",
  kw: "u32",
  /** Padded and valid output channels per group. */
  coP: "u32",
  cout: "u32",
  /** Source strides (elements): group, input channel, output channel, tap d, h, w. */
  sG: "u32",
  sCi: "u32",
  sCo: "u32",
  sKd: "u32",
  sKh: "u32",
  sKw: "u32",
  /** Source tap of packed tap j along each axis: start + j · step (i32). */
  dStart: "i32",
  dStep: "i32",
  hStart: "i32",
  hStep: "i32",
  wStart: "i32",
  wStep: "i32",
  /** Source element offset. */
  wOff: "u32",
} as const;

/** Uniform layout of the weight-packing parameters. */
export const PACK: UniformLayout<typeof PACK_FIELDS> = uniforms("conv3d:pack", PACK_FIELDS);

/** Threads per workgroup of the packing kernel. */
export const PACK_WG = 256;

/**
 * Gathers weights into the [groups, cin, taps, coP] layout {@linkcode convKernel} reads, zero for output
 * channels ≥ cout. Source strides and per-axis tap maps let the same kernel transpose channels and flip or
 * subsample taps for the input-gradient phases.
 */
export const convPackKernel: () => Kernel = defineKernel(
  "conv3d:pack",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${PACK.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> Wsrc: array<f32>;
  @group(0) @binding(2) var<storage, read_write> Wp: array<f32>;
  @compute @workgroup_size(${PACK_WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = linear_workgroup(wid, nwg) * ${PACK_WG}u + li;
    if (i >= ${PACK.read("count")}) { return; }
    let co = i % ${PACK.read("coP")};
    var rest = i / ${PACK.read("coP")};
    let tap = rest % ${PACK.read("taps")}; rest = rest / ${PACK.read("taps")};
    let ci = rest % ${PACK.read("cin")};
    let g = rest / ${PACK.read("cin")};
    var v = 0.0;
    if (co < ${PACK.read("cout")}) {
      let kw = ${PACK.read("kw")}; let kh = ${PACK.read("kh")};
      let td = ${PACK.read("dStart")} + i32(tap / (kh * kw)) * ${PACK.read("dStep")};
      let th = ${PACK.read("hStart")} + i32((tap / kw) % kh) * ${PACK.read("hStep")};
      let tw = ${PACK.read("wStart")} + i32(tap % kw) * ${PACK.read("wStep")};
      v = Wsrc[${PACK.read("wOff")} + g * ${PACK.read("sG")} + ci * ${PACK.read("sCi")} + co * ${
      PACK.read("sCo")
    } +
        u32(td) * ${PACK.read("sKd")} + u32(th) * ${PACK.read("sKh")} + u32(tw) * ${PACK.read("sKw")}];
    }
    Wp[i] = v;
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);

/** How the weight-gradient kernel splits its work. */
export interface ConvGradTiling {
  /** Output channels per thread (its accumulators are channels × taps). */
  channels: number;
  /** Threads along output channels and along input channels (their product is the workgroup size). */
  threads: readonly [number, number];
  /** Output rows (h) of one staged block of gradOut. */
  rows: number;
  /** Output columns (w, a multiple of 4) of one staged block of gradOut. */
  cols: number;
}

const WGRAD_FIELDS = {
  /** Padded input: channels of the whole tensor, extents d, h and w in vec4s (index 0 = coordinate −pad). */
  cin: "u32",
  pd: "u32",
  ph: "u32",
  pw4: "u32",
  /** Channels per group (input, output) and output channels of the whole tensor. */
  cinG: "u32",
  coutG: "u32",
  cout: "u32",
  /** gradOut depth, padded rows and row length in vec4s (zeros past the real extent). */
  od: "u32",
  gh: "u32",
  gw4: "u32",
  /** Blocks of gradOut along h and w, all blocks (N · od · blocksH · blocksW), blocks per split. */
  blocksH: "u32",
  blocksW: "u32",
  blocks: "u32",
  perSplit: "u32",
  /** Tiles of output and input channels per group, groups, splits. */
  coTiles: "u32",
  ciTiles: "u32",
  groups: "u32",
  splits: "u32",
  /** Offsets of the padded input and padded gradOut in vec4s, of the partial sums in elements. */
  xOff4: "u32",
  gOff4: "u32",
  outOff: "u32",
} as const;

/** Uniform layout of the weight-gradient parameters. */
export const WGRAD: UniformLayout<typeof WGRAD_FIELDS> = uniforms("conv3d:wgrad", WGRAD_FIELDS);

/** Derived sizes of a weight-gradient block. */
export interface ConvGradTile {
  /** Input rows one block of gradOut reads (with the kernel's halo). */
  inRows: number;
  /** Input columns one block of gradOut reads (with the kernel's halo). */
  inCols: number;
  /** vec4s per staged input row. */
  rowVec4s: number;
  /** Output channels per workgroup. */
  coChannels: number;
  /** Input channels per workgroup. */
  ciChannels: number;
  /** Threads per workgroup. */
  threads: number;
  /** vec4s of workgroup memory the kernel uses. */
  vec4s: number;
}

/** Block geometry of a weight-gradient tiling for a kernel of this shape. */
export function convGradTile(key: ConvShapeKey, t: ConvGradTiling): ConvGradTile {
  const inRows = (t.rows - 1) * key.stride[1] + (key.kernel[1] - 1) * key.dilation[1] + 1;
  const inCols = (t.cols - 1) * key.stride[2] + (key.kernel[2] - 1) * key.dilation[2] + 1;
  const rowVec4s = Math.ceil(inCols / 4);
  const coChannels = t.threads[0] * t.channels;
  const ciChannels = t.threads[1];
  const gVec4s = coChannels * t.rows * (t.cols / 4);
  const xVec4s = ciChannels * key.kernel[0] * inRows * rowVec4s;
  return {
    inRows,
    inCols,
    rowVec4s,
    coChannels,
    ciChannels,
    threads: t.threads[0] * t.threads[1],
    vec4s: gVec4s + xVec4s,
  };
}

/**
 * Partial weight gradients: `part[((g·coutG + co)·cinG + ci)·taps + tap, split] = Σ gradOut[n, g·coutG + co, o] ·
 * xp[n, g·cinG + ci, o·s + tap·dil]` over the blocks of gradOut assigned to `split` (the engine sums the
 * splits). A thread owns `channels` output channels × one input channel × every tap; per staged block it
 * loads each gradOut row once (as vec4s over 4 positions) and each input row once, and every input row
 * serves all the taps that reach it. Both inputs arrive padded ({@linkcode convPadKernel}): xp with the
 * convolution's padding, gradOut with zeros up to whole blocks.
 *
 * Bindings: padded x, padded gradOut, partial sums.
 */
export const convWeightGradKernel: (key: ConvShapeKey, tiling: ConvGradTiling) => Kernel = defineKernel(
  "conv3d:wgrad",
  (key: ConvShapeKey, tiling: ConvGradTiling): KernelSource => {
    // A thread takes 4 output columns (one vec4 of gradOut per row) per inner iteration; 8 measured slower
    // (1.5× vs 1.3× the forward time at 64→64, 32³): the larger body spills more than it saves in loads.
    const STEP = 4;
    if (tiling.cols % STEP !== 0) {
      throw new Error(`convWeightGradKernel: cols ${tiling.cols} must be a multiple of 4`);
    }
    const tile = convGradTile(key, tiling);
    const [KD, KH, KW] = key.kernel;
    const [SD, SH, SW] = key.stride;
    const [DD, DH, DW] = key.dilation;
    const M = tiling.channels;
    const [, TCI] = tiling.threads;
    const ROWS = tiling.rows;
    const C4 = tiling.cols / 4;
    const S4 = STEP / 4;
    const R4 = tile.rowVec4s;
    const taps = KD * KH * KW;
    const gUnits = tile.coChannels * ROWS * C4;
    const xUnits = tile.ciChannels * KD * tile.inRows * R4;
    const spanVec4s = Math.ceil(((STEP - 1) * SW + (KW - 1) * DW + 1) / 4);
    const body: string[] = [];
    for (let m = 0; m < M; m++) {
      for (let r = 0; r < ROWS; r++) {
        for (let h = 0; h < S4; h++) body.push(`let g${m}_${r}_${h} = gs[gb + ${(m * ROWS + r) * C4 + h}u];`);
      }
    }
    const rowsH = new Set<number>();
    for (let r = 0; r < ROWS; r++) for (let k = 0; k < KH; k++) rowsH.add(r * SH + k * DH);
    for (let kd = 0; kd < KD; kd++) {
      for (const y of rowsH) {
        for (let v = 0; v < spanVec4s; v++) {
          body.push(`let x${kd}_${y}_${v} = xs[xb + ${(kd * tile.inRows + y) * R4 + v}u];`);
        }
      }
    }
    const accs: string[] = [];
    for (let m = 0; m < M; m++) {
      for (let kd = 0; kd < KD; kd++) {
        for (let kh = 0; kh < KH; kh++) {
          for (let kw = 0; kw < KW; kw++) {
            const acc = `acc${m}_${(kd * KH + kh) * KW + kw}`;
            accs.push(acc);
            for (let r = 0; r < ROWS; r++) {
              const y = r * SH + kh * DH;
              let sum = acc;
              for (let i = 0; i < STEP; i++) {
                const e = i * SW + kw * DW;
                sum = `fma(g${m}_${r}_${i >> 2}[${i & 3}], x${kd}_${y}_${e >> 2}[${e & 3}], ${sum})`;
              }
              body.push(`${acc} = ${sum};`);
            }
          }
        }
      }
    }
    const stores: string[] = [];
    for (let m = 0; m < M; m++) {
      stores.push(`if (co_t + ${m}u < coutG && ci < cinG) {`);
      stores.push(
        `  let o = ${
          WGRAD.read("outOff")
        } + (((g * coutG + co_t + ${m}u) * cinG + ci) * ${taps}u) * splits + split;`,
      );
      for (let t = 0; t < taps; t++) stores.push(`  Part[o + ${t}u * splits] = acc${m}_${t};`);
      stores.push(`}`);
    }
    const code = /* wgsl */ `
  ${WGRAD.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> Xp: array<vec4<f32>>;
  @group(0) @binding(2) var<storage, read> Gp: array<vec4<f32>>;
  @group(0) @binding(3) var<storage, read_write> Part: array<f32>;
  var<workgroup> gs: array<vec4<f32>, ${gUnits}>;
  var<workgroup> xs: array<vec4<f32>, ${xUnits}>;
  @compute @workgroup_size(${tile.threads})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    var rest = linear_workgroup(wid, nwg);
    let cit = rest % ${WGRAD.read("ciTiles")}; rest = rest / ${WGRAD.read("ciTiles")};
    let cot = rest % ${WGRAD.read("coTiles")}; rest = rest / ${WGRAD.read("coTiles")};
    let g = rest % ${WGRAD.read("groups")};
    let split = rest / ${WGRAD.read("groups")};
    let splits = ${WGRAD.read("splits")};
    let PD = ${WGRAD.read("pd")}; let PH = ${WGRAD.read("ph")}; let PW4 = ${WGRAD.read("pw4")};
    let OD = ${WGRAD.read("od")}; let GH = ${WGRAD.read("gh")}; let GW4 = ${WGRAD.read("gw4")};
    let cinG = ${WGRAD.read("cinG")}; let coutG = ${WGRAD.read("coutG")};
    let co0 = cot * ${tile.coChannels}u;
    let ci0 = cit * ${tile.ciChannels}u;
    // This thread: output channels co_t .. co_t + ${M - 1}, input channel ci (input channel fastest).
    let lci = li % ${TCI}u;
    let lco = li / ${TCI}u;
    let co_t = co0 + lco * ${M}u;
    let ci = ci0 + lci;
    let gb0 = lco * ${M * ROWS * C4}u;
    let xb0 = lci * ${KD * tile.inRows * R4}u;
    ${accs.map((a) => `var ${a} = 0.0;`).join("\n  ")}
    let first = split * ${WGRAD.read("perSplit")};
    let last = min(first + ${WGRAD.read("perSplit")}, ${WGRAD.read("blocks")});
    for (var blk = first; blk < last; blk++) {
      let bw = blk % ${WGRAD.read("blocksW")};
      var q = blk / ${WGRAD.read("blocksW")};
      let bh = q % ${WGRAD.read("blocksH")}; q = q / ${WGRAD.read("blocksH")};
      let od = q % OD;
      let n = q / OD;
      workgroupBarrier();
      // Stage gradOut rows (padded: a plain copy) ...
      let g_blk = ${WGRAD.read("gOff4")} + (((n * ${
      WGRAD.read("cout")
    } + g * coutG + co0) * OD + od) * GH + bh * ${ROWS}u) * GW4 +
        bw * ${C4}u;
      for (var u = li; u < ${gUnits}u; u += ${tile.threads}u) {
        let vx = u % ${C4}u;
        let r = (u / ${C4}u) % ${ROWS}u;
        let c = u / ${ROWS * C4}u;
        var v = vec4<f32>(0.0);
        if (co0 + c < coutG) { v = Gp[g_blk + (c * OD * GH + r) * GW4 + vx]; }
        gs[u] = v;
      }
      // ... and the input rows they read, for each depth tap.
      let x_blk = ${WGRAD.read("xOff4")} + (((n * ${
      WGRAD.read("cin")
    } + g * cinG + ci0) * PD + od * ${SD}u) * PH +
        bh * ${ROWS * SH}u) * PW4 + bw * ${(tiling.cols * SW) / 4}u;
      for (var u = li; u < ${xUnits}u; u += ${tile.threads}u) {
        let vx = u % ${R4}u;
        var q2 = u / ${R4}u;
        let y = q2 % ${tile.inRows}u; q2 = q2 / ${tile.inRows}u;
        let kd = q2 % ${KD}u;
        let c = q2 / ${KD}u;
        var v = vec4<f32>(0.0);
        if (ci0 + c < cinG) { v = Xp[x_blk + ((c * PD + kd * ${DD}u) * PH + y) * PW4 + vx]; }
        xs[u] = v;
      }
      workgroupBarrier();
      for (var j = 0u; j < ${tiling.cols / STEP}u; j++) {
        let gb = gb0 + j * ${S4}u;
        let xb = xb0 + j * ${S4 * SW}u;
        ${body.join("\n      ")}
      }
    }
    ${stores.join("\n  ")}
  }
  `;
    return {
      code,
      bindings: ["read", "read", "write"],
    };
  },
);

const NAIVE_FIELDS = {
  /** Input (unpadded): channels of the whole tensor and extent. */
  cin: "u32",
  d: "u32",
  h: "u32",
  w: "u32",
  cinG: "u32",
  coutG: "u32",
  coP: "u32",
  /** Padding (i32), output extent, batch size and groups. */
  padD: "i32",
  padH: "i32",
  padW: "i32",
  od: "u32",
  oh: "u32",
  ow: "u32",
  batch: "u32",
  groups: "u32",
  /** Kernel, stride and dilation. */
  kd: "u32",
  kh: "u32",
  kw: "u32",
  sd: "u32",
  sh: "u32",
  sw: "u32",
  dd: "u32",
  dh: "u32",
  dw: "u32",
  /** Element offsets, bias flag and output strides as in {@linkcode CONV}. */
  xOff: "u32",
  outOff: "u32",
  biasOff: "u32",
  hasBias: "u32",
  oN: "u32",
  oC: "u32",
  oD: "u32",
  oH: "u32",
  oW: "u32",
} as const;

/** Uniform layout of the fallback kernel's parameters. */
export const NAIVE: UniformLayout<typeof NAIVE_FIELDS> = uniforms("conv3d:naive", NAIVE_FIELDS);

/** Threads per workgroup of the fallback kernel. */
export const NAIVE_WG = 64;

/**
 * Fallback for geometries whose tiles do not fit in workgroup memory (large dilations) or whose kernels are
 * too large to unroll: one thread per output, everything in uniforms, bounds checked per tap, reading the
 * unpadded input and the packed weights (as f32).
 */
export const convNaiveKernel: () => Kernel = defineKernel(
  "conv3d:naive",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${NAIVE.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> X: array<f32>;
  @group(0) @binding(2) var<storage, read> Wp: array<f32>;
  @group(0) @binding(3) var<storage, read> B: array<f32>;
  @group(0) @binding(4) var<storage, read_write> Out: array<f32>;
  @compute @workgroup_size(${NAIVE_WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let OD = ${NAIVE.read("od")}; let OH = ${NAIVE.read("oh")}; let OW = ${NAIVE.read("ow")};
    let coutG = ${NAIVE.read("coutG")}; let cinG = ${NAIVE.read("cinG")}; let groups = ${
      NAIVE.read("groups")
    };
    var rest = linear_workgroup(wid, nwg) * ${NAIVE_WG}u + li;
    let ow = rest % OW; rest = rest / OW;
    let oh = rest % OH; rest = rest / OH;
    let od = rest % OD; rest = rest / OD;
    let co = rest % (coutG * groups);
    let n = rest / (coutG * groups);
    if (n >= ${NAIVE.read("batch")}) { return; }
    let g = co / coutG;
    let D = i32(${NAIVE.read("d")}); let H = i32(${NAIVE.read("h")}); let W = i32(${NAIVE.read("w")});
    let KD = ${NAIVE.read("kd")}; let KH = ${NAIVE.read("kh")}; let KW = ${NAIVE.read("kw")};
    let taps = KD * KH * KW;
    let id0 = i32(od * ${NAIVE.read("sd")}) - ${NAIVE.read("padD")};
    let ih0 = i32(oh * ${NAIVE.read("sh")}) - ${NAIVE.read("padH")};
    let iw0 = i32(ow * ${NAIVE.read("sw")}) - ${NAIVE.read("padW")};
    let coP = ${NAIVE.read("coP")};
    var acc = 0.0;
    if (${NAIVE.read("hasBias")} != 0u) { acc = B[${NAIVE.read("biasOff")} + co]; }
    for (var ci = 0u; ci < cinG; ci++) {
      let xc = ${NAIVE.read("xOff")} + (n * ${NAIVE.read("cin")} + g * cinG + ci) * u32(D * H * W);
      let wc = ((g * cinG + ci) * taps) * coP + co % coutG;
      for (var kd = 0u; kd < KD; kd++) {
        let id = id0 + i32(kd * ${NAIVE.read("dd")});
        if (id < 0 || id >= D) { continue; }
        for (var kh = 0u; kh < KH; kh++) {
          let ih = ih0 + i32(kh * ${NAIVE.read("dh")});
          if (ih < 0 || ih >= H) { continue; }
          for (var kw = 0u; kw < KW; kw++) {
            let iw = iw0 + i32(kw * ${NAIVE.read("dw")});
            if (iw < 0 || iw >= W) { continue; }
            let tap = (kd * KH + kh) * KW + kw;
            acc = fma(X[xc + u32((id * H + ih) * W + iw)], Wp[wc + tap * coP], acc);
          }
        }
      }
    }
    Out[${NAIVE.read("outOff")} + n * ${NAIVE.read("oN")} + co * ${NAIVE.read("oC")} + od * ${
      NAIVE.read("oD")
    } +
      oh * ${NAIVE.read("oH")} + ow * ${NAIVE.read("oW")}] = acc;
  }
  `;
    return { code, bindings: ["read", "read", "read", "write"] };
  },
);

const WGRAD_NAIVE_FIELDS = {
  /** Input: channels of the whole tensor and extent; channels per group; output channels of the whole tensor. */
  cin: "u32",
  d: "u32",
  h: "u32",
  w: "u32",
  cinG: "u32",
  coutG: "u32",
  cout: "u32",
  /** Padding (i32), gradOut extent, batch size. */
  padD: "i32",
  padH: "i32",
  padW: "i32",
  od: "u32",
  oh: "u32",
  ow: "u32",
  batch: "u32",
  /** Kernel, stride and dilation. */
  kd: "u32",
  kh: "u32",
  kw: "u32",
  sd: "u32",
  sh: "u32",
  sw: "u32",
  dd: "u32",
  dh: "u32",
  dw: "u32",
  /** Element offsets of x and gradOut. */
  xOff: "u32",
  gOff: "u32",
} as const;

/** Uniform layout of the fallback weight-gradient kernel's parameters (unpadded operands). */
export const WGRAD_NAIVE: UniformLayout<typeof WGRAD_NAIVE_FIELDS> = uniforms(
  "conv3d:wgrad-naive",
  WGRAD_NAIVE_FIELDS,
);

/**
 * Fallback weight gradient for kernels too large to unroll or tiles that do not fit: one thread per weight
 * `dw[co, ci, tap] = Σ_n Σ_o gradOut[n, co, o] · x[n, g·cinG + ci, o·s − p + tap·dil]`, bounds checked.
 * Bindings: x, gradOut, dw (contiguous [cout, cinG, kd, kh, kw]).
 */
export const convWeightGradNaiveKernel: () => Kernel = defineKernel(
  "conv3d:wgrad-naive",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${WGRAD_NAIVE.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> X: array<f32>;
  @group(0) @binding(2) var<storage, read> G: array<f32>;
  @group(0) @binding(3) var<storage, read_write> Dw: array<f32>;
  @compute @workgroup_size(${NAIVE_WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let KD = ${WGRAD_NAIVE.read("kd")}; let KH = ${WGRAD_NAIVE.read("kh")}; let KW = ${
      WGRAD_NAIVE.read("kw")
    };
    let cinG = ${WGRAD_NAIVE.read("cinG")}; let coutG = ${WGRAD_NAIVE.read("coutG")}; let cout = ${
      WGRAD_NAIVE.read("cout")
    };
    let i = linear_workgroup(wid, nwg) * ${NAIVE_WG}u + li;
    if (i >= cout * cinG * KD * KH * KW) { return; }
    let kw = i % KW; var rest = i / KW;
    let kh = rest % KH; rest = rest / KH;
    let kd = rest % KD; rest = rest / KD;
    let ci = rest % cinG;
    let co = rest / cinG;
    let g = co / coutG;
    let D = i32(${WGRAD_NAIVE.read("d")}); let H = i32(${WGRAD_NAIVE.read("h")}); let W = i32(${
      WGRAD_NAIVE.read("w")
    });
    let OD = ${WGRAD_NAIVE.read("od")}; let OH = ${WGRAD_NAIVE.read("oh")}; let OW = ${
      WGRAD_NAIVE.read("ow")
    };
    let td = i32(kd * ${WGRAD_NAIVE.read("dd")}) - ${WGRAD_NAIVE.read("padD")};
    let th = i32(kh * ${WGRAD_NAIVE.read("dh")}) - ${WGRAD_NAIVE.read("padH")};
    let tw = i32(kw * ${WGRAD_NAIVE.read("dw")}) - ${WGRAD_NAIVE.read("padW")};
    var acc = 0.0;
    for (var n = 0u; n < ${WGRAD_NAIVE.read("batch")}; n++) {
      let xc = ${WGRAD_NAIVE.read("xOff")} + (n * ${
      WGRAD_NAIVE.read("cin")
    } + g * cinG + ci) * u32(D * H * W);
      let gc = ${WGRAD_NAIVE.read("gOff")} + (n * cout + co) * OD * OH * OW;
      for (var od = 0u; od < OD; od++) {
        let id = i32(od * ${WGRAD_NAIVE.read("sd")}) + td;
        if (id < 0 || id >= D) { continue; }
        for (var oh = 0u; oh < OH; oh++) {
          let ih = i32(oh * ${WGRAD_NAIVE.read("sh")}) + th;
          if (ih < 0 || ih >= H) { continue; }
          for (var ow = 0u; ow < OW; ow++) {
            let iw = i32(ow * ${WGRAD_NAIVE.read("sw")}) + tw;
            if (iw < 0 || iw >= W) { continue; }
            acc = fma(G[gc + (od * OH + oh) * OW + ow], X[xc + u32((id * H + ih) * W + iw)], acc);
          }
        }
      }
    }
    Dw[i] = acc;
  }
  `;
    return { code, bindings: ["read", "read", "write"] };
  },
);
