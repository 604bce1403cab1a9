/**
 * Convolutions with PyTorch semantics (cross-correlation, zero padding, `torch.nn.functional.conv3d` /
 * `conv2d`), plus their exact gradients.
 *
 * Shapes: x [N, Cin, D, H, W], w [Cout, Cin / groups, kd, kh, kw], bias [Cout], output [N, Cout, OD, OH, OW]
 * with OD = ⌊(D + 2·pad − dil·(kd − 1) − 1) / stride⌋ + 1 (likewise H, W). Output channel co belongs to group
 * ⌊co / (Cout / groups)⌋ and sees input channels [g·Cin/groups, (g + 1)·Cin/groups).
 *
 * The backward pass is written in the "scatter" form: it runs the very loop of the forward pass and, for
 * each tap out += x·w, scatters gradOut into dx (by w) and dw (by x). It needs no transposed-convolution
 * index algebra, so it is obviously the derivative of the forward loop.
 *
 * @module
 */

import { checkTensor, formatShape, type RefTensor, sizeOf } from "./tensor.ts";

/** A per-axis parameter of a 3-D op: one number for all three axes, or [d, h, w]. */
export type Triple = number | readonly [number, number, number];
/** A per-axis parameter of a 2-D op: one number for both axes, or [h, w]. */
export type Pair = number | readonly [number, number];

/** Options of {@linkcode conv3d} and {@linkcode conv3dBackward} (PyTorch defaults). */
export interface Conv3dOptions {
  /** Stride (default 1). */
  stride?: Triple;
  /** Zero padding added on both sides of each spatial axis (default 0). */
  padding?: Triple;
  /** Dilation of the kernel taps (default 1). */
  dilation?: Triple;
  /** Number of channel groups; must divide Cin and Cout (default 1). */
  groups?: number;
}

/** Options of {@linkcode conv2d} and {@linkcode conv2dBackward} (PyTorch defaults). */
export interface Conv2dOptions {
  /** Stride (default 1). */
  stride?: Pair;
  /** Zero padding added on both sides of each spatial axis (default 0). */
  padding?: Pair;
  /** Dilation of the kernel taps (default 1). */
  dilation?: Pair;
  /** Number of channel groups; must divide Cin and Cout (default 1). */
  groups?: number;
}

/** Gradients of the sum of `conv(x, w, b) * gradOut` with respect to each input. */
export interface ConvGrads {
  /** Gradient w.r.t. the input x (shape of x). */
  dx: RefTensor;
  /** Gradient w.r.t. the weight w (shape of w). */
  dw: RefTensor;
  /** Gradient w.r.t. the bias, [Cout] (the sum of gradOut over batch and space). */
  db: RefTensor;
}

function triple(v: Triple | undefined, dflt: number, what: string, min: number): [number, number, number] {
  const t: number[] = v === undefined ? [dflt, dflt, dflt] : typeof v === "number" ? [v, v, v] : [...v];
  if (t.length !== 3 || t.some((e) => !Number.isInteger(e) || e < min)) {
    throw new Error(`conv3d: ${what} ${JSON.stringify(v)} must be an integer >= ${min} or a triple of them`);
  }
  return t as [number, number, number];
}

function pairToTriple(v: Pair | undefined, dflt: number, what: string): [number, number, number] | undefined {
  if (v === undefined) return undefined;
  const p: number[] = typeof v === "number" ? [v, v] : [...v];
  if (p.length !== 2) throw new Error(`conv2d: ${what} ${JSON.stringify(v)} must be a number or a pair`);
  return [dflt, p[0], p[1]];
}

interface Geometry {
  n: number;
  cin: number;
  cout: number;
  groups: number;
  inDims: [number, number, number];
  k: [number, number, number];
  stride: [number, number, number];
  pad: [number, number, number];
  dil: [number, number, number];
  outDims: [number, number, number];
}

