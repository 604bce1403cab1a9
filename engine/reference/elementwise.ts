/**
 * Element-wise reference ops: unary math and activations, broadcasting binary ops, `where`, `clamp` and
 * comparisons. Semantics follow PyTorch (and NumPy, which agrees for these ops): NaN propagates through
 * arithmetic, `maximum`/`minimum`/`clamp`/`relu` propagate NaN, comparisons with NaN are false (except
 * `notEqual`, which is true), and binary ops broadcast like NumPy.
 *
 * @module
 */

import {
  asTensor,
  broadcastIndex,
  broadcastShapes,
  checkTensor,
  type RefTensor,
  type TensorLike,
} from "./tensor.ts";

// --- Generic helpers ---------------------------------------------------------------------------------------

/** Applies `f` to every element. */
export function map(x: RefTensor, f: (v: number) => number): RefTensor {
  checkTensor(x);
  const data = new Float64Array(x.data.length);
  for (let i = 0; i < data.length; i++) data[i] = f(x.data[i]);
  return { shape: [...x.shape], data };
}

/** Applies `f` element-wise to `a` and `b` after NumPy broadcasting (numbers are scalars). */
export function zipWith(a: TensorLike, b: TensorLike, f: (x: number, y: number) => number): RefTensor {
  const ta = checkTensor(asTensor(a), "a");
  const tb = checkTensor(asTensor(b), "b");
  const shape = broadcastShapes(ta.shape, tb.shape);
  const ia = broadcastIndex(ta.shape, shape);
  const ib = broadcastIndex(tb.shape, shape);
  const data = new Float64Array(ia.length);
  for (let i = 0; i < data.length; i++) data[i] = f(ta.data[ia[i]], tb.data[ib[i]]);
  return { shape, data };
}

/** Applies `f` element-wise to three broadcast operands. */
export function zipWith3(
  a: TensorLike,
  b: TensorLike,
  c: TensorLike,
  f: (x: number, y: number, z: number) => number,
): RefTensor {
  const ta = checkTensor(asTensor(a), "a");
  const tb = checkTensor(asTensor(b), "b");
  const tc = checkTensor(asTensor(c), "c");
  const shape = broadcastShapes(ta.shape, tb.shape, tc.shape);
  const ia = broadcastIndex(ta.shape, shape);
  const ib = broadcastIndex(tb.shape, shape);
  const ic = broadcastIndex(tc.shape, shape);
  const data = new Float64Array(ia.length);
  for (let i = 0; i < data.length; i++) data[i] = f(ta.data[ia[i]], tb.data[ib[i]], tc.data[ic[i]]);
  return { shape, data };
}

// --- Scalar special functions -------------------------------------------------------------------------------

const TWO_OVER_SQRT_PI = 1.1283791670955126; // 2/√π
const ONE_OVER_SQRT_PI = 0.5641895835477563; // 1/√π
const SQRT1_2 = Math.SQRT1_2;
/** Below this |x| erf uses the power series, above it the continued fraction for erfc. */
const ERF_SWITCH = 2.5;

/** exp(-x²) without the error of rounding x² first: x = h + l with h*h exact. */
function expNegSquare(x: number): number {
  const h = Math.round(x * 4096) / 4096; // 12 fractional bits: h*h is exact for |x| < 2^20
  const d = (x - h) * (x + h); // x² - h², computed with a tiny relative error
  return Math.exp(-h * h) * Math.exp(-d);
}

/**
 * erf by its everywhere-convergent series of positive terms (no cancellation):
 * erf(x) = (2/√π) e^{-x²} Σₙ 2ⁿ x^{2n+1} / (1·3·…·(2n+1)).
 */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 1000; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) <= 1e-17 * Math.abs(sum)) break;
  }
  return TWO_OVER_SQRT_PI * expNegSquare(x) * sum;
}

/**
 * erfc for x > 0 by the Laplace continued fraction, evaluated with the modified Lentz method:
 * erfc(x) = (e^{-x²}/√π) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …))))).
 */
