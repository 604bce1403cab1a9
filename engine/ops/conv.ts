/**
 * `conv3d` and `conv2d` with PyTorch semantics (cross-correlation, zero padding, stride, dilation,
 * groups, fused bias), differentiable w.r.t. input, weight and bias.
 *
 * - Forward on software adapters (lavapipe), for large convolutions with whole-vec4 output rows: the
 *   loop-free chunk kernel of `kernels/conv_chunk.ts` (an implicit GEMM over per-kw "planes" of the input;
 *   see {@linkcode convSettings}).
 * - Forward otherwise: the register-blocked direct convolution of `kernels/conv.ts` over the input zero-padded to
 *   whole tiles (one pass, so the kernel has no bounds checks) and weights packed as
 *   [groups, Cin/groups, taps, Cout/groups (padded)]. Geometries whose tiles do not fit workgroup memory
 *   (large dilations) or kernels above 125 taps use an unblocked fallback kernel.
 * - Gradient w.r.t. the input: a transposed convolution, computed as stride-1 convolutions of gradOut, one
 *   per stride phase (input positions i ≡ r mod stride): phase r sees only the taps t with
 *   (r + pad − t·dil) ≡ 0 mod stride, flipped and channel-transposed, and writes every stride-th input
 *   position. Exactly the forward's FLOPs, no zero insertion; for stride 1 it is the single phase with all
 *   taps and padding dil·(k − 1) − pad (which may be negative: a crop). Each phase runs on the kernel the
 *   forward would pick for its geometry.
 * - Gradient w.r.t. the weight: a reduction over batch and space (`convWeightGradKernel`), split over
 *   blocks of gradOut and summed; same padding scheme and fallback.
 * - Gradient w.r.t. the bias: the sum of gradOut over batch and space.
 *
 * - Tensors larger than one storage binding (`maxStorageBufferBindingSize`): the convolution runs as
 *   sub-convolutions of one batch item and a block of input and output channels each (copied out and
 *   accumulated back in place), so that every buffer a kernel binds fits (groups = 1).
 *
 * conv2d is conv3d on a depth-1 view.
 *
 * @module
 */

import {
  CONV,
  convGradTile,
  type ConvGradTiling,
  convKernel,
  convNaiveKernel,
  convPackKernel,
  convPadKernel,
  type ConvShapeKey,
  convTile,
  type ConvTiling,
  convWeightGradKernel,
  convWeightGradNaiveKernel,
  inputSpan,
  NAIVE,
  NAIVE_WG,
  PACK,
  PACK_WG,
  PAD,
  PAD_WG,
  type Triple,
  WGRAD,
  WGRAD_NAIVE,
} from "../../kernels/conv.ts";
import {
  CHUNK,
  type ConvChunkConfig,
  convChunkKernel,
  convPlanesKernel,
  type ConvWeightGradChunkConfig,
  convWeightGradChunkKernel,
  PLANES,
  PLANES_WG,
  weightGradChunkUniforms,
} from "../../kernels/conv_chunk.ts";
import type { Kernel } from "../../kernels/types.ts";
import { record } from "../autograd.ts";
import { isSoftwareAdapter, limit } from "../device.ts";
import { profileLabel } from "../profile.ts";
import { dispatch, maxBindingBytes, windowElements } from "../runtime.ts";
import { formatShape, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, copyInto, map } from "./map.ts";
import { sum } from "./reduce.ts";
import { reshape, view } from "./view.ts";

/** Options of {@linkcode conv3d} (PyTorch `F.conv3d` defaults). */
export interface Conv3dOptions {
  /** Bias [Cout], added to every output position. */
  bias?: Tensor;
  /** Stride (default 1), one number for all axes or [d, h, w]. */
  stride?: number | [number, number, number];
  /** Zero padding on both sides of each axis (default 0). */
  padding?: number | [number, number, number];
  /** Spacing of the kernel taps (default 1). */
  dilation?: number | [number, number, number];
  /** Channel groups; must divide Cin and Cout (default 1; Cin for depthwise). */
  groups?: number;
}

/** Options of {@linkcode conv2d} (PyTorch `F.conv2d` defaults). */
export interface Conv2dOptions {
  /** Bias [Cout], added to every output position. */
  bias?: Tensor;
  /** Stride (default 1), one number for both axes or [h, w]. */
  stride?: number | [number, number];
  /** Zero padding on both sides of each axis (default 0). */
  padding?: number | [number, number];
  /** Spacing of the kernel taps (default 1). */
  dilation?: number | [number, number];
  /** Channel groups; must divide Cin and Cout (default 1). */
  groups?: number;
}

interface Geometry {
  n: number;
  cin: number;
  cout: number;
  groups: number;
  cinG: number;
  coutG: number;
  inDims: Triple;
  kernel: Triple;
  stride: Triple;
  pad: Triple;
  dil: Triple;
  outDims: Triple;
}

// --- Argument checking ---------------------------------------------------------------------------------

function perAxis(op: string, name: string, v: unknown, dflt: number, axes: number, min: number): number[] {
  const values = v === undefined ? Array(axes).fill(dflt) : typeof v === "number" ? Array(axes).fill(v) : v;
  if (
    !Array.isArray(values) || values.length !== axes || values.some((e) => !Number.isInteger(e) || e < min)
  ) {
    throw new Error(
      `${op}: ${name} ${JSON.stringify(v)} must be an integer >= ${min} or an array of ${axes} of them.`,
    );
  }
  return values;
}

function checkTensor(op: string, name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) throw new Error(`${op}: ${name} must be a Tensor.`);
  t.storage(op);
  if (t.dtype === "int32") throw new Error(`${op}: ${name} must be float32 or float16, got ${t.dtype}.`);
  return t;
}

/** Lifted (3-D) options of a convolution. */
interface LiftedOptions {
  stride: number[];
  padding: number[];
  dilation: number[];
  groups: unknown;
}

