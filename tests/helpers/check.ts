/**
 * Numeric comparison helpers for kernel tests: `assertClose` with a useful failure report, and the
 * maximum absolute / relative differences.
 *
 * @module
 */

import { AssertionError } from "node:assert";
import type { RefTensor } from "../../engine/reference/tensor.ts";

/** Values to compare: a plain array-like of numbers, or a reference tensor (whose shape is then checked too). */
export type Values = ArrayLike<number> | RefTensor;

/** Options of {@linkcode assertClose}. */
export interface CloseOptions {
  /** Relative tolerance (default 1.3e-6, PyTorch's `assert_close` default for float32). */
  rtol?: number;
  /** Absolute tolerance (default 1e-5, PyTorch's `assert_close` default for float32). */
  atol?: number;
  /** A label for the failure message, e.g. the op and case being tested. */
  name?: string;
  /** Whether NaN matches NaN (default true). A NaN against a number is always a mismatch. */
  equalNan?: boolean;
  /** Shape used to print multi-indices when neither argument is a RefTensor. */
  shape?: readonly number[];
}

function isTensor(v: Values): v is RefTensor {
  return typeof v === "object" && v !== null && "shape" in v && "data" in v &&
    Array.isArray((v as RefTensor).shape);
}

function valuesOf(v: Values): ArrayLike<number> {
  return isTensor(v) ? v.data : v;
}

function multiIndex(flat: number, shape: readonly number[] | undefined): string {
  if (!shape || shape.length === 0) return "";
  const idx: number[] = [];
  let r = flat;
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = r % shape[k];
    r = Math.floor(r / shape[k]);
  }
  return ` [${idx.join(", ")}]`;
}

/**
 * How badly one element violates |a − e| ≤ atol + rtol·|e|: ≤ 1 passes. Equal values (including equal
 * infinities, and NaN vs NaN when allowed) give 0; a NaN or infinity mismatch gives Infinity.
 */
function violation(a: number, e: number, rtol: number, atol: number, equalNan: boolean): number {
  if (Number.isNaN(a) || Number.isNaN(e)) {
    return Number.isNaN(a) && Number.isNaN(e) && equalNan ? 0 : Infinity;
  }
  if (a === e) return 0;
  if (!Number.isFinite(a) || !Number.isFinite(e)) return Infinity;
  const tol = atol + rtol * Math.abs(e);
  const d = Math.abs(a - e);
  return tol > 0 ? d / tol : Infinity;
}

/**
 * Asserts that every element satisfies |actual − expected| ≤ atol + rtol·|expected| (PyTorch /
 * NumPy `allclose` with `expected` as the reference). Fails on a length mismatch, on a shape mismatch when
 * both are RefTensors, and on NaN/±∞ mismatches. The error names the number of mismatching elements, the
 * worst one (flat index, multi-index, actual, expected, absolute and relative error) and the first few.
 */
export function assertClose(actual: Values, expected: Values, opts: CloseOptions = {}): void {
  const rtol = opts.rtol ?? 1.3e-6;
  const atol = opts.atol ?? 1e-5;
  const equalNan = opts.equalNan ?? true;
  const label = opts.name ? `assertClose(${opts.name})` : "assertClose";
  const shape = isTensor(expected) ? expected.shape : isTensor(actual) ? actual.shape : opts.shape;
  if (isTensor(actual) && isTensor(expected)) {
    const sa = actual.shape;
    const se = expected.shape;
    if (sa.length !== se.length || sa.some((d, i) => d !== se[i])) {
      throw new AssertionError({
        message: `${label}: shape [${sa.join(", ")}] differs from expected [${se.join(", ")}]`,
      });
    }
  }
  const a = valuesOf(actual);
  const e = valuesOf(expected);
  if (a.length !== e.length) {
    throw new AssertionError({
      message: `${label}: length ${a.length} differs from expected length ${e.length}`,
    });
  }
  let count = 0;
  let worst = -1;
  let worstV = 0;
  const first: number[] = [];
  for (let i = 0; i < a.length; i++) {
    const v = violation(a[i], e[i], rtol, atol, equalNan);
    if (v > 1) {
      count++;
      if (first.length < 5) first.push(i);
      if (v > worstV) {
        worstV = v;
        worst = i;
      }
    }
  }
  if (count === 0) return;
  const fmt = (i: number): string => {
    const d = Math.abs(a[i] - e[i]);
    const rel = e[i] === 0 ? (d === 0 ? 0 : Infinity) : d / Math.abs(e[i]);
    return `index ${i}${multiIndex(i, shape)}: actual ${a[i]}, expected ${e[i]}, abs err ${
      d.toExponential(3)
    }, rel err ${rel.toExponential(3)}`;
  };
  const lines = [
    `${label}: ${count} of ${a.length} elements differ (rtol ${rtol}, atol ${atol}); max abs diff ${
      maxAbsDiff(a, e).toExponential(3)
    }`,
    `  worst: ${fmt(worst)}`,
    ...first.filter((i) => i !== worst).map((i) => `  also:  ${fmt(i)}`),
  ];
  throw new AssertionError({ message: lines.join("\n") });
}

function checkLengths(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: lengths differ (${a.length} vs ${b.length})`);
}

/**
 * max |a_i − b_i| (0 for empty inputs). Equal values, equal infinities and NaN vs NaN count as 0; NaN against
 * a number, or an infinity against anything else, counts as Infinity.
 */
export function maxAbsDiff(a: Values, b: Values): number {
  const x = valuesOf(a);
  const y = valuesOf(b);
  checkLengths(x, y, "maxAbsDiff");
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === y[i] || (Number.isNaN(x[i]) && Number.isNaN(y[i]))) continue;
    const d = Math.abs(x[i] - y[i]);
    m = Math.max(m, Number.isNaN(d) ? Infinity : d);
  }
  return m;
}

/**
 * max |a_i − b_i| / max(|b_i|, floor), with `b` the reference (0 for empty inputs). Equal values count as 0; a
 * difference against b_i = 0 with the default floor 0 gives Infinity, so pass a floor (e.g. 1e-6) to ignore
 * relative error near zero. NaN handling as in {@linkcode maxAbsDiff}.
 */
export function maxRelDiff(a: Values, b: Values, floor = 0): number {
  const x = valuesOf(a);
  const y = valuesOf(b);
  checkLengths(x, y, "maxRelDiff");
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === y[i] || (Number.isNaN(x[i]) && Number.isNaN(y[i]))) continue;
    const d = Math.abs(x[i] - y[i]);
    if (Number.isNaN(d)) return Infinity;
    const den = Math.max(Math.abs(y[i]), floor);
    m = Math.max(m, den === 0 ? Infinity : d / den);
  }
  return m;
}
