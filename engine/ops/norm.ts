/**
 * Normalisation ops with PyTorch semantics: `groupNorm`, `groupNormSilu` (GN → SiLU fused, as in every
 * U-Net ResnetBlock) and `layerNorm`. Statistics come from Welford's update per thread and Chan's pairwise
 * merge across threads and chunks of long rows (see `kernels/norm.ts`): no E[x²] − E[x]² cancellation.
 * Variance is biased, like PyTorch. Backward uses the closed form
 * dx = rstd·(gγ − mean(gγ) − x̂·mean(gγx̂)) per row, dγ = Σ g·x̂, dβ = Σ g (g taken through SiLU when fused).
 * Inputs larger than one storage binding are normalised in copied blocks of whole groups (see `blocks.ts`).
 *
 * @module
 */

import {
  type AffineMode,
  FAST_DIV_LIMIT,
  NORM_APPLY_UNIFORMS,
  NORM_GRAD_APPLY_UNIFORMS,
  NORM_GRAD_COMBINE_UNIFORMS,
  NORM_GRAD_REDUCE_UNIFORMS,
  NORM_STATS_COMBINE_UNIFORMS,
  NORM_STATS_UNIFORMS,
  normApplyKernel,
  normGradApplyKernel,
  normGradCombineKernel,
  normGradReduceKernel,
  type NormGrid,
  normStatsCombineKernel,
  normStatsKernel,
  normThreadsPerRow,
  type NormVariant,
  type NormVec,
} from "../../kernels/norm.ts";
import { WG } from "../../kernels/types.ts";
import { record } from "../autograd.ts";
import { dispatch, maxBindingBytes, windowElements } from "../runtime.ts";
import { formatShape, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { intoRows, rowsOf } from "./blocks.ts";
import { contiguous, copyInto, map } from "./map.ts";
import { sum } from "./reduce.ts";
import { view, viewAs } from "./view.ts";

/** Loads per chunk of a long row: rows longer than this are split so that few long rows still fill the GPU. */
const CHUNK_LOADS = 8192;
const MAX_GRID = 65535;

/** How a contiguous input is cut into planes and rows (see `kernels/norm.ts`). */
interface Layout {
  /** Number of planes (GN: N·C; LN: rows). */
  planes: number;
  /** Elements per plane (GN: spatial size; LN: normalised size). */
  planeLen: number;
  /** Planes sharing one set of statistics (GN: C/G; LN: 1). */
  planesPerRow: number;
  /** Channels (GN: C, the period of the per-plane affine; LN: 1). */
  channels: number;
  /** Affine indexing. */
  affine: AffineMode;
}

/** vec4 loads when the plane length and every offset are multiples of 4. */
function pickVec(
  layout: Layout,
  tensors: ReadonlyArray<Tensor | null>,
  elementTensors: ReadonlyArray<Tensor | null>,
): NormVec {
  if (layout.planeLen % 4 !== 0) return 1;
  if (tensors.some((t) => t !== null && t.offset % 4 !== 0)) return 1;
  if (layout.affine === "element" && elementTensors.some((t) => t !== null && t.offset % 4 !== 0)) return 1;
  return 4;
}

/** Chunking of rows of `loads` loads: how many chunks and how long each is. */
function chunking(loads: number): { chunks: number; chunkLen: number; tpr: number } {
  const chunks = loads > CHUNK_LOADS ? Math.ceil(loads / CHUNK_LOADS) : 1;
  const chunkLen = chunks > 1 ? CHUNK_LOADS : loads;
  return { chunks, chunkLen, tpr: normThreadsPerRow(chunkLen) };
}

/** The uniform fields the element-wise norm kernels share. */
interface Head {
  loads: number;
  planes: number;
  planeLoads: number;
  planesPerRow: number;
  channels: number;
  rcpPlaneLoads: number;
  rcpPlanesPerRow: number;
  rcpChannels: number;
}

/**
 * How the element-wise kernels run over `layout` with `vec`-wide loads: the kernel variant, the fields
 * their uniforms share (loads, planes, divisors and their reciprocals) and the workgroup grid.
 */
function elementwisePlan(
  layout: Layout,
  vec: NormVec,
  w: Tensor | null,
  b: Tensor | null,
  silu: boolean,
): { variant: NormVariant; head: Head; workgroups: number | [number, number, number] } {
  const planeLoads = layout.planeLen / vec;
  const loads = layout.planes * planeLoads;
  const blocksPerPlane = Math.ceil(planeLoads / WG);
  // A 2-D grid needs no division to find the plane, but leaves threads idle when planes are short.
  const grid: NormGrid = planeLoads >= WG / 2 && blocksPerPlane <= MAX_GRID ? "planes" : "flat";
  const planeRows = Math.min(layout.planes, MAX_GRID);
  const workgroups: number | [number, number, number] = grid === "planes"
    ? [blocksPerPlane, planeRows, Math.ceil(layout.planes / planeRows)]
    : Math.ceil(loads / WG);
  return {
    variant: {
      vec,
      affine: layout.affine,
      weight: w !== null,
      bias: b !== null,
      silu,
      grid,
      fastDiv: (grid === "planes" ? layout.planes : loads) < FAST_DIV_LIMIT,
    },
    head: {
      loads,
      planes: layout.planes,
      planeLoads,
      planesPerRow: layout.planesPerRow,
      channels: layout.channels,
      rcpPlaneLoads: 1 / planeLoads,
      rcpPlanesPerRow: 1 / layout.planesPerRow,
      rcpChannels: 1 / layout.channels,
    },
    workgroups,
  };
}

/** `[rows, 2]` statistics `[mean, 1/√(var + eps)]` of the rows of the contiguous `x`. */
function rowStats(op: string, x: Tensor, layout: Layout, eps: number, vec: NormVec): Tensor {
  const rows = layout.planes / layout.planesPerRow;
  const rowLen = layout.planesPerRow * layout.planeLen;
  const { chunks, chunkLen, tpr } = chunking(rowLen / vec);
  const stats = fromData(null, [rows, 2]);
  const virtualRows = rows * chunks;
  const params = NORM_STATS_UNIFORMS.pack({
    rows: virtualRows,
    len: rowLen / vec,
    chunks,
    chunkLen,
    inOffset: x.offset,
    eps,
  });
  const partial = chunks > 1 ? fromData(null, [virtualRows, 2]) : stats;
  dispatch(
    normStatsKernel(tpr, vec, chunks === 1),
    params,
    [x.storage(op).buffer, partial.storage(op).buffer],
    Math.ceil(virtualRows / (WG / tpr)),
  );
  if (partial !== stats) {
    const combine = NORM_STATS_COMBINE_UNIFORMS.pack({
      rows,
      len: rowLen,
      chunks,
      chunkLen: chunkLen * vec,
      eps,
    });
    dispatch(
      normStatsCombineKernel(),
      combine,
      [partial.storage(op).buffer, stats.storage(op).buffer],
      Math.ceil(rows / WG),
    );
    partial.dispose();
  }
  return stats;
}

function affineBuffers(op: string, w: Tensor | null, b: Tensor | null): GPUBuffer[] {
  return [...(w ? [w.storage(op).buffer] : []), ...(b ? [b.storage(op).buffer] : [])];
}

/** Forward without autograd: the output and the row statistics backward needs. */
function normForward(
  op: string,
  x: Tensor,
  layout: Layout,
  w: Tensor | null,
  b: Tensor | null,
  silu: boolean,
  eps: number,
): { y: Tensor; stats: Tensor } {
  const vec = pickVec(layout, [x], [w, b]);
  const stats = rowStats(op, x, layout, eps, vec);
  const y = fromData(null, x.shape);
  const { head, variant, workgroups } = elementwisePlan(layout, vec, w, b, silu);
  dispatch(
    normApplyKernel(variant),
    NORM_APPLY_UNIFORMS.pack({
      ...head,
      xOffset: x.offset,
      wOffset: w?.offset ?? 0,
      bOffset: b?.offset ?? 0,
    }),
    [x.storage(op).buffer, stats.storage(op).buffer, ...affineBuffers(op, w, b), y.storage(op).buffer],
    workgroups,
  );
  return { y, stats };
}

/**
 * The gradient of the contiguous `x` (when `needX`) and, with channel affine, of weight and bias packed as
 * `[2, C]` (always: they cost two floats per channel).
 */
function normBackward(
  op: string,
  gIn: Tensor,
  x: Tensor,
  stats: Tensor,
  layout: Layout,
  w: Tensor | null,
  b: Tensor | null,
  silu: boolean,
  needX: boolean,
): { dx: Tensor | null; dwb: Tensor | null } {
  const channel = layout.affine === "channel";
  if (!needX && !channel) return { dx: null, dwb: null };
  const g = contiguous(gIn);
  const vec = pickVec(layout, [x, g], [w, b]);
  const { head, variant, workgroups } = elementwisePlan(layout, vec, w, b, silu);
  const planeLoads = layout.planeLen / vec;
  const { chunks, chunkLen, tpr } = chunking(planeLoads);
  const virtualPlanes = layout.planes * chunks;
  const rows = layout.planes / layout.planesPerRow;
  const affine = affineBuffers(op, w, b);

  const part = fromData(null, [virtualPlanes, 2]);
  const offsets = { xOffset: x.offset, gOffset: g.offset, wOffset: w?.offset ?? 0, bOffset: b?.offset ?? 0 };
  dispatch(
    normGradReduceKernel(tpr, variant),
    NORM_GRAD_REDUCE_UNIFORMS.pack({
      virtualPlanes,
      planeLoads,
      chunks,
      chunkLen,
      planesPerRow: layout.planesPerRow,
      channels: layout.channels,
      ...offsets,
    }),
    [
      x.storage(op).buffer,
      g.storage(op).buffer,
      stats.storage(op).buffer,
      ...affine,
      part.storage(op).buffer,
    ],
    Math.ceil(virtualPlanes / (WG / tpr)),
  );

  const coef = fromData(null, [rows, 2]);
  const dwb = channel ? fromData(null, [2, layout.channels]) : null;
  const weighted = channel && w !== null;
  dispatch(
    normGradCombineKernel({ affine: layout.affine, weight: w !== null }),
    NORM_GRAD_COMBINE_UNIFORMS.pack({
      rows,
      planes: layout.planes,
      chunks,
      planesPerRow: layout.planesPerRow,
      channels: layout.channels,
      rowLen: layout.planesPerRow * layout.planeLen,
      wOffset: w?.offset ?? 0,
    }),
    [
      part.storage(op).buffer,
      ...(weighted ? [w.storage(op).buffer] : []),
      coef.storage(op).buffer,
      ...(dwb ? [dwb.storage(op).buffer] : []),
    ],
    Math.ceil(Math.max(rows, channel ? layout.channels : 0) / WG),
  );
  part.dispose();
  if (!needX) {
    coef.dispose();
    g.dispose();
    return { dx: null, dwb };
  }

  const dx = fromData(null, x.shape);
  dispatch(
    normGradApplyKernel(variant),
    NORM_GRAD_APPLY_UNIFORMS.pack({ ...head, ...offsets }),
    [
      x.storage(op).buffer,
      g.storage(op).buffer,
      stats.storage(op).buffer,
      coef.storage(op).buffer,
      ...affine,
      dx.storage(op).buffer,
    ],
    workgroups,
  );
  coef.dispose();
  g.dispose();
  return { dx, dwb };
}

function checkTensor(op: string, t: unknown, what: string): Tensor {
  if (!(t instanceof Tensor)) {
    throw new Error(`${op}: ${what} must be a Tensor, got ${t === null ? "null" : typeof t}.`);
  }
  t.storage(op);
  if (t.dtype !== "float32") throw new Error(`${op}: ${what} must be float32, got ${t.dtype}.`);
  return t;
}

function checkEps(op: string, eps: number): void {
  if (typeof eps !== "number" || !(eps >= 0) || !Number.isFinite(eps)) {
    throw new Error(`${op}: eps must be a finite number ≥ 0, got ${eps}.`);
  }
}

/** Throws unless the optional affine parameter `t` has `shape`. */
function checkAffine(op: string, t: Tensor | null | undefined, what: string, shape: readonly number[]): void {
  if (t === undefined || t === null) return;
  checkTensor(op, t, what);
  if (t.rank !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${op}: ${what} must have shape ${formatShape(shape)}, got ${formatShape(t.shape)}.`);
  }
}

/**
 * The shared op (arguments already validated): forward, and a backward for x, weight and bias.
 */
function normOp(
  op: string,
  xIn: Tensor,
  layout: Layout,
  wIn: Tensor | null,
  bIn: Tensor | null,
  silu: boolean,
  eps: number,
): Tensor {
  const x = contiguous(xIn);
  const w = wIn ? contiguous(wIn) : null;
  const b = bIn ? contiguous(bIn) : null;
  const pieces = rowPieces(op, x, layout);
  const { y, stats } = pieces
    ? splitForward(op, x, layout, w, b, silu, eps, pieces)
    : normForward(op, x, layout, w, b, silu, eps);
  const hasW = w !== null;
  const hasB = b !== null;
  const affineShape = wIn?.shape ?? bIn?.shape ?? [];
  const out = record(op, y, [xIn, ...(wIn ? [wIn] : []), ...(bIn ? [bIn] : [])], (g, saved, needs) => {
    const [xs, ss] = saved;
    const ws = hasW ? saved[2] : null;
    const bs = hasB ? saved[hasW ? 3 : 2] : null;
    const want: Wanted = { x: needs[0], w: hasW && needs[1], b: hasB && needs[hasW ? 2 : 1] };
    const backward = (gp: Tensor, xp: Tensor, sp: Tensor, l: Layout, wp: Tensor | null, bp: Tensor | null) =>
      allGrads(op, gp, xp, sp, l, wp, bp, silu, want, l.affine === "channel" ? [l.channels] : affineShape);
    return pieces
      ? splitBackward(g, xs, ss, layout, ws, bs, pieces, backward)
      : backward(g, xs, ss, layout, ws, bs);
  }, [x, stats, ...(w ? [w] : []), ...(b ? [b] : [])]);
  x.dispose();
  stats.dispose();
  w?.dispose();
  b?.dispose();
  return out;
}

/** Which gradients backward must produce. */
interface Wanted {
  x: boolean;
  w: boolean;
  b: boolean;
}

/** Gradients `[dx, dweight?, dbias?]` (entries only for the affine parameters that exist). */
function allGrads(
  op: string,
  g: Tensor,
  xs: Tensor,
  ss: Tensor,
  layout: Layout,
  ws: Tensor | null,
  bs: Tensor | null,
  silu: boolean,
  want: Wanted,
  affineShape: readonly number[],
): Array<Tensor | null> {
  const { dx, dwb } = normBackward(op, g, xs, ss, layout, ws, bs, silu, want.x);
  const grads: Array<Tensor | null> = [dx];
  if (dwb) {
    // Channel affine: dwb is [2, C] = [dγ, dβ].
    const C = layout.channels;
    if (ws) grads.push(want.w ? view(dwb, [C], [1], dwb.offset) : null);
    if (bs) grads.push(want.b ? view(dwb, [C], [1], dwb.offset + C) : null);
    dwb.dispose();
  } else {
    grads.push(
      ...elementAffineGrads(op, g, xs, ss, layout, affineShape, ws !== null, want.w, bs !== null, want.b),
    );
  }
  return grads;
}

// --- Tensors larger than one storage binding ------------------------------------------------------------

/** A piece of a split norm: rows [first, first + rows) and, for group norm, its first channel. */
interface RowPiece {
  first: number;
  rows: number;
  channel: number;
}

/**
 * Pieces of whole rows (statistics groups) that fit one storage binding, or null when `x` fits as a whole.
 * Group-norm pieces stay within one sample, so that each is a group norm of its own over a channel range.
 */
function rowPieces(op: string, x: Tensor, layout: Layout): RowPiece[] | null {
  const max = windowElements();
  if (x.storage(op).buffer.size <= maxBindingBytes()) return null;
  const rowLen = layout.planesPerRow * layout.planeLen;
  const perPiece = Math.floor(max / rowLen);
  if (perPiece < 1) {
    throw new Error(
      `${op}: one normalisation group of ${rowLen} elements is larger than a storage binding ` +
        `(${max} elements); such inputs are not supported.`,
    );
  }
  const rows = layout.planes / layout.planesPerRow;
  const rowsPerSample = layout.affine === "channel" ? layout.channels / layout.planesPerRow : rows;
  const pieces: RowPiece[] = [];
  for (let s0 = 0; s0 < rows; s0 += rowsPerSample) {
    for (let r = 0; r < rowsPerSample; r += perPiece) {
      const count = Math.min(perPiece, rowsPerSample - r);
      pieces.push({ first: s0 + r, rows: count, channel: r * layout.planesPerRow });
    }
  }
  return pieces;
}

/** The layout of a piece, and its affine parameters (a channel range for group norm). */
function pieceLayout(layout: Layout, piece: RowPiece, w: Tensor | null, b: Tensor | null) {
  const channel = layout.affine === "channel";
  const planes = piece.rows * layout.planesPerRow;
  const sub: Layout = { ...layout, planes, channels: channel ? planes : layout.channels };
  const part = (t: Tensor | null) => t && channel ? view(t, [planes], [1], t.offset + piece.channel) : t;
  return { sub, w: part(w), b: part(b) };
}

/** The forward piece by piece: each piece copied out, normalised, and its output and statistics copied back. */
function splitForward(
  op: string,
  x: Tensor,
  layout: Layout,
  w: Tensor | null,
  b: Tensor | null,
  silu: boolean,
  eps: number,
  pieces: RowPiece[],
): { y: Tensor; stats: Tensor } {
  const rowLen = layout.planesPerRow * layout.planeLen;
  const y = fromData(null, x.shape);
  const stats = fromData(null, [layout.planes / layout.planesPerRow, 2]);
  for (const piece of pieces) {
    const part = pieceLayout(layout, piece, w, b);
    const xp = rowsOf(x, piece.first, piece.rows, rowLen);
    const r = normForward(op, xp, part.sub, part.w, part.b, silu, eps);
    intoRows(y, r.y, piece.first, rowLen);
    intoRows(stats, r.stats, piece.first, 2);
    for (const t of [xp, r.y, r.stats, part.w, part.b]) if (t && t !== w && t !== b) t.dispose();
  }
  return { y, stats };
}

/** The backward piece by piece: input gradients copied back, affine gradients summed over the pieces. */
function splitBackward(
  g: Tensor,
  x: Tensor,
  stats: Tensor,
  layout: Layout,
  w: Tensor | null,
  b: Tensor | null,
  pieces: RowPiece[],
  backward: (
    g: Tensor,
    x: Tensor,
    s: Tensor,
    l: Layout,
    w: Tensor | null,
    b: Tensor | null,
  ) => Array<Tensor | null>,
): Array<Tensor | null> {
  const rowLen = layout.planesPerRow * layout.planeLen;
  const gc = contiguous(g);
  let dx: Tensor | null = null;
  const sums: Array<Tensor | null> = [];
  for (const piece of pieces) {
    const part = pieceLayout(layout, piece, w, b);
    const gp = rowsOf(gc, piece.first, piece.rows, rowLen);
    const xp = rowsOf(x, piece.first, piece.rows, rowLen);
    const sp = rowsOf(stats, piece.first, piece.rows, 2);
    const [dxp, ...affine] = backward(gp, xp, sp, part.sub, part.w, part.b);
    if (dxp) {
      dx ??= fromData(null, x.shape);
      intoRows(dx, dxp, piece.first, rowLen);
      dxp.dispose();
    }
    affine.forEach((d, i) => {
      if (!d) {
        sums[i] = null;
        return;
      }
      const full = (i === 0 ? w : b) ?? w ?? b!;
      sums[i] ??= map("fill", "s0", [], [0], full.shape);
      // Group norm: the piece's channel range; layer norm: the whole parameter.
      const target = layout.affine === "channel"
        ? view(sums[i]!, [d.size], [1], sums[i]!.offset + piece.channel)
        : viewAs(sums[i]!, d.shape);
      // A kernel cannot read and write one buffer: the sum goes through a temporary.
      const summed = map("add", "a + b", [target, d]);
      copyInto(target, summed);
      summed.dispose();
      target.dispose();
      d.dispose();
    });
    for (const t of [gp, xp, sp, part.w, part.b]) if (t && t !== w && t !== b) t.dispose();
  }
  gc.dispose();
  return [dx, ...sums];
}

/** Layer norm's dγ = Σ_rows g·x̂ and dβ = Σ_rows g (rows are the leading axes). */
function elementAffineGrads(
  op: string,
  g: Tensor,
  x: Tensor,
  stats: Tensor,
  layout: Layout,
  affineShape: readonly number[],
  hasW: boolean,
  wantW: boolean,
  hasB: boolean,
  wantB: boolean,
): Array<Tensor | null> {
  if (!wantW && !wantB) return [...(hasW ? [null] : []), ...(hasB ? [null] : [])];
  const grads: Array<Tensor | null> = [];
  const rowsShape = [layout.planes, layout.planeLen];
  const reduceRows = (t: Tensor): Tensor => {
    const flat = viewAs(t, rowsShape);
    const s = sum(flat, 0);
    flat.dispose();
    const shaped = viewAs(s, affineShape);
    s.dispose();
    return shaped;
  };
  const gc = contiguous(g);
  if (hasW) {
    if (wantW) {
      const xhat = normalizeOnly(op, x, stats, layout);
      const prod = map("mul", "a * b", [gc, xhat]);
      xhat.dispose();
      grads.push(reduceRows(prod));
      prod.dispose();
    } else grads.push(null);
  }
  if (hasB) grads.push(wantB ? reduceRows(gc) : null);
  gc.dispose();
  return grads;
}

/** x̂ = (x − mean)·rstd with given statistics (the apply kernel without affine). */
function normalizeOnly(op: string, x: Tensor, stats: Tensor, layout: Layout): Tensor {
  const y = fromData(null, x.shape);
  const { head, variant, workgroups } = elementwisePlan(layout, pickVec(layout, [x], []), null, null, false);
  dispatch(
    normApplyKernel(variant),
    NORM_APPLY_UNIFORMS.pack({ ...head, xOffset: x.offset, wOffset: 0, bOffset: 0 }),
    [x.storage(op).buffer, stats.storage(op).buffer, y.storage(op).buffer],
    workgroups,
  );
  return y;
}

/** Validates a group norm input and returns its layout: planes are channels, rows are groups. */
function groupLayout(op: string, x: Tensor, numGroups: number): Layout {
  checkTensor(op, x, "x");
  if (x.rank < 2) {
    throw new Error(`${op}: x must be [N, C, ...spatial] (rank ≥ 2), got ${formatShape(x.shape)}.`);
  }
  const C = x.shape[1];
  if (!Number.isInteger(numGroups) || numGroups < 1 || C % numGroups !== 0) {
    throw new Error(
      `${op}: numGroups ${numGroups} must be a positive divisor of the channel count C = ${C} ` +
        `(x ${formatShape(x.shape)}).`,
    );
  }
  if (x.size === 0) throw new Error(`${op}: x ${formatShape(x.shape)} has no elements.`);
  return {
    planes: x.shape[0] * C,
    planeLen: sizeOf(x.shape.slice(2)),
    planesPerRow: C / numGroups,
    channels: C,
    affine: "channel",
  };
}

function groupNormImpl(
  op: string,
  x: Tensor,
  numGroups: number,
  weight: Tensor | null | undefined,
  bias: Tensor | null | undefined,
  eps: number,
  silu: boolean,
): Tensor {
  const layout = groupLayout(op, x, numGroups);
  checkEps(op, eps);
  checkAffine(op, weight, "weight", [layout.channels]);
  checkAffine(op, bias, "bias", [layout.channels]);
  return normOp(op, x, layout, weight ?? null, bias ?? null, silu, eps);
}

/**
 * PyTorch `F.group_norm`: x `[N, C, ...spatial]` (rank ≥ 2) is split into `numGroups` groups of C/G
 * consecutive channels; each (sample, group) is normalised over its channels and positions with its mean and
 * biased variance, y = (x − μ)/√(σ² + eps)·weight[c] + bias[c]. weight and bias are `[C]` (either may be
 * omitted). Differentiable in x, weight and bias.
 */
export function groupNorm(x: Tensor, numGroups: number, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  return groupNormImpl("groupNorm", x, numGroups, weight, bias, eps, false);
}

/**
 * `silu(groupNorm(x, numGroups, weight, bias, eps))` in one pass (the U-Net's GN → SiLU): the SiLU is applied
 * in the normalising kernel and its derivative folded into the backward, so the intermediate is never
 * stored. Gradients equal those of the composition.
 */
export function groupNormSilu(
  x: Tensor,
  numGroups: number,
  weight?: Tensor,
  bias?: Tensor,
  eps = 1e-5,
): Tensor {
  return groupNormImpl("groupNormSilu", x, numGroups, weight, bias, eps, true);
}

/**
 * PyTorch `F.layer_norm`: normalises over the trailing axes `normalizedShape` (which must equal the last
 * axes of x) with biased variance, then applies the element-wise weight and bias of shape
 * `normalizedShape` (either may be omitted). Differentiable in x, weight and bias.
 */
export function layerNorm(
  x: Tensor,
  normalizedShape: readonly number[],
  weight?: Tensor,
  bias?: Tensor,
  eps = 1e-5,
): Tensor {
  const op = "layerNorm";
  checkTensor(op, x, "x");
  const k = Array.isArray(normalizedShape) ? normalizedShape.length : -1;
  const tail = x.shape.slice(x.rank - k);
  if (
    k < 1 || k > x.rank || normalizedShape.some((d) => !Number.isInteger(d) || d < 1) ||
    tail.some((d, i) => d !== normalizedShape[i])
  ) {
    throw new Error(
      `${op}: normalizedShape ${JSON.stringify(normalizedShape)} must be the trailing (non-empty) shape ` +
        `of x ${formatShape(x.shape)}.`,
    );
  }
  checkEps(op, eps);
  if (x.size === 0) throw new Error(`${op}: x ${formatShape(x.shape)} has no elements.`);
  checkAffine(op, weight, "weight", normalizedShape);
  checkAffine(op, bias, "bias", normalizedShape);
  const planeLen = sizeOf(normalizedShape);
  const layout: Layout = {
    planes: x.size / planeLen,
    planeLen,
    planesPerRow: 1,
    channels: 1,
    affine: "element",
  };
  return normOp(op, x, layout, weight ?? null, bias ?? null, false, eps);
}

/**
 * Internal (tests and benchmarks): the statistics groupNorm normalises with, `[N, G, 2]` holding
 * `[mean, 1/√(var + eps)]` of each (sample, group). Not differentiable.
 */
export function groupNormStats(x: Tensor, numGroups: number, eps = 1e-5): Tensor {
  const op = "groupNormStats";
  const layout = groupLayout(op, x, numGroups);
  checkEps(op, eps);
  const dense = contiguous(x);
  const stats = rowStats(op, dense, layout, eps, pickVec(layout, [dense], []));
  dense.dispose();
  const out = viewAs(stats, [x.shape[0], numGroups, 2]);
  stats.dispose();
  return out;
}