/**
 * Validates shapes and options. A 2-D convolution arrives lifted to 3-D (depth 1); `shown` holds its
 * original shapes so that messages speak of what the caller passed.
 */
function geometry(
  op: string,
  x: Tensor,
  w: Tensor,
  bias: Tensor | undefined,
  opts: LiftedOptions,
  shown: { x: readonly number[]; w: readonly number[] },
): Geometry {
  const axes = shown.x.length - 2;
  const fmt = (v: readonly number[]) => formatShape(v.slice(3 - axes));
  const groups = opts.groups ?? 1;
  if (typeof groups !== "number" || !Number.isInteger(groups) || groups < 1) {
    throw new Error(`${op}: groups ${JSON.stringify(groups)} must be a positive integer.`);
  }
  const [n, cin, ...inDims] = x.shape;
  const [cout, cinG, ...kernel] = w.shape;
  if (cin % groups !== 0 || cout % groups !== 0) {
    throw new Error(
      `${op}: groups ${groups} must divide the input channels (${cin}, x ${formatShape(shown.x)}) and the ` +
        `output channels (${cout}, w ${formatShape(shown.w)}).`,
    );
  }
  if (cinG !== cin / groups) {
    throw new Error(
      `${op}: w ${formatShape(shown.w)} expects ${cinG} input channels per group, but x ${
        formatShape(shown.x)
      } has ${cin} channels in ${groups} group(s) (${cin / groups} per group).`,
    );
  }
  if (kernel.some((k) => k < 1) || cout < 1) {
    throw new Error(`${op}: w ${formatShape(shown.w)} has an empty kernel or no output channels.`);
  }
  if (bias !== undefined && (bias.rank !== 1 || bias.shape[0] !== cout)) {
    throw new Error(
      `${op}: bias must have shape [${cout}] (one per output channel), got ${formatShape(bias.shape)}.`,
    );
  }
  const { stride, padding: pad, dilation: dil } = opts;
  const outDims = [0, 1, 2].map((a) =>
    Math.floor((inDims[a] + 2 * pad[a] - dil[a] * (kernel[a] - 1) - 1) / stride[a]) + 1
  );
  if (outDims.some((o) => o < 1)) {
    throw new Error(
      `${op}: the kernel ${fmt(kernel)} (dilation ${fmt(dil)}) does not fit the input ` +
        `${formatShape(shown.x)} padded by ${fmt(pad)}: the output size ${fmt(outDims)} would be empty.`,
    );
  }
  return {
    n,
    cin,
    cout,
    groups,
    cinG,
    coutG: cout / groups,
    inDims: inDims as unknown as Triple,
    kernel: kernel as unknown as Triple,
    stride: stride as unknown as Triple,
    pad: pad as unknown as Triple,
    dil: dil as unknown as Triple,
    outDims: outDims as unknown as Triple,
  };
}

// --- Kernel selection ----------------------------------------------------------------------------------

/**
 * Tilings from most to least register-blocked (measurements in bench/conv.ts). `volume`: 4 channels ×
 * 2×4×4 outputs per thread, tile 16 channels × 4×8×16; `volume8` the same thread block in a 4×8×8 tile
 * (8³ levels); `strided`: 8 channels × 2×2×4 (strided convs reuse each input row for fewer taps, so their
 * rows are shared by more channels instead); `plane` as volume for depth-1 (2-D) outputs; the narrow ones
 * for ≤ 4 output channels per group; `small` for small outputs and large kernels. Staging 4 input
 * channels per barrier measured ~10% faster than 2 (and 5 slower again).
 */
const TILINGS: Record<string, ConvTiling> = {
  volume: { channels: 4, block: [2, 4, 4], threads: [4, 2, 2, 4], stage: 4 },
  volume8: { channels: 4, block: [2, 4, 4], threads: [4, 2, 2, 2], stage: 4 },
  strided: { channels: 8, block: [2, 2, 4], threads: [4, 2, 2, 4], stage: 2 },
  volumeNarrow: { channels: 4, block: [2, 4, 4], threads: [1, 2, 4, 8], stage: 2 },
  plane: { channels: 4, block: [1, 4, 4], threads: [4, 1, 4, 4], stage: 4 },
  planeNarrow: { channels: 4, block: [1, 4, 4], threads: [1, 1, 8, 8], stage: 2 },
  small: { channels: 4, block: [1, 1, 4], threads: [2, 2, 4, 2], stage: 4 },
};

/** Kernels with more taps than this use the `small` tiling; beyond `MAX_UNROLLED_TAPS`, the fallback. */
const MAX_BLOCKED_TAPS = 27;
const MAX_UNROLLED_TAPS = 125;

interface Plan {
  kernel: Kernel;
  tiling: ConvTiling | null;
}

/** Records a dispatch of `count` workgroups; nothing for an empty grid (the runtime would run one). */
function launch(kernel: Kernel, params: Uint32Array, buffers: GPUBuffer[], count: number): void {
  if (count > 0) dispatch(kernel, params, buffers, count);
}

/** Fraction of a tiled extent that is real output (1 = no waste). */
function utilization(extent: readonly number[], tile: readonly number[]): number {
  let used = 1;
  for (let a = 0; a < extent.length; a++) used *= extent[a] / (Math.ceil(extent[a] / tile[a]) * tile[a]);
  return used;
}

