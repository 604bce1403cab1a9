/**
 * Kernel choice of the convolutions: the direct kernel's tilings, when the chunk kernels run (software
 * adapters) and with which geometry, the weight-gradient tiling, and when tensors too large for one storage
 * binding are split into channel blocks.
 *
 * @module
 */

import {
  convGradTile,
  type ConvGradTiling,
  convKernel,
  convNaiveKernel,
  type ConvShapeKey,
  convTile,
  type ConvTiling,
  type Triple,
} from "../../../kernels/conv.ts";
import type { ConvChunkConfig, ConvWeightGradChunkConfig } from "../../../kernels/conv_chunk.ts";
import type { Kernel } from "../../../kernels/types.ts";
import { isSoftwareAdapter, limit } from "../../device.ts";
import { maxBindingBytes, windowElements } from "../../runtime.ts";
import { sizeOf } from "../../shape.ts";
import type { Tensor } from "../../tensor.ts";
import type { ConvCall, Geometry } from "./geometry.ts";

/**
 * Tilings from most to least register-blocked (measurements in bench/conv.ts). `volume`: 4 channels ×
 * 2×4×4 outputs per thread, tile 16 channels × 4×8×16; `volume8` the same thread block in a 4×8×8 tile
 * (8³ levels); `strided`: 8 channels × 2×2×4 (strided convs reuse each input row for fewer taps, so their
 * rows are shared by more channels instead); `plane` as volume for depth-1 (2-D) outputs; the narrow ones
 * for ≤ 4 output channels per group; `small` for small outputs and large kernels. Staging 4 input
 * channels per barrier measured ~10% faster than 2 (and 5 slower again).
 */
export const TILINGS: Record<string, ConvTiling> = {
  volume: { channels: 4, block: [2, 4, 4], threads: [4, 2, 2, 4], stage: 4 },
  volume8: { channels: 4, block: [2, 4, 4], threads: [4, 2, 2, 2], stage: 4 },
  strided: { channels: 8, block: [2, 2, 4], threads: [4, 2, 2, 4], stage: 2 },
  volumeNarrow: { channels: 4, block: [2, 4, 4], threads: [1, 2, 4, 8], stage: 2 },
  plane: { channels: 4, block: [1, 4, 4], threads: [4, 1, 4, 4], stage: 4 },
  planeNarrow: { channels: 4, block: [1, 4, 4], threads: [1, 1, 8, 8], stage: 2 },
  small: { channels: 4, block: [1, 1, 4], threads: [2, 2, 4, 2], stage: 4 },
};

/** Kernels with more taps than this use the `small` tiling; beyond `MAX_UNROLLED_TAPS`, the fallback. */
export const MAX_BLOCKED_TAPS = 27;
/** Kernels with more taps than this run on the unblocked fallback kernels. */
export const MAX_UNROLLED_TAPS = 125;

export interface Plan {
  kernel: Kernel;
  tiling: ConvTiling | null;
}

/** Fraction of a tiled extent that is real output (1 = no waste). */
export function utilization(extent: readonly number[], tile: readonly number[]): number {
  let used = 1;
  for (let a = 0; a < extent.length; a++) used *= extent[a] / (Math.ceil(extent[a] / tile[a]) * tile[a]);
  return used;
}

/** Picks the most blocked tiling that fits workgroup memory and does not waste most of its tile. */
export function planConv(key: ConvShapeKey, outDims: Triple, coutG: number): Plan {
  const taps = key.kernel[0] * key.kernel[1] * key.kernel[2];
  const bytes = limit("maxComputeWorkgroupStorageSize");
  const strided = key.stride.some((s) => s > 1);
  const blocked = coutG <= 4 ? ["volumeNarrow", "planeNarrow"] : ["volume", "volume8", "plane"];
  const names = taps > MAX_UNROLLED_TAPS
    ? []
    : taps > MAX_BLOCKED_TAPS
    ? ["small"]
    : [...(strided && coutG > 4 ? ["strided"] : []), ...blocked, "small"];
  for (const name of names) {
    const base = TILINGS[name];
    const tile = convTile(key, base);
    const fit = Math.min(base.stage, Math.floor(bytes / (16 * tile.vec4sPerChannel)));
    if (fit < 1) continue;
    const spatial = utilization(outDims, tile.out);
    const channels = coutG / (Math.ceil(coutG / tile.channels) * tile.channels);
    if (name !== "small" && (spatial < 0.6 || channels < 0.5)) continue;
    const tiling = { ...base, stage: fit };
    return {
      kernel: convKernel(key, tiling),
      tiling,
    };
  }
  return { kernel: convNaiveKernel(), tiling: null };
}

