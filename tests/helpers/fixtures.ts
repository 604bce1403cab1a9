/**
 * Loader for the PyTorch reference fixtures in `tests/fixtures/torch_kernels.json`, made by
 * `tests/fixtures/make_torch_kernel_fixtures.py` (see its docstring for how and how to rerun it).
 *
 * Every case holds PyTorch's output for float32 inputs computed in float64, and the gradients of
 * L = Σ out ⊙ r for a stored random r. Inputs and r come back as the exact float32 values PyTorch used
 * (stored as shortest round-trip decimals, re-rounded here with `Math.fround`); output and gradients as the
 * float64 answer (stored with 12 significant digits).
 *
 * @module
 */

import { formatShape, type RefTensor, sizeOf } from "../../engine/reference/tensor.ts";

export type { RefTensor };

/** The ops with fixtures, named as in PyTorch. */
export type TorchOp =
  | "conv3d"
  | "conv2d"
  | "group_norm"
  | "layer_norm"
  | "attention"
  | "interpolate"
  | "avg_pool3d"
  | "avg_pool2d"
  | "einsum";

/** A per-axis parameter as PyTorch received it: one number for every axis, or one per axis. */
export type PerAxis = number | number[];

/** Options of a `conv3d` / `conv2d` case (absent = PyTorch default). */
export interface ConvCaseOptions {
  /** Stride. */
  stride?: PerAxis;
  /** Zero padding on both sides. */
  padding?: PerAxis;
  /** Dilation. */
  dilation?: PerAxis;
  /** Channel groups. */
  groups?: number;
}

/** Options of a `group_norm` case. */
export interface GroupNormCaseOptions {
  /** Number of channel groups. */
  numGroups: number;
  /** Added to the variance. */
  eps: number;
}

/** Options of a `layer_norm` case. */
export interface LayerNormCaseOptions {
  /** The trailing shape normalised over. */
  normalizedShape: number[];
  /** Added to the variance. */
  eps: number;
}

/** Options of an `attention` case. */
export interface AttentionCaseOptions {
  /** Multiplier of q·kᵀ; null means the default 1/√d. */
  scale: number | null;
}

/** Options of an `interpolate` case (always `align_corners=False`); exactly one of size and scaleFactor. */
export interface InterpolateCaseOptions {
  /** Interpolation mode. */
  mode: "nearest" | "bilinear" | "trilinear";
  /** Output spatial size, one per axis. */
  size?: number[];
  /** Scale factor, for every axis or one per axis. */
  scaleFactor?: PerAxis;
}

/** Options of an `avg_pool3d` / `avg_pool2d` case (no padding). */
export interface PoolCaseOptions {
  /** Window size. */
  kernel: PerAxis;
  /** Window step; absent means `kernel`. */
  stride?: PerAxis;
}

/** Options of an `einsum` case. */
export interface EinsumCaseOptions {
  /** The einsum spec, with explicit output. */
  spec: string;
}

/** The options type of each op's cases. */
export interface CaseOptionsByOp {
  /** See {@linkcode ConvCaseOptions}. */
  conv3d: ConvCaseOptions;
  /** See {@linkcode ConvCaseOptions}. */
  conv2d: ConvCaseOptions;
  /** See {@linkcode GroupNormCaseOptions}. */
  group_norm: GroupNormCaseOptions;
  /** See {@linkcode LayerNormCaseOptions}. */
  layer_norm: LayerNormCaseOptions;
  /** See {@linkcode AttentionCaseOptions}. */
  attention: AttentionCaseOptions;
  /** See {@linkcode InterpolateCaseOptions}. */
  interpolate: InterpolateCaseOptions;
  /** See {@linkcode PoolCaseOptions}. */
  avg_pool3d: PoolCaseOptions;
  /** See {@linkcode PoolCaseOptions}. */
  avg_pool2d: PoolCaseOptions;
  /** See {@linkcode EinsumCaseOptions}. */
  einsum: EinsumCaseOptions;
}

/** One fixture case. */
export interface TorchCase<Op extends TorchOp = TorchOp> {
  /** The PyTorch op. */
  op: Op;
  /** Human-readable case name, unique within the op. */
  name: string;
  /** The op's options. */
  options: CaseOptionsByOp[Op];
  /**
   * The inputs by name, in argument order: conv `x, w, bias?`; norms `x, weight?, bias?`; attention
   * `q, k, v`; interpolate and pools `x`; einsum `op0, op1, ...`. Values are exact float32 numbers.
   */
  inputs: Record<string, RefTensor>;
  /** The weights r of L = Σ out ⊙ r (output shape, exact float32 numbers). */
  r: RefTensor;
  /** PyTorch's output (float64 computation). */
  output: RefTensor;
  /** ∂L/∂input for every input (all are differentiable), by input name. */
  grads: Record<string, RefTensor>;
}

interface StoredArray {
  shape: number[];
  data: number[];
}

interface StoredCase {
  op: TorchOp;
  name: string;
  options: Record<string, unknown>;
  inputs: Record<string, StoredArray>;
  r: StoredArray;
  output: StoredArray;
  grads: Record<string, StoredArray>;
}

const FIXTURE_FILE = new URL("../fixtures/torch_kernels.json", import.meta.url);

let cache: StoredCase[] | undefined;

function storedCases(): StoredCase[] {
  cache ??= (JSON.parse(Deno.readTextFileSync(FIXTURE_FILE)) as { cases: StoredCase[] }).cases;
  return cache;
}

function toRef(a: StoredArray, what: string, f32: boolean): RefTensor {
  const n = sizeOf(a.shape);
  if (a.data.length !== n) {
    throw new Error(`torch fixtures: ${what} has shape ${formatShape(a.shape)} but ${a.data.length} values`);
  }
  const data = f32 ? Float64Array.from(a.data, Math.fround) : Float64Array.from(a.data);
  return { shape: [...a.shape], data };
}

function mapValues(
  o: Record<string, StoredArray>,
  what: string,
  f32: boolean,
): Record<string, RefTensor> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, toRef(v, `${what} ${k}`, f32)]));
}

/**
 * The fixture cases of one op, in file order. Throws if the fixture file has none (so that a test over
 * them cannot pass vacuously) or if an array's length disagrees with its shape.
 */
export function torchCases<Op extends TorchOp>(op: Op): TorchCase<Op>[] {
  const cases = storedCases().filter((c) => c.op === op).map((c): TorchCase<Op> => {
    const what = `${op} '${c.name}'`;
    return {
      op,
      name: c.name,
      options: c.options as unknown as CaseOptionsByOp[Op],
      inputs: mapValues(c.inputs, `${what} input`, true),
      r: toRef(c.r, `${what} r`, true),
      output: toRef(c.output, `${what} output`, false),
      grads: mapValues(c.grads, `${what} gradient`, false),
    };
  });
  if (cases.length === 0) {
    throw new Error(`torch fixtures: no cases for op '${op}' in ${FIXTURE_FILE.pathname}`);
  }
  return cases;
}