/** Picks the most blocked tiling that fits workgroup memory and does not waste most of its tile. */
function planConv(key: ConvShapeKey, outDims: Triple, coutG: number): Plan {
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

// --- Chunk path (software adapters) ---------------------------------------------------------------------

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
const CHUNK_DEPTH = 108;

/** The chunk kernel's geometry for `call`, or null when the direct kernel should run it. */
function chunkConfigFor(call: ConvCall): ConvChunkConfig | null {
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
function weightGradChunkConfigFor(g: Geometry): ConvWeightGradChunkConfig | null {
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
 * The weight gradient on the chunk kernel: the input's kw-planes (as the forward reads them), then one
 * dispatch per (batch item, chunk of 4·depth output positions), each adding its share into dW.
 */
function weightGradChunk(x: Tensor, gy: Tensor, g: Geometry, cfg: ConvWeightGradChunkConfig): Tensor {
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const K = g.cin * taps;
  const [OD, OH, OW] = g.outDims;
  const positions = OD * OH * OW;
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const planes = inputPlanes(x, {
    key,
    n: g.n,
    cin: g.cin,
    inDims: g.inDims,
    pad: g.pad,
    outDims: g.outDims,
  });
  const [xChan, xPlane, xRowD, xRowH] = planes.strides;
  const dw = fromData(null, [g.cout, K]);
  const kernel = convWeightGradChunkKernel(key, cfg);
  const buffers = [
    planes.tensor.storage("conv3d").buffer,
    gy.storage("conv3d").buffer,
    dw.storage("conv3d").buffer,
  ];
  const grid: [number, number, number] = [Math.ceil(K / cfg.threads), Math.ceil(g.cout / cfg.rows), 1];
  const layout = weightGradChunkUniforms(cfg.depth);
  for (let n = 0; n < g.n; n++) {
    for (let p0 = 0; p0 < positions; p0 += 4 * cfg.depth) {
      const valid = Math.min(cfg.depth, (positions - p0) / 4);
      // Each position group's row in the planes: computed here once rather than divided out per thread.
      const rows = new Array<number>(cfg.depth).fill(0);
      for (let j = 0; j < valid; j++) {
        const q = p0 + 4 * j;
        const od = Math.floor(q / (OH * OW));
        const oh = Math.floor(q / OW) % OH;
        rows[j] = od * g.stride[0] * xRowD + oh * g.stride[1] * xRowH + (q % OW) / 4;
      }
      const p = layout.pack({
        K,
        cout: g.cout,
        xN: n * g.cin * xChan,
        xChan,
        xPlane,
        xRowD,
        xRowH,
        gOff4: (gy.offset + n * g.cout * positions + p0) / 4,
        gC4: positions / 4,
        valid,
        first: n === 0 && p0 === 0 ? 1 : 0,
        zero: 0,
        guard: 0,
        rows,
      });
      dispatch(kernel, p, buffers, grid);
    }
  }
  planes.tensor.dispose();
  const out = reshape(dw, [g.cout, g.cinG, ...g.kernel]);
  dw.dispose();
  return out;
}

/** The kw-planes of `x` for `call` (see `convPlanesKernel`) and their strides in vec4s. */
interface Planes {
  tensor: Tensor;
  /** vec4s per input channel, per kw plane, per padded d row, per padded h row. */
  strides: [number, number, number, number];
}

/** Copies the contiguous input `x` into the per-kw planes the chunk kernels read. */
function inputPlanes(
  x: Tensor,
  call: Pick<ConvCall, "key" | "n" | "cin" | "inDims" | "pad" | "outDims">,
): Planes {
  const kw = call.key.kernel[2];
  const ow = call.outDims[2];
  const span = (a: number) =>
    inputSpan(call.outDims[a], call.key.kernel[a], call.key.stride[a], call.key.dilation[a]);
  const [pd, ph] = [span(0), span(1)];
  const row4 = ow / 4;
  const planeVec4s = pd * ph * row4;
  const strides: Planes["strides"] = [kw * planeVec4s, planeVec4s, ph * row4, row4];
  // A pointwise kernel at stride 1 without padding reads the input as it is (its one plane would be a copy).
  const identity = kw === 1 && call.key.stride[2] === 1 && call.pad.every((p) => p === 0) &&
    pd === call.inDims[0] && ph === call.inDims[1] && ow === call.inDims[2] && x.offset === 0;
  if (identity) {
    const storage = x.storage("conv3d");
    storage.retain();
    return { tensor: new Tensor({ shape: [x.size], storage, dtype: x.dtype }), strides };
  }
  const count = call.n * call.cin * kw * pd * ph;
  const tensor = fromData(null, [count * row4 * 4]);
  const q = PLANES.pack({
    count,
    kw,
    pd,
    ph,
    row4,
    d: call.inDims[0],
    h: call.inDims[1],
    w: call.inDims[2],
    d0: -call.pad[0],
    h0: -call.pad[1],
    w0: -call.pad[2],
    sw: call.key.stride[2],
    dw: call.key.dilation[2],
    ow,
    xOff: x.offset,
  });
  launch(
    convPlanesKernel(),
    q,
    [x.storage("conv3d").buffer, tensor.storage("conv3d").buffer],
    Math.ceil(count / PLANES_WG),
  );
  return { tensor, strides };
}

/** Runs `call` with the chunk kernel: w-planes of the input, then one dispatch per input-channel chunk. */
function runConvChunk(
  x: Tensor,
  packFor: (coP: number) => Tensor,
  bias: Tensor | null,
  out: Tensor,
  call: ConvCall,
  cfg: ConvChunkConfig,
): void {
  const [od, oh, ow] = call.outDims;
  const planes = inputPlanes(x, call);
  const coP = Math.ceil(call.coutG / cfg.rows) * cfg.rows;
  const packed = packFor(coP);
  const kernel = convChunkKernel(call.key, cfg);
  const positions = od * oh * ow;
  const [xChan, xPlane, xRowD, xRowH] = planes.strides;
  const p = {
    positions,
    oh,
    ow,
    cinG: call.cinG,
    coutG: call.coutG,
    coP,
    groups: call.groups,
    cin: call.cin,
    xChan,
    xPlane,
    xRowD,
    xRowH,
    outOff4: call.outOff / 4,
    oN4: call.outStrides[0] / 4,
    oC4: call.outStrides[1] / 4,
    biasOff: bias ? bias.offset : 0,
    hasBias: bias ? 1 : 0,
    zero: 0,
    guard: 0,
  };
  const buffers = [
    planes.tensor.storage("conv3d").buffer,
    packed.storage("conv3d").buffer,
    (bias ?? packed).storage("conv3d").buffer,
    out.storage("conv3d").buffer,
  ];
  const grid: [number, number, number] = [
    Math.ceil(positions / (4 * cfg.threads)),
    coP / cfg.rows,
    call.n * call.groups,
  ];
  for (let ci0 = 0; ci0 < call.cinG; ci0 += cfg.channels) {
    dispatch(kernel, CHUNK.pack({ ...p, ci0, first: ci0 === 0 ? 1 : 0 }), buffers, grid);
  }
  planes.tensor.dispose();
  packed.dispose();
}

// --- Raw (non-recording) building blocks -----------------------------------------------------------------

/** A convolution call: input [n, cin, ...inDims] convolved with packed weights into a (strided) output. */
interface ConvCall {
  key: ConvShapeKey;
  n: number;
  cin: number;
  inDims: Triple;
  cinG: number;
  coutG: number;
  groups: number;
  pad: Triple;
  outDims: Triple;
  /** Output element offset and strides [batch, channel, d, h, w]. */
  outOff: number;
  outStrides: readonly [number, number, number, number, number];
}

/** Packs weights for `call`'s convolution (see `convPackKernel`); `source` describes where tap j comes from. */
function packWeights(
  w: Tensor,
  call: ConvCall,
  coP: number,
  src: { sG: number; sCi: number; sCo: number; sK: Triple; start: Triple; step: Triple },
): Tensor {
  const [kd, kh, kw] = call.key.kernel;
  const taps = kd * kh * kw;
  const count = call.groups * call.cinG * taps * coP;
  const packed = fromData(null, [count]);
  const p = PACK.pack({
    count,
    cin: call.cinG,
    taps,
    kh,
    kw,
    coP,
    cout: call.coutG,
    sG: src.sG,
    sCi: src.sCi,
    sCo: src.sCo,
    sKd: src.sK[0],
    sKh: src.sK[1],
    sKw: src.sK[2],
    dStart: src.start[0],
    dStep: src.step[0],
    hStart: src.start[1],
    hStep: src.step[1],
    wStart: src.start[2],
    wStep: src.step[2],
    wOff: w.offset,
  });
  launch(
    convPackKernel(),
    p,
    [w.storage("conv3d").buffer, packed.storage("conv3d").buffer],
    Math.ceil(count / PACK_WG),
  );
  return packed;
}

/**
 * A zero-padded copy of the contiguous [n, c, d, h, w] tensor `x` with extents `dims` (w rounded up to whole
 * vec4s) whose index 0 along each axis is source coordinate `origin` (negative: padding; positive: a crop).
 */
function padVolume(x: Tensor, dims: Triple, origin: Triple): Tensor {
  const [n, c, d, h, w] = x.shape;
  const pw4 = Math.ceil(dims[2] / 4);
  const rows = n * c * dims[0] * dims[1];
  const out = fromData(null, [rows * pw4 * 4]);
  const p = PAD.pack({
    rows,
    pd: dims[0],
    ph: dims[1],
    pw4,
    d,
    h,
    w,
    d0: origin[0],
    h0: origin[1],
    w0: origin[2],
    xOff: x.offset,
  });
  launch(
    convPadKernel(),
    p,
    [x.storage("conv3d").buffer, out.storage("conv3d").buffer],
    Math.ceil(rows / PAD_WG),
  );
  return out;
}

/**
 * Runs one convolution of the contiguous input `x` into `out`. `packFor(coP)` packs the weights for the
 * chosen tile's padded channel count.
 */
function runConv(
  x: Tensor,
  packFor: (coP: number) => Tensor,
  bias: Tensor | null,
  out: Tensor,
  call: ConvCall,
): void {
  const chunk = chunkConfigFor(call);
  if (chunk) return runConvChunk(x, packFor, bias, out, call, chunk);
  const plan = planConv(call.key, call.outDims, call.coutG);
  const tile = plan.tiling ? convTile(call.key, plan.tiling) : null;
  const coTiles = tile ? Math.ceil(call.coutG / tile.channels) : 1;
  const coP = tile ? coTiles * tile.channels : call.coutG;
  const packed = packFor(coP);
  const biasBuffer = (bias ?? packed).storage("conv3d").buffer;
  const outBuffer = out.storage("conv3d").buffer;
  if (!tile) {
    const [d, h, w] = call.inDims;
    const [od, oh, ow] = call.outDims;
    const [kd, kh, kw] = call.key.kernel;
    const [sd, sh, sw] = call.key.stride;
    const [dd, dh, dw] = call.key.dilation;
    const [oN, oC, oD, oH, oW] = call.outStrides;
    const p = NAIVE.pack({
      cin: call.cin,
      d,
      h,
      w,
      cinG: call.cinG,
      coutG: call.coutG,
      coP,
      padD: call.pad[0],
      padH: call.pad[1],
      padW: call.pad[2],
      od,
      oh,
      ow,
      batch: call.n,
      groups: call.groups,
      kd,
      kh,
      kw,
      sd,
      sh,
      sw,
      dd,
      dh,
      dw,
      xOff: x.offset,
      outOff: call.outOff,
      biasOff: bias ? bias.offset : 0,
      hasBias: bias ? 1 : 0,
      oN,
      oC,
      oD,
      oH,
      oW,
    });
    const threads = call.n * call.groups * call.coutG * sizeOf(call.outDims);
    launch(plan.kernel, p, [
      x.storage("conv3d").buffer,
      packed.storage("conv3d").buffer,
      biasBuffer,
      outBuffer,
    ], Math.ceil(threads / NAIVE_WG));
    packed.dispose();
    return;
  }
  const tiles = call.outDims.map((o, a) => Math.ceil(o / tile.out[a]));
  // Pad so that every tile's reads, halo included, are in bounds.
  const padded = [0, 1, 2].map((a) => (tiles[a] - 1) * tile.out[a] * call.key.stride[a] + tile.in[a]);
  padded[2] = (tiles[2] - 1) * tile.out[2] * call.key.stride[2] + 4 * tile.rowVec4s;
  const xp = padVolume(x, padded as unknown as Triple, [-call.pad[0], -call.pad[1], -call.pad[2]]);
  const [oN, oC, oD, oH, oW] = call.outStrides;
  const p = CONV.pack({
    cin: call.cin,
    pd: padded[0],
    ph: padded[1],
    pw4: padded[2] / 4,
    cinG: call.cinG,
    coutG: call.coutG,
    coP,
    od: call.outDims[0],
    oh: call.outDims[1],
    ow: call.outDims[2],
    tilesD: tiles[0],
    tilesH: tiles[1],
    tilesW: tiles[2],
    coTiles,
    groups: call.groups,
    xOff4: 0,
    outOff: call.outOff,
    biasOff: bias ? bias.offset : 0,
    hasBias: bias ? 1 : 0,
    oN,
    oC,
    oD,
    oH,
    oW,
  });
  const workgroups = tiles[0] * tiles[1] * tiles[2] * coTiles * call.groups * call.n;
  launch(plan.kernel, p, [
    xp.storage("conv3d").buffer,
    packed.storage("conv3d").buffer,
    biasBuffer,
    outBuffer,
  ], workgroups);
  xp.dispose();
  packed.dispose();
}

function contiguousStrides5(shape: readonly number[]): [number, number, number, number, number] {
  const [, c, d, h, w] = shape;
  return [c * d * h * w, d * h * w, h * w, w, 1];
}

/** Forward convolution (no autograd); x, w contiguous. */
function forwardWhole(x: Tensor, w: Tensor, bias: Tensor | null, g: Geometry): Tensor {
  const outShape = [g.n, g.cout, ...g.outDims];
  const out = fromData(null, outShape);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const call: ConvCall = {
    key: { kernel: g.kernel, stride: g.stride, dilation: g.dil },
    n: g.n,
    cin: g.cin,
    inDims: g.inDims,
    cinG: g.cinG,
    coutG: g.coutG,
    groups: g.groups,
    pad: g.pad,
    outDims: g.outDims,
    outOff: 0,
    outStrides: contiguousStrides5(outShape),
  };
  const packFor = (coP: number) =>
    packWeights(w, call, coP, {
      sG: g.coutG * g.cinG * taps,
      sCi: taps,
      sCo: g.cinG * taps,
      sK: [g.kernel[1] * g.kernel[2], g.kernel[2], 1],
      start: [0, 0, 0],
      step: [1, 1, 1],
    });
  runConv(x, packFor, bias, out, call);
  return out;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * One axis of one stride phase of the transposed convolution: input positions i = q·s + r receive the
 * taps t with (r + pad − t·dil) ≡ 0 (mod s), from gradOut position q + (r + pad − t·dil)/s. Taps are
 * listed by decreasing t (increasing gradOut offset) so that the phase is a correlation with dilation
 * dil/gcd(s, dil) and padding −(first offset).
 */
function phaseAxis(k: number, s: number, p: number, dil: number, r: number, inExtent: number) {
  const extent = Math.ceil((inExtent - r) / s);
  let first = -1;
  for (let t = k - 1; t >= 0; t--) {
    if ((((r + p - t * dil) % s) + s) % s === 0) {
      first = t;
      break;
    }
  }
  if (first < 0 || extent < 1) return null;
  const step = s / gcd(s, dil);
  const taps = Math.floor(first / step) + 1;
  return {
    taps,
    start: first,
    step: -step,
    dilation: dil / gcd(s, dil),
    pad: -((r + p - first * dil) / s),
    extent,
  };
}

/** Gradient w.r.t. the input (no autograd); gy, w contiguous. */
function inputGradWhole(gy: Tensor, w: Tensor, g: Geometry): Tensor {
  const xShape = [g.n, g.cin, ...g.inDims];
  const [, H, W] = g.inDims;
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const axes = [0, 1, 2].map((a) =>
    Array.from(
      { length: g.stride[a] },
      (_, r) => phaseAxis(g.kernel[a], g.stride[a], g.pad[a], g.dil[a], r, g.inDims[a]),
    )
  );
  // Positions no tap reaches (phases without taps) keep the zeros of the fill.
  const complete = axes.every((phases) => phases.every((ph) => ph !== null));
  const dx = complete ? fromData(null, xShape) : map("fill", "s0", [], [0], xShape);
  const strides = contiguousStrides5(xShape);
  for (const [rd, pd] of axes[0].entries()) {
    for (const [rh, ph] of axes[1].entries()) {
      for (const [rw, pw] of axes[2].entries()) {
        if (!pd || !ph || !pw) continue;
        const call: ConvCall = {
          key: {
            kernel: [pd.taps, ph.taps, pw.taps],
            stride: [1, 1, 1],
            dilation: [pd.dilation, ph.dilation, pw.dilation],
          },
          n: g.n,
          cin: g.cout,
          inDims: g.outDims,
          cinG: g.coutG,
          coutG: g.cinG,
          groups: g.groups,
          pad: [pd.pad, ph.pad, pw.pad],
          outDims: [pd.extent, ph.extent, pw.extent],
          outOff: rd * H * W + rh * W + rw,
          outStrides: [strides[0], strides[1], g.stride[0] * H * W, g.stride[1] * W, g.stride[2]],
        };
        const packFor = (coP: number) =>
          packWeights(w, call, coP, {
            sG: g.coutG * g.cinG * taps,
            sCi: g.cinG * taps,
            sCo: taps,
            sK: [g.kernel[1] * g.kernel[2], g.kernel[2], 1],
            start: [pd.start, ph.start, pw.start],
            step: [pd.step, ph.step, pw.step],
          });
        runConv(gy, packFor, null, dx, call);
      }
    }
  }
  return dx;
}

/**
 * Weight-gradient tiling: 4 output channels × all taps per thread (fewer for large kernels, to bound the
 * accumulators), up to 16 input channels per workgroup; the staged block shrinks until it fits workgroup
 * memory. Null when nothing fits or the kernel is too large to unroll: use the fallback.
 */
function planWeightGrad(
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

/** The fallback weight gradient (x, gy contiguous). */
function weightGradNaive(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  const dw = fromData(null, [g.cout, g.cinG, ...g.kernel]);
  const [d, h, w] = g.inDims;
  const [od, oh, ow] = g.outDims;
  const [kd, kh, kw] = g.kernel;
  const [sd, sh, sw] = g.stride;
  const p = WGRAD_NAIVE.pack({
    cin: g.cin,
    d,
    h,
    w,
    cinG: g.cinG,
    coutG: g.coutG,
    cout: g.cout,
    padD: g.pad[0],
    padH: g.pad[1],
    padW: g.pad[2],
    od,
    oh,
    ow,
    batch: g.n,
    kd,
    kh,
    kw,
    sd,
    sh,
    sw,
    dd: g.dil[0],
    dh: g.dil[1],
    dw: g.dil[2],
    xOff: x.offset,
    gOff: gy.offset,
  });
  const kernel = convWeightGradNaiveKernel();
  launch(
    kernel,
    p,
    [x.storage("conv3d").buffer, gy.storage("conv3d").buffer, dw.storage("conv3d").buffer],
    Math.ceil(dw.size / NAIVE_WG),
  );
  return dw;
}

/** Gradient w.r.t. the weight (no autograd); x, gy contiguous. */
function weightGradWhole(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  // gradOut is read as vec4s: its offset must be whole vec4s (a fresh contiguous tensor's is 0).
  const chunk = g.n > 0 && g.cin > 0 && gy.offset % 4 === 0 ? weightGradChunkConfigFor(g) : null;
  if (chunk) return weightGradChunk(x, gy, g, chunk);
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const tiling = planWeightGrad(key, g.cinG, g.coutG, g.outDims);
  if (!tiling) return weightGradNaive(x, gy, g);
  const tile = convGradTile(key, tiling);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const [OD, OH, OW] = g.outDims;
  const blocksH = Math.ceil(OH / tiling.rows);
  const blocksW = Math.ceil(OW / tiling.cols);
  const blocks = g.n * OD * blocksH * blocksW;
  // No batch or no input channels: nothing to sum.
  if (blocks === 0 || g.cinG === 0) return map("fill", "s0", [], [0], [g.cout, g.cinG, ...g.kernel]);
  const coTiles = Math.ceil(g.coutG / tile.coChannels);
  const ciTiles = Math.ceil(g.cinG / tile.ciChannels);
  // Enough workgroups to fill the device, never fewer than one block each. Each split adds a partial copy
  // of dW that is summed afterwards, so a CPU adapter gets 4 per core rather than a GPU's few hundred
  // (at 32³ on 2 cores, 8 instead of 256 made forward + backward of a 3³ convolution 1.05–1.19× faster).
  const base = coTiles * ciTiles * g.groups;
  const target = convSettings.weightGradWorkgroups ||
    (isSoftwareAdapter() ? 4 * (navigator.hardwareConcurrency || 2) : 256);
  const splits = Math.max(1, Math.min(blocks, Math.ceil(target / base)));
  const perSplit = Math.ceil(blocks / splits);
  const used = Math.ceil(blocks / perSplit);
  // Both operands padded so that whole blocks (with the input's halo) are in bounds.
  const xDims: Triple = [
    inputSpan(OD, g.kernel[0], g.stride[0], g.dil[0]),
    (blocksH - 1) * tiling.rows * g.stride[1] + tile.inRows,
    (blocksW - 1) * tiling.cols * g.stride[2] + 4 * tile.rowVec4s,
  ];
  const xp = padVolume(x, xDims, [-g.pad[0], -g.pad[1], -g.pad[2]]);
  const gp = padVolume(gy, [OD, blocksH * tiling.rows, blocksW * tiling.cols], [0, 0, 0]);
  const partial = fromData(null, [g.cout * g.cinG * taps, used]);
  const p = WGRAD.pack({
    cin: g.cin,
    pd: xDims[0],
    ph: xDims[1],
    pw4: xDims[2] / 4,
    cinG: g.cinG,
    coutG: g.coutG,
    cout: g.cout,
    od: OD,
    gh: blocksH * tiling.rows,
    gw4: (blocksW * tiling.cols) / 4,
    blocksH,
    blocksW,
    blocks,
    perSplit,
    coTiles,
    ciTiles,
    groups: g.groups,
    splits: used,
    xOff4: 0,
    gOff4: 0,
    outOff: 0,
  });
  const kernel = convWeightGradKernel(key, tiling);
  launch(kernel, p, [
    xp.storage("conv3d").buffer,
    gp.storage("conv3d").buffer,
    partial.storage("conv3d").buffer,
  ], base * used);
  xp.dispose();
  gp.dispose();
  const wShape = [g.cout, g.cinG, ...g.kernel];
  if (used === 1) {
    const out = reshape(partial, wShape);
    partial.dispose();
    return out;
  }
  const summed = sum(partial, 1);
  partial.dispose();
  const out = reshape(summed, wShape);
  summed.dispose();
  return out;
}

/** The profile label of a convolution: op, pass, channels, input size, kernel and stride. */
function profileName(op: string, pass: string, g: Geometry): string {
  const size = g.inDims.every((d) => d === g.inDims[0]) ? `${g.inDims[0]}³` : g.inDims.join("×");
  const k = g.kernel.every((d) => d === g.kernel[0]) ? g.kernel[0] : g.kernel.join("×");
  const s = g.stride.some((d) => d > 1) ? ` s${g.stride.join(",")}` : "";
  return `${op} ${pass} ${g.cin}→${g.cout} ${size} k${k}${s}${g.n > 1 ? ` n${g.n}` : ""}`;
}

// --- Tensors larger than one storage binding --------------------------------------------------------------

/**
 * Channel blocks for convolutions whose tensors (or the padded copies and planes the kernels read) exceed one
 * storage binding: the convolution is computed as sub-convolutions of one batch item and at most `channels`
 * input and output channels each, whose results are copied (or added) into place. Null when no split is
 * needed. The per-channel size is a bound on the largest buffer of a sub-convolution: the input padded for
 * tiles, times the kernel width for the chunk kernels' planes.
 */
function splitChannels(op: string, g: Geometry, x: Tensor): number | null {
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
function paddedInput(g: Geometry, coutG: number): number {
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const plan = planConv(key, g.outDims, coutG);
  if (!plan.tiling) return sizeOf(g.inDims);
  const tile = convTile(key, plan.tiling);
  const tiles = g.outDims.map((o, a) => Math.ceil(o / tile.out[a]));
  const padded = [0, 1].map((a) => (tiles[a] - 1) * tile.out[a] * g.stride[a] + tile.in[a]);
  return padded[0] * padded[1] * ((tiles[2] - 1) * tile.out[2] * g.stride[2] + 4 * tile.rowVec4s);
}

/** A contiguous copy of `t[n, c0 : c0 + count]` (dimension 1 sliced, dimension 0 a single item). */
function channelBlock(t: Tensor, n: number, c0: number, count: number): Tensor {
  const [, c, ...rest] = t.shape;
  const inner = sizeOf(rest);
  const v = view(
    t,
    [1, count, ...rest],
    [c * inner, inner, ...contiguousStrides5(t.shape).slice(2)],
    t.offset + (n * c + c0) * inner,
  );
  const out = map("copy", "a", [v]);
  v.dispose();
  return out;
}

/** A contiguous copy of the weight block `w[o0 : o0 + oc, i0 : i0 + ic]`. */
function weightBlock(w: Tensor, o0: number, oc: number, i0: number, ic: number): Tensor {
  const [, ci, ...k] = w.shape;
  const taps = sizeOf(k);
  const v = view(
    w,
    [oc, ic, ...k],
    [ci * taps, taps, k[1] * k[2], k[2], 1],
    w.offset + (o0 * ci + i0) * taps,
  );
  const out = map("copy", "a", [v]);
  v.dispose();
  return out;
}

/** Writes (first) or adds `src` into the view of `dst` with `src`'s shape at element `offset`. */
function placeBlock(
  dst: Tensor,
  src: Tensor,
  offset: number,
  strides: readonly number[],
  add: boolean,
): void {
  const v = view(dst, src.shape, strides, offset);
  // A kernel cannot read and write one buffer: the sum goes through a temporary.
  const value = add ? map("add", "a + b", [v, src]) : src;
  copyInto(v, value);
  if (add) value.dispose();
  v.dispose();
}

/** `g` restricted to one batch item, `ci` input and `co` output channels. */
function subGeometry(g: Geometry, ci: number, co: number): Geometry {
  return { ...g, n: 1, cin: ci, cout: co, cinG: ci, coutG: co };
}

/** Forward convolution (no autograd); x, w contiguous. Split into channel blocks when too large. */
function forwardRaw(x: Tensor, w: Tensor, bias: Tensor | null, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, x);
  if (block === null) return forwardWhole(x, w, bias, g);
  const y = fromData(null, [g.n, g.cout, ...g.outDims]);
  const yStrides = contiguousStrides5(y.shape);
  for (let n = 0; n < g.n; n++) {
    for (let o0 = 0; o0 < g.cout; o0 += block) {
      const oc = Math.min(block, g.cout - o0);
      const b = bias ? view(bias, [oc], [1], bias.offset + o0) : null;
      for (let i0 = 0; i0 < g.cin; i0 += block) {
        const ic = Math.min(block, g.cin - i0);
        const xs = channelBlock(x, n, i0, ic);
        const ws = weightBlock(w, o0, oc, i0, ic);
        const ys = forwardWhole(xs, ws, i0 === 0 ? b : null, subGeometry(g, ic, oc));
        placeBlock(y, ys, n * yStrides[0] + o0 * yStrides[1], yStrides, i0 > 0);
        for (const t of [xs, ws, ys]) t.dispose();
      }
      b?.dispose();
    }
  }
  return y;
}

/** Gradient w.r.t. the input (no autograd); gy, w contiguous. Split into channel blocks when too large. */
function inputGradRaw(gy: Tensor, w: Tensor, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, gy);
  if (block === null) return inputGradWhole(gy, w, g);
  const dx = fromData(null, [g.n, g.cin, ...g.inDims]);
  const dxStrides = contiguousStrides5(dx.shape);
  for (let n = 0; n < g.n; n++) {
    for (let i0 = 0; i0 < g.cin; i0 += block) {
      const ic = Math.min(block, g.cin - i0);
      for (let o0 = 0; o0 < g.cout; o0 += block) {
        const oc = Math.min(block, g.cout - o0);
        const gs = channelBlock(gy, n, o0, oc);
        const ws = weightBlock(w, o0, oc, i0, ic);
        const dxs = inputGradWhole(gs, ws, subGeometry(g, ic, oc));
        placeBlock(dx, dxs, n * dxStrides[0] + i0 * dxStrides[1], dxStrides, o0 > 0);
        for (const t of [gs, ws, dxs]) t.dispose();
      }
    }
  }
  return dx;
}

/** Gradient w.r.t. the weight (no autograd); x, gy contiguous. Split into channel blocks when too large. */
function weightGradRaw(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, x);
  if (block === null) return weightGradWhole(x, gy, g);
  const dw = fromData(null, [g.cout, g.cin, ...g.kernel]);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const dwStrides = [g.cin * taps, taps, g.kernel[1] * g.kernel[2], g.kernel[2], 1];
  for (let o0 = 0; o0 < g.cout; o0 += block) {
    const oc = Math.min(block, g.cout - o0);
    for (let i0 = 0; i0 < g.cin; i0 += block) {
      const ic = Math.min(block, g.cin - i0);
      for (let n = 0; n < g.n; n++) {
        const xs = channelBlock(x, n, i0, ic);
        const gs = channelBlock(gy, n, o0, oc);
        const dws = weightGradWhole(xs, gs, subGeometry(g, ic, oc));
        placeBlock(dw, dws, o0 * dwStrides[0] + i0 * dwStrides[1], dwStrides, n > 0);
        for (const t of [xs, gs, dws]) t.dispose();
      }
    }
  }
  return dw;
}

// --- Public ops ----------------------------------------------------------------------------------------

function conv3dImpl(
  op: string,
  x: Tensor,
  w: Tensor,
  bias: Tensor | undefined,
  opts: LiftedOptions,
  shown: { x: readonly number[]; w: readonly number[] } = { x: x.shape, w: w.shape },
): Tensor {
  const g = geometry(op, x, w, bias, opts, shown);
  const xc = contiguous(x);
  const wc = contiguous(w);
  const bc = bias ? contiguous(bias) : null;
  const y = profileLabel(() => profileName(op, "fwd", g), () => forwardRaw(xc, wc, bc, g));
  bc?.dispose();
  const inputs = bias ? [x, w, bias] : [x, w];
  const out = record(op, y, inputs, (gOut, [xs, ws], needs) => {
    const gy = contiguous(gOut);
    const grads: Array<Tensor | null> = [
      needs[0] ? profileLabel(() => profileName(op, "dx", g), () => inputGradRaw(gy, ws, g)) : null,
      needs[1] ? profileLabel(() => profileName(op, "dw", g), () => weightGradRaw(xs, gy, g)) : null,
    ];
    if (bias) {
      grads.push(needs[2] ? profileLabel(() => profileName(op, "db", g), () => sum(gy, [0, 2, 3, 4])) : null);
    }
    gy.dispose();
    return grads;
  }, [xc, wc]);
  xc.dispose();
  wc.dispose();
  return out;
}

/**
 * 3-D convolution, PyTorch's `F.conv3d(x, w, bias, stride, padding, dilation, groups)`: x [N, Cin, D, H, W],
 * w [Cout, Cin/groups, kd, kh, kw], bias [Cout] → [N, Cout, Do, Ho, Wo] with
 * Do = ⌊(D + 2·pad − dil·(kd − 1) − 1) / stride⌋ + 1 (likewise H, W). Differentiable w.r.t. x, w and bias.
 *
 * @example
 * ```ts
 * const y = conv3d(x, w, { bias: b, padding: 1 }); // 3×3×3 "same" convolution
 * ```
 */
export function conv3d(x: Tensor, w: Tensor, opts: Conv3dOptions = {}): Tensor {
  const op = "conv3d";
  checkTensor(op, "x", x);
  checkTensor(op, "w", w);
  if (opts.bias !== undefined) checkTensor(op, "bias", opts.bias);
  if (x.rank !== 5) throw new Error(`${op}: x must be [N, C, D, H, W], got ${formatShape(x.shape)}.`);
  if (w.rank !== 5) {
    throw new Error(`${op}: w must be [Cout, Cin/groups, kd, kh, kw], got ${formatShape(w.shape)}.`);
  }
  return conv3dImpl(op, x, w, opts.bias, {
    stride: perAxis(op, "stride", opts.stride, 1, 3, 1),
    padding: perAxis(op, "padding", opts.padding, 0, 3, 0),
    dilation: perAxis(op, "dilation", opts.dilation, 1, 3, 1),
    groups: opts.groups,
  });
}

/**
 * 2-D convolution, PyTorch's `F.conv2d`: x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], bias [Cout] →
 * [N, Cout, Ho, Wo]. Runs as {@linkcode conv3d} on a depth-1 view. Differentiable w.r.t. x, w and bias.
 */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  const op = "conv2d";
  checkTensor(op, "x", x);
  checkTensor(op, "w", w);
  if (opts.bias !== undefined) checkTensor(op, "bias", opts.bias);
  if (x.rank !== 4) throw new Error(`${op}: x must be [N, C, H, W], got ${formatShape(x.shape)}.`);
  if (w.rank !== 4) {
    throw new Error(`${op}: w must be [Cout, Cin/groups, kh, kw], got ${formatShape(w.shape)}.`);
  }
  const stride = perAxis(op, "stride", opts.stride, 1, 2, 1);
  const padding = perAxis(op, "padding", opts.padding, 0, 2, 0);
  const dilation = perAxis(op, "dilation", opts.dilation, 1, 2, 1);
  const [n, c, h, wd] = x.shape;
  const [co, ci, kh, kw] = w.shape;
  const x3 = reshape(x, [n, c, 1, h, wd]);
  const w3 = reshape(w, [co, ci, 1, kh, kw]);
  let y3: Tensor;
  try {
    y3 = conv3dImpl(op, x3, w3, opts.bias, {
      stride: [1, ...stride],
      padding: [0, ...padding],
      dilation: [1, ...dilation],
      groups: opts.groups,
    }, { x: x.shape, w: w.shape });
  } finally {
    x3.dispose();
    w3.dispose();
  }
  const [, , , ho, wo] = y3.shape;
  const y = reshape(y3, [n, co, ho, wo]);
  y3.dispose();
  return y;
}