/** Kernel selection knobs, for tests and benchmarks (read on every convolution). */
export const convSettings: {
  /**
   * `auto`: on software adapters the loop-free chunk kernel (`kernels/conv_chunk.ts`) for convolutions of
   * at least `minChunkMacs` multiply-adds whose output rows are whole vec4s, else the direct kernel.
   * `direct`: always the direct kernel. `chunk`: the chunk kernel whenever the geometry allows it.
   */
  path: "auto" | "direct" | "chunk";
  /** Smallest number of multiply-adds for which `auto` uses the chunk kernel. */
  minChunkMacs: number;
  /** Overrides of the chunk kernel's geometry (tests use small ones, which compile fast). */
  chunk: Partial<ConvChunkConfig>;
  /** Overrides of the weight-gradient chunk kernel's geometry. */
  weightGradChunk: Partial<ConvWeightGradChunkConfig>;
  /**
   * Workgroups the direct weight-gradient kernel aims for (its output blocks are split into partial sums
   * until there are this many); 0 for the default: 4 per CPU core on software adapters, 256 otherwise.
   */
  weightGradWorkgroups: number;
} = { path: "auto", minChunkMacs: 2 ** 24, chunk: {}, weightGradChunk: {}, weightGradWorkgroups: 0 };

/** k-values (input channels × taps) per chunk dispatch: 4 input channels of a 3³ kernel. */
export const CHUNK_DEPTH = 108;

/** The chunk kernel's geometry for `call`, or null when the direct kernel should run it. */
export function chunkConfigFor(call: ConvCall): ConvChunkConfig | null {
  if (convSettings.path === "direct") return null;
  const [od, oh, ow] = call.outDims;
  const taps = call.key.kernel[0] * call.key.kernel[1] * call.key.kernel[2];
  const [sN, sC, sD, sH, sW] = call.outStrides;
  // B is read as vec4s of 4 adjacent output positions and C written as vec4s: whole, aligned output rows.
  const aligned = ow % 4 === 0 && sW === 1 && sH === ow && sD === oh * ow && sC % 4 === 0 && sN % 4 === 0 &&
    call.outOff % 4 === 0;
  if (!aligned || taps > CHUNK_DEPTH) return null;
  const positions = od * oh * ow;
  const rows = call.coutG <= 8 ? 8 : call.coutG <= 16 ? 16 : call.coutG <= 32 ? 32 : 64;
  // Counted with the kernel's padded output rows: a 16→1 convolution costs what a 16→8 one does, which is
  // still faster than the direct kernel's narrow tiling (1.8× at 32³, bench/conv_paths.ts).
  const macs = call.n * call.groups * rows * call.cinG * taps * positions;
  if (convSettings.path === "auto" && (macs < convSettings.minChunkMacs || !isSoftwareAdapter())) return null;
  return {
    threads: positions >= 4 * 128 * 16 ? 128 : 64,
    rows,
    channels: Math.max(1, Math.min(call.cinG, Math.floor(CHUNK_DEPTH / taps))),
    ...convSettings.chunk,
  };
}

/** The weight-gradient chunk kernel's geometry for `g`, or null for the direct weight-gradient kernel. */
export function weightGradChunkConfigFor(g: Geometry): ConvWeightGradChunkConfig | null {
  if (convSettings.path === "direct" || g.groups !== 1 || g.outDims[2] % 4 !== 0) return null;
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  // Pointwise kernels stay on the direct kernel: with one tap and K a multiple of 64 the chunk kernel ran
  // 25–400× slower on lavapipe (64→32 at 16³: 1.8 s against 41 ms, bench/conv_paths.ts --batch 2; cause
  // not found), and the direct kernel is fast at every pointwise shape of the U-Nets.
  if (convSettings.path === "auto" && taps === 1) return null;
  const macs = g.n * g.cout * g.cin * taps * sizeOf(g.outDims);
  // `auto` once picked it for strided convolutions only: a whole training step of the default model was
  // slower with it at stride 1 although each convolution was faster. With the planes copy it starts with now
  // 6–10× faster (convPlanesKernel), the step with the chunk kernels takes 0.80–0.85× the CPU time (32³,
  // side by side); the slow copy was probably the earlier cause (not verified).
  if (convSettings.path === "auto" && (macs < convSettings.minChunkMacs || !isSoftwareAdapter())) return null;
  const rows = g.cout <= 8 ? 8 : g.cout <= 16 ? 16 : g.cout <= 32 ? 32 : 64;
  // rows × depth = 2048: 32 KB of staged gradOut and 2048 unrolled vec4 FMAs per thread.
  return { threads: 64, rows, depth: 2048 / rows, ...convSettings.weightGradChunk };
}