function geometry(xShape: readonly number[], wShape: readonly number[], opts: Conv3dOptions): Geometry {
  if (xShape.length !== 5) throw new Error(`conv3d: x must be [N, C, D, H, W], got ${formatShape(xShape)}`);
  if (wShape.length !== 5) {
    throw new Error(`conv3d: w must be [Cout, Cin/groups, kd, kh, kw], got ${formatShape(wShape)}`);
  }
  const groups = opts.groups ?? 1;
  if (!Number.isInteger(groups) || groups < 1) {
    throw new Error(`conv3d: groups ${groups} must be a positive integer`);
  }
  const [n, cin, ...inDims] = xShape;
  const [cout, cinPerGroup, ...k] = wShape;
  if (cin % groups !== 0 || cout % groups !== 0) {
    throw new Error(`conv3d: groups ${groups} must divide Cin ${cin} and Cout ${cout}`);
  }
  if (cinPerGroup !== cin / groups) {
    throw new Error(
      `conv3d: w ${formatShape(wShape)} expects ${cinPerGroup * groups} input channels, x ${
        formatShape(xShape)
      } has ${cin} (groups ${groups})`,
    );
  }
  const stride = triple(opts.stride, 1, "stride", 1);
  const pad = triple(opts.padding, 0, "padding", 0);
  const dil = triple(opts.dilation, 1, "dilation", 1);
  const outDims = [0, 1, 2].map((a) =>
    Math.floor((inDims[a] + 2 * pad[a] - dil[a] * (k[a] - 1) - 1) / stride[a]) + 1
  );
  if (outDims.some((o) => o <= 0) || k.some((e) => e <= 0)) {
    throw new Error(
      `conv3d: output size ${formatShape(outDims)} is not positive (input ${formatShape(xShape)}, kernel ${
        formatShape(wShape)
      }, padding ${pad}, dilation ${dil}, stride ${stride})`,
    );
  }
  return {
    n,
    cin,
    cout,
    groups,
    inDims: inDims as [number, number, number],
    k: k as [number, number, number],
    stride,
    pad,
    dil,
    outDims: outDims as [number, number, number],
  };
}

/** The output shape [N, Cout, OD, OH, OW] of `conv3d(x, w)` for these shapes and options; throws if invalid. */
export function conv3dOutputShape(
  xShape: readonly number[],
  wShape: readonly number[],
  opts: Conv3dOptions = {},
): number[] {
  const g = geometry(xShape, wShape, opts);
  return [g.n, g.cout, ...g.outDims];
}

/**
 * Calls `tap(xi, wi, oi)` with flat indices into x, w and the output for every multiply-add
 * out[oi] += x[xi]·w[wi] of the convolution (taps that land in the zero padding are skipped).
 */