function erfcContinuedFraction(x: number): number {
  const tiny = 1e-300;
  let f = x;
  let c = x;
  let d = 0;
  for (let n = 1; n < 5000; n++) {
    const a = n / 2;
    d = x + a * d;
    if (d === 0) d = tiny;
    d = 1 / d;
    c = x + a / c;
    if (c === 0) c = tiny;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 2e-16) break;
  }
  return (ONE_OVER_SQRT_PI * expNegSquare(x)) / f;
}

/**
 * The error function erf(x) = (2/√π) ∫₀ˣ e^{-t²} dt in float64.
 *
 * Accuracy: for |x| < 2.5 a series of positive terms (relative error ≲ 1e-15); beyond, 1 − erfc(|x|) with
 * erfc from a continued fraction (absolute error ≲ 1e-16, i.e. full precision since erf ≈ ±1 there).
 * Checked against 30-digit mpmath values in tests/reference/elementwise.test.ts.
 */
export function erfScalar(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  if (ax < ERF_SWITCH) return erfSeries(x);
  if (ax > 6.5) return Math.sign(x); // erfc(6.5) < 4e-20: 1 - erfc rounds to 1
  const r = 1 - erfcContinuedFraction(ax);
  return x < 0 ? -r : r;
}

/**
 * The complementary error function erfc(x) = 1 − erf(x), accurate in the relative sense also where it is
 * tiny (x ≫ 1): 1 − erf(x) for |x| < 1 (where erfc ≥ 0.15, so nothing cancels), the continued fraction
 * for x ≥ 1 and 2 − erfc(−x) for x ≤ −1. Relative error ≲ 3e-15 everywhere; underflows to 0 beyond x ≈ 27.3.
 */
export function erfcScalar(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x >= 1) return x > 27.3 ? 0 : erfcContinuedFraction(x);
  if (x <= -1) return x < -6.5 ? 2 : 2 - erfcContinuedFraction(-x);
  return 1 - erfSeries(x);
}

/** The logistic function 1/(1 + e^{-x}), evaluated without overflow for either sign. */
export function sigmoidScalar(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/**
 * Exact GELU as PyTorch's default (`approximate='none'`): x·Φ(x) = x/2 · (1 + erf(x/√2)), evaluated as
 * x/2 · erfc(−x/√2) so that the negative tail keeps its relative accuracy: relative error ≲ 2e-14 everywhere
 * (the bound comes from rounding x/√2 where erfc is tiny; it is ~1e-15 for |x| < 4).
 */
export function geluScalar(x: number): number {
  return 0.5 * x * erfcScalar(-x * SQRT1_2);
}

// --- Unary ops ----------------------------------------------------------------------------------------------

/** −x. */
export function neg(x: RefTensor): RefTensor {
  return map(x, (v) => -v);
}

/** |x|. */
export function abs(x: RefTensor): RefTensor {
  return map(x, Math.abs);
}

/** eˣ. */
export function exp(x: RefTensor): RefTensor {
  return map(x, Math.exp);
}

/** Natural logarithm (log 0 = −∞, log of a negative = NaN). */
export function log(x: RefTensor): RefTensor {
  return map(x, Math.log);
}

/** √x (NaN for negatives). */
export function sqrt(x: RefTensor): RefTensor {
  return map(x, Math.sqrt);
}

/** 1/√x (rsqrt(0) = +∞). */
export function rsqrt(x: RefTensor): RefTensor {
  return map(x, (v) => 1 / Math.sqrt(v));
}

/** x². */
export function square(x: RefTensor): RefTensor {
  return map(x, (v) => v * v);
}

/** 1/x. */
export function reciprocal(x: RefTensor): RefTensor {
  return map(x, (v) => 1 / v);
}

/** sin x (radians). */
export function sin(x: RefTensor): RefTensor {
  return map(x, Math.sin);
}

/** cos x (radians). */
export function cos(x: RefTensor): RefTensor {
  return map(x, Math.cos);
}

/** The logistic sigmoid 1/(1 + e^{-x}). */
export function sigmoid(x: RefTensor): RefTensor {
  return map(x, sigmoidScalar);
}

/** Hyperbolic tangent. */
export function tanh(x: RefTensor): RefTensor {
  return map(x, Math.tanh);
}

/** max(x, 0), with relu(NaN) = NaN as in PyTorch. */
export function relu(x: RefTensor): RefTensor {
  return map(x, (v) => (v > 0 ? v : Number.isNaN(v) ? NaN : 0));
}

/** SiLU (swish): x·sigmoid(x). */
export function silu(x: RefTensor): RefTensor {
  return map(x, (v) => v * sigmoidScalar(v));
}

/** Exact (erf) GELU, PyTorch's default `approximate='none'`. See {@linkcode geluScalar}. */
export function gelu(x: RefTensor): RefTensor {
  return map(x, geluScalar);
}

/** The tanh approximation of GELU (PyTorch `approximate='tanh'`): x/2·(1 + tanh(√(2/π)(x + 0.044715x³))). */
export function geluTanh(x: RefTensor): RefTensor {
  const k = Math.sqrt(2 / Math.PI);
  return map(x, (v) => 0.5 * v * (1 + Math.tanh(k * (v + 0.044715 * v * v * v))));
}

/** erf applied element-wise (see {@linkcode erfScalar} for accuracy). */
export function erf(x: RefTensor): RefTensor {
  return map(x, erfScalar);
}

/** erfc applied element-wise (see {@linkcode erfcScalar} for accuracy). */
export function erfc(x: RefTensor): RefTensor {
  return map(x, erfcScalar);
}

// --- Binary ops (NumPy broadcasting; numbers are scalars) ------------------------------------------------------

/** a + b. */
export function add(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => x + y);
}

