/**
 * Convolution geometry: argument checking of `conv3d`/`conv2d`, the validated shapes and options of one
 * convolution (`Geometry`), and the description of one kernel run (`ConvCall`).
 *
 * @module
 */

import type { ConvShapeKey, Triple } from "../../../kernels/conv.ts";
import { formatShape } from "../../shape.ts";
import { Tensor } from "../../tensor.ts";

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

export interface Geometry {
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

export function perAxis(
  op: string,
  name: string,
  v: unknown,
  dflt: number,
  axes: number,
  min: number,
): number[] {
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

export function checkTensor(op: string, name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) throw new Error(`${op}: ${name} must be a Tensor.`);
  t.storage(op);
  if (t.dtype !== "float32") throw new Error(`${op}: ${name} must be float32, got ${t.dtype}.`);
  return t;
}

/** Lifted (3-D) options of a convolution. */
export interface LiftedOptions {
  stride: number[];
  padding: number[];
  dilation: number[];
  groups: unknown;
}

/**
 * Validates shapes and options. A 2-D convolution arrives lifted to 3-D (depth 1); `shown` holds its
 * original shapes so that messages speak of what the caller passed.
 */
export function geometry(
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

/** A convolution call: input [n, cin, ...inDims] convolved with packed weights into a (strided) output. */
export interface ConvCall {
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

export function contiguousStrides5(shape: readonly number[]): [number, number, number, number, number] {
  const [, c, d, h, w] = shape;
  return [c * d * h * w, d * h * w, h * w, w, 1];
}

/** `g` restricted to one batch item, `ci` input and `co` output channels. */
export function subGeometry(g: Geometry, ci: number, co: number): Geometry {
  return { ...g, n: 1, cin: ci, cout: co, cinG: ci, coutG: co };
}

/** The profile label of a convolution: op, pass, channels, input size, kernel and stride. */
export function profileName(op: string, pass: string, g: Geometry): string {
  const size = g.inDims.every((d) => d === g.inDims[0]) ? `${g.inDims[0]}³` : g.inDims.join("×");
  const k = g.kernel.every((d) => d === g.kernel[0]) ? g.kernel[0] : g.kernel.join("×");
  const s = g.stride.some((d) => d > 1) ? ` s${g.stride.join(",")}` : "";
  return `${op} ${pass} ${g.cin}→${g.cout} ${size} k${k}${s}${g.n > 1 ? ` n${g.n}` : ""}`;
}