function forEachTap(g: Geometry, tap: (xi: number, wi: number, oi: number) => void): void {
  const [D, H, W] = g.inDims;
  const [KD, KH, KW] = g.k;
  const [OD, OH, OW] = g.outDims;
  const cinG = g.cin / g.groups;
  const coutG = g.cout / g.groups;
  for (let n = 0; n < g.n; n++) {
    for (let co = 0; co < g.cout; co++) {
      const grp = Math.floor(co / coutG);
      for (let od = 0; od < OD; od++) {
        for (let oh = 0; oh < OH; oh++) {
          for (let ow = 0; ow < OW; ow++) {
            const oi = (((n * g.cout + co) * OD + od) * OH + oh) * OW + ow;
            for (let cig = 0; cig < cinG; cig++) {
              const ci = grp * cinG + cig;
              for (let kd = 0; kd < KD; kd++) {
                const id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
                if (id < 0 || id >= D) continue;
                for (let kh = 0; kh < KH; kh++) {
                  const ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
                  if (ih < 0 || ih >= H) continue;
                  for (let kw = 0; kw < KW; kw++) {
                    const iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
                    if (iw < 0 || iw >= W) continue;
                    const xi = (((n * g.cin + ci) * D + id) * H + ih) * W + iw;
                    const wi = (((co * cinG + cig) * KD + kd) * KH + kh) * KW + kw;
                    tap(xi, wi, oi);
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

function checkBias(bias: RefTensor, cout: number): void {
  checkTensor(bias, "conv: bias");
  if (bias.shape.length !== 1 || bias.shape[0] !== cout) {
    throw new Error(`conv: bias must have shape [${cout}], got ${formatShape(bias.shape)}`);
  }
}

/** 3-D convolution (PyTorch `F.conv3d(x, w, bias, stride, padding, dilation, groups)`), accumulated in float64. */
export function conv3d(
  x: RefTensor,
  w: RefTensor,
  bias?: RefTensor | null,
  opts: Conv3dOptions = {},
): RefTensor {
  checkTensor(x, "conv3d: x");
  checkTensor(w, "conv3d: w");
  const g = geometry(x.shape, w.shape, opts);
  const shape = [g.n, g.cout, ...g.outDims];
  const out = new Float64Array(sizeOf(shape));
  forEachTap(g, (xi, wi, oi) => {
    out[oi] += x.data[xi] * w.data[wi];
  });
  if (bias) {
    checkBias(bias, g.cout);
    const spatial = g.outDims[0] * g.outDims[1] * g.outDims[2];
    for (let i = 0; i < out.length; i++) out[i] += bias.data[Math.floor(i / spatial) % g.cout];
  }
  return { shape, data: out };
}

/**
 * Exact gradients of L = Σ conv3d(x, w, b) ⊙ gradOut with respect to x, w and b (b itself does not affect
 * them, so it is not an argument). `gradOut` must have the output shape.
 */
export function conv3dBackward(
  x: RefTensor,
  w: RefTensor,
  gradOut: RefTensor,
  opts: Conv3dOptions = {},
): ConvGrads {
  checkTensor(x, "conv3dBackward: x");
  checkTensor(w, "conv3dBackward: w");
  checkTensor(gradOut, "conv3dBackward: gradOut");
  const g = geometry(x.shape, w.shape, opts);
  const outShape = [g.n, g.cout, ...g.outDims];
  if (gradOut.shape.length !== 5 || gradOut.shape.some((d, i) => d !== outShape[i])) {
    throw new Error(
      `conv3dBackward: gradOut must have the output shape ${formatShape(outShape)}, got ${
        formatShape(gradOut.shape)
      }`,
    );
  }
  const dx = new Float64Array(x.data.length);
  const dw = new Float64Array(w.data.length);
  forEachTap(g, (xi, wi, oi) => {
    const go = gradOut.data[oi];
    dx[xi] += go * w.data[wi];
    dw[wi] += go * x.data[xi];
  });
  const db = new Float64Array(g.cout);
  const spatial = g.outDims[0] * g.outDims[1] * g.outDims[2];
  for (let i = 0; i < gradOut.data.length; i++) db[Math.floor(i / spatial) % g.cout] += gradOut.data[i];
  return {
    dx: { shape: [...x.shape], data: dx },
    dw: { shape: [...w.shape], data: dw },
    db: { shape: [g.cout], data: db },
  };
}

function lift2d(x: RefTensor, what: string, rankName: string): RefTensor {
  checkTensor(x, what);
  if (x.shape.length !== 4) throw new Error(`${what} must be ${rankName}, got ${formatShape(x.shape)}`);
  const [a, b, h, w] = x.shape;
  return { shape: [a, b, 1, h, w], data: x.data };
}

function opts2dTo3d(opts: Conv2dOptions): Conv3dOptions {
  return {
    stride: pairToTriple(opts.stride, 1, "stride"),
    padding: pairToTriple(opts.padding, 0, "padding"),
    dilation: pairToTriple(opts.dilation, 1, "dilation"),
    groups: opts.groups,
  };
}

function drop2d(t: RefTensor): RefTensor {
  const [a, b, , h, w] = t.shape;
  return { shape: [a, b, h, w], data: t.data };
}

/** 2-D convolution (PyTorch `F.conv2d`): x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw]. Runs conv3d with D = kd = 1. */
export function conv2d(
  x: RefTensor,
  w: RefTensor,
  bias?: RefTensor | null,
  opts: Conv2dOptions = {},
): RefTensor {
  const x3 = lift2d(x, "conv2d: x", "[N, C, H, W]");
  const w3 = lift2d(w, "conv2d: w", "[Cout, Cin/groups, kh, kw]");
  return drop2d(conv3d(x3, w3, bias, opts2dTo3d(opts)));
}

/** Exact gradients of {@linkcode conv2d}; see {@linkcode conv3dBackward}. */
export function conv2dBackward(
  x: RefTensor,
  w: RefTensor,
  gradOut: RefTensor,
  opts: Conv2dOptions = {},
): ConvGrads {
  const x3 = lift2d(x, "conv2dBackward: x", "[N, C, H, W]");
  const w3 = lift2d(w, "conv2dBackward: w", "[Cout, Cin/groups, kh, kw]");
  const g3 = lift2d(gradOut, "conv2dBackward: gradOut", "[N, Cout, OH, OW]");
  const r = conv3dBackward(x3, w3, g3, opts2dTo3d(opts));
  return { dx: drop2d(r.dx), dw: drop2d(r.dw), db: r.db };
}