/** a − b. */
export function sub(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => x - y);
}

/** a · b. */
export function mul(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => x * y);
}

/** a / b (IEEE: x/0 = ±∞, 0/0 = NaN). */
export function div(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => x / y);
}

/** aᵇ with C `pow` semantics (negative base to a non-integer power = NaN; x⁰ = 1 even for NaN). */
export function pow(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, Math.pow);
}

/** Element-wise maximum; NaN if either is NaN (PyTorch `maximum`). */
export function maximum(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, Math.max);
}

/** Element-wise minimum; NaN if either is NaN (PyTorch `minimum`). */
export function minimum(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, Math.min);
}

/** 1 where a > b, else 0. */
export function greater(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x > y ? 1 : 0));
}

/** 1 where a < b, else 0. */
export function less(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x < y ? 1 : 0));
}

/** 1 where a ≥ b, else 0. */
export function greaterEqual(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x >= y ? 1 : 0));
}

/** 1 where a ≤ b, else 0. */
export function lessEqual(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x <= y ? 1 : 0));
}

/** 1 where a = b, else 0 (NaN equals nothing). */
export function equal(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x === y ? 1 : 0));
}

/** 1 where a ≠ b, else 0 (NaN differs from everything). */
export function notEqual(a: TensorLike, b: TensorLike): RefTensor {
  return zipWith(a, b, (x, y) => (x !== y ? 1 : 0));
}

/** `a` where `cond` is nonzero (NaN counts as nonzero, as in PyTorch's bool cast), else `b`; all broadcast. */
export function where(cond: TensorLike, a: TensorLike, b: TensorLike): RefTensor {
  return zipWith3(cond, a, b, (c, x, y) => (c !== 0 ? x : y));
}

/**
 * PyTorch `clamp`: min(max(x, lo), hi), with either bound optional (`undefined`/`null` = unbounded) and
 * bounds broadcast like the other operands. If lo > hi the result is hi, as in PyTorch. NaN in `x` or in a
 * bound propagates.
 */
export function clamp(x: TensorLike, lo?: TensorLike | null, hi?: TensorLike | null): RefTensor {
  if ((lo === undefined || lo === null) && (hi === undefined || hi === null)) {
    throw new Error("clamp: at least one of lo and hi must be given");
  }
  const l = lo ?? -Infinity;
  const h = hi ?? Infinity;
  return zipWith3(x, l, h, (v, a, b) => Math.min(Math.max(v, a), b));
}