/**
 * Weight-gradient tiling: 4 output channels × all taps per thread (fewer for large kernels, to bound the
 * accumulators), up to 16 input channels per workgroup; the staged block shrinks until it fits workgroup
 * memory. Null when nothing fits or the kernel is too large to unroll: use the fallback.
 */
export function planWeightGrad(
  key: ConvShapeKey,
  cinG: number,
  coutG: number,
  outDims: Triple,
): ConvGradTiling | null {
  const taps = key.kernel[0] * key.kernel[1] * key.kernel[2];
  if (taps > MAX_UNROLLED_TAPS) return null;
  const channels = taps <= MAX_BLOCKED_TAPS ? 4 : 1;
  const bytes = limit("maxComputeWorkgroupStorageSize");
  const pow2 = (v: number) => 2 ** Math.ceil(Math.log2(Math.max(1, v)));
  // Blocks no larger than the output (small outputs waste less and compile smaller kernels).
  const blocks = [...((globalThis as { WG_BLOCKS?: number[][] }).WG_BLOCKS ?? []), [4, 16], [4, 8], [2, 8], [
    1,
    8,
  ], [1, 4]].filter(([rows, cols], i, all) =>
    i === all.length - 1 ||
    (rows <= Math.max(1, outDims[1]) && cols <= Math.max(4, 4 * Math.ceil(outDims[2] / 4)))
  );
  for (let ciThreads = Math.min(16, pow2(cinG)); ciThreads >= 1; ciThreads /= 2) {
    const coThreads = Math.max(1, Math.min(64 / ciThreads, pow2(Math.ceil(coutG / channels))));
    for (const [rows, cols] of blocks) {
      const tiling: ConvGradTiling = { channels, threads: [coThreads, ciThreads], rows, cols };
      if (convGradTile(key, tiling).vec4s * 16 <= bytes) return tiling;
    }
  }
  return null;
}

/**
 * Channel blocks for convolutions whose tensors (or the padded copies and planes the kernels read) exceed one
 * storage binding: the convolution is computed as sub-convolutions of one batch item and at most `channels`
 * input and output channels each, whose results are copied (or added) into place. Null when no split is
 * needed. The per-channel size is a bound on the largest buffer of a sub-convolution: the input padded for
 * tiles, times the kernel width for the chunk kernels' planes.
 */
export function splitChannels(op: string, g: Geometry, x: Tensor): number | null {
  const max = windowElements();
  const up = (v: number, m: number) => Math.ceil(v / m) * m;
  const reach = (a: number) => (g.kernel[a] - 1) * g.dil[a] + 1;
  const [od, oh, ow] = g.outDims;
  const [sd, sh] = g.stride;
  // The direct kernels' input padded to whole tiles (at most 8 × 16 × 32 outputs, w plus a vec4 of halo),
  // and the chunk kernels' kw-planes.
  const span = (o: number, s: number, a: number) => (o - 1) * s + reach(a);
  // The direct kernel's input padded to whole tiles (for the tiling a block of ≤ 4 or of all output
  // channels would get), and the chunk kernels' kw-planes.
  const direct = Math.max(paddedInput(g, Math.min(4, g.cout)), paddedInput(g, g.cout));
  const planes = g.kernel[2] * span(od, sd, 0) * span(oh, sh, 1) * up(ow, 4);
  const perIn = Math.max(direct, planes, sizeOf(g.inDims));
  const perOut = up(od, 8) * up(oh, 16) * up(ow, 32);
  const perChannel = Math.max(perIn, perOut);
  const fits = x.storage(op).buffer.size <= maxBindingBytes() &&
    g.n * Math.max(g.cin, g.cout) * perChannel <= max;
  if (fits) return null;
  const channels = Math.floor(max / perChannel);
  if (channels < 1 || g.groups !== 1) {
    throw new Error(
      `${op}: x [${g.n}, ${g.cin}, ${g.inDims.join(", ")}] needs more than one storage binding ` +
        `(${maxBindingBytes()} bytes) ${g.groups !== 1 ? "and has groups > 1" : "for a single channel"}; ` +
        "splitting is supported for groups = 1 and volumes whose single channel fits a binding.",
    );
  }
  return channels;
}

/** Elements per channel of the direct kernel's padded input for `g` with `coutG` output channels. */
export function paddedInput(g: Geometry, coutG: number): number {
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const plan = planConv(key, g.outDims, coutG);
  if (!plan.tiling) return sizeOf(g.inDims);
  const tile = convTile(key, plan.tiling);
  const tiles = g.outDims.map((o, a) => Math.ceil(o / tile.out[a]));
  const padded = [0, 1].map((a) => (tiles[a] - 1) * tile.out[a] * g.stride[a] + tile.in[a]);
  return padded[0] * padded[1] * ((tiles[2] - 1) * tile.out[2] * g.stride[2] + 4 * tile.rowVec4s);
}
