/**
 * Differentiable element-wise ops with NumPy broadcasting. Backward passes are themselves fused map
 * kernels (e.g. `g·y·(1−y)` for sigmoid), so a gradient costs one dispatch per input.
 *
 * @module
 */

import { record } from "../autograd.ts";
import { formatShape } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { map } from "./map.ts";
import { mean, sumTo } from "./reduce.ts";

/** A tensor or a plain number (broadcast as a scalar). */
export type TensorLike = Tensor | number;

function checkTensor(op: string, x: unknown, what = "x"): Tensor {
  if (!(x instanceof Tensor)) {
    throw new Error(`${op}: ${what} must be a Tensor, got ${x === null ? "null" : typeof x}.`);
  }
  x.storage(op);
  return x;
}

// --- Unary -------------------------------------------------------------------------------------------

/**
 * Substitutes the placeholder tokens of an expression template (`G` gradient, `X`/`Y` operands or output)
 * with kernel variables. Tokens are single capitals, so WGSL names are never touched.
 */
function bind(template: string, vars: Record<string, string>): string {
  return template.replace(/\b[A-Z]\b/g, (t) => {
    const v = vars[t];
    if (v === undefined) throw new Error(`expression ${template}: unbound ${t}`);
    return v;
  });
}

interface UnaryDef {
  /** Forward WGSL over `X`. */
  fwd: string;
  /** Gradient WGSL over `G` (upstream gradient), `X` (input) and `Y` (output). */
  bwd: string;
}

/** Names of the unary element-wise ops. */
export type UnaryOp =
  | "neg"
  | "abs"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "square"
  | "sigmoid"
  | "tanh"
  | "relu"
  | "silu"
  | "gelu";

const UNARY: Record<UnaryOp, UnaryDef> = {
  neg: { fwd: "-X", bwd: "-G" },
  abs: { fwd: "abs(X)", bwd: "G * sign(X)" },
  exp: { fwd: "exp(X)", bwd: "G * Y" },
  log: { fwd: "log(X)", bwd: "G / X" },
  sqrt: { fwd: "sqrt(X)", bwd: "G * 0.5 / Y" },
  rsqrt: { fwd: "inverseSqrt(X)", bwd: "G * -0.5 * Y * Y * Y" },
  square: { fwd: "X * X", bwd: "G * 2.0 * X" },
  sigmoid: { fwd: "sigmoid_f(X)", bwd: "G * Y * (1.0 - Y)" },
  tanh: { fwd: "tanh_f(X)", bwd: "G * (1.0 - Y * Y)" },
  relu: { fwd: "max(X, 0.0)", bwd: "select(0.0, G, X > 0.0)" },
  silu: { fwd: "X * sigmoid_f(X)", bwd: "G * (sigmoid_f(X) * (1.0 + X * (1.0 - sigmoid_f(X))))" },
  gelu: {
    fwd: "0.5 * X * (1.0 + erf_approx(X * 0.70710678118654752))",
    bwd:
      "G * (0.5 * (1.0 + erf_approx(X * 0.70710678118654752)) + X * 0.3989422804014327 * exp(-0.5 * X * X))",
  },
};

function unary(op: UnaryOp, x: Tensor): Tensor {
  checkTensor(op, x);
  const def: UnaryDef = UNARY[op];
  const y = map(op, bind(def.fwd, { X: "a" }), [x]);
  return record(op, y, [x], (g, [xs, ys]) => [
    map(`${op}_grad`, bind(def.bwd, { G: "a", X: "b", Y: "c" }), [g, xs, ys]),
  ], [x, y]);
}

/** −x. */
export const neg = (x: Tensor): Tensor => unary("neg", x);
/** |x| (gradient sign(x), 0 at 0). */
export const abs = (x: Tensor): Tensor => unary("abs", x);
/** eˣ. */
export const exp = (x: Tensor): Tensor => unary("exp", x);
/** Natural logarithm. */
export const log = (x: Tensor): Tensor => unary("log", x);
/** √x. */
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
/** 1/√x. */
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
/** x². */
export const square = (x: Tensor): Tensor => unary("square", x);
/** 1/(1+e⁻ˣ), overflow-free. */
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
/** Hyperbolic tangent, overflow-free. */
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
/** max(x, 0). */
export const relu = (x: Tensor): Tensor => unary("relu", x);
/** x·sigmoid(x) (a.k.a. swish). */
export const silu = (x: Tensor): Tensor => unary("silu", x);
/** Exact (erf) GELU, as PyTorch's default. */
export const gelu = (x: Tensor): Tensor => unary("gelu", x);

// --- Binary ------------------------------------------------------------------------------------------

interface BinaryDef {
  /** Forward WGSL over `X` and `Y`. */
  fwd: string;
  /** Gradient w.r.t. X over `G` (upstream gradient), `X` and `Y`. */
  dx: string;
  /** Gradient w.r.t. Y likewise. */
  dy: string;
}

const TIE = "select(select(0.0, 0.5, X == Y), 1.0, COND)";
/** Names of the binary element-wise ops. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum";

const BINARY: Record<BinaryOp, BinaryDef> = {
  add: { fwd: "X + Y", dx: "G", dy: "G" },
  sub: { fwd: "X - Y", dx: "G", dy: "-G" },
  mul: { fwd: "X * Y", dx: "G * Y", dy: "G * X" },
  div: { fwd: "X / Y", dx: "G / Y", dy: "-G * X / (Y * Y)" },
  pow: {
    fwd: "pow_f(X, Y)",
    dx: "select(G * Y * pow_f(X, Y - 1.0), 0.0, Y == 0.0)",
    dy: "select(0.0, G * pow_f(X, Y) * log(X), X > 0.0)",
  },
  maximum: {
    fwd: "max(X, Y)",
    dx: `G * ${TIE.replace("COND", "X > Y")}`,
    dy: `G * ${TIE.replace("COND", "Y > X")}`,
  },
  minimum: {
    fwd: "min(X, Y)",
    dx: `G * ${TIE.replace("COND", "X < Y")}`,
    dy: `G * ${TIE.replace("COND", "Y < X")}`,
  },
};

function binary(op: BinaryOp, x: TensorLike, y: TensorLike): Tensor {
  const def: BinaryDef = BINARY[op];
  if (typeof x === "number" && typeof y === "number") {
    throw new Error(`${op}: at least one operand must be a Tensor (got two numbers).`);
  }
  if (typeof y === "number") return binaryScalar(op, def, checkTensor(op, x, "a"), y, "right");
  if (typeof x === "number") return binaryScalar(op, def, checkTensor(op, y, "b"), x, "left");
  checkTensor(op, x, "a");
  checkTensor(op, y, "b");
  const out = map(op, bind(def.fwd, { X: "a", Y: "b" }), [x, y]);
  const vars = { G: "a", X: "b", Y: "c" };
  return record(op, out, [x, y], (g, [xs, ys], needs) => [
    needs[0] ? reduceTo(map(`${op}_dx`, bind(def.dx, vars), [g, xs, ys]), xs.shape) : null,
    needs[1] ? reduceTo(map(`${op}_dy`, bind(def.dy, vars), [g, xs, ys]), ys.shape) : null,
  ], [x, y]);
}

/** `op` with one operand a scalar constant `s0` (no upload, no broadcast). */
function binaryScalar(op: BinaryOp, def: BinaryDef, t: Tensor, s: number, side: "left" | "right"): Tensor {
  const fwdVars = side === "right" ? { X: "a", Y: "s0" } : { X: "s0", Y: "a" };
  const out = map(`${op}_s${side[0]}`, bind(def.fwd, fwdVars), [t], [s]);
  const gradVars = side === "right" ? { G: "a", X: "b", Y: "s0" } : { G: "a", X: "s0", Y: "b" };
  const expr = bind(side === "right" ? def.dx : def.dy, gradVars);
  return record(op, out, [t], (g, [ts]) => [map(`${op}_s${side[0]}_grad`, expr, [g, ts], [s])], [t]);
}

function reduceTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const r = sumTo(g, shape);
  g.dispose();
  return r;
}

/** a + b (broadcasting; either may be a number). */
export const add = (a: TensorLike, b: TensorLike): Tensor => binary("add", a, b);
/** a − b. */
export const sub = (a: TensorLike, b: TensorLike): Tensor => binary("sub", a, b);
/** a · b. */
export const mul = (a: TensorLike, b: TensorLike): Tensor => binary("mul", a, b);
/** a / b. */
export const div = (a: TensorLike, b: TensorLike): Tensor => binary("div", a, b);
/** aᵇ (negative bases allowed for integer exponents, like PyTorch). */
export const pow = (a: TensorLike, b: TensorLike): Tensor => binary("pow", a, b);
/** Element-wise maximum (ties share the gradient equally). */
export const maximum = (a: TensorLike, b: TensorLike): Tensor => binary("maximum", a, b);
/** Element-wise minimum (ties share the gradient equally). */
export const minimum = (a: TensorLike, b: TensorLike): Tensor => binary("minimum", a, b);

// --- Comparisons (not differentiable; 1 where true, 0 where false) -------------------------------------

function compare(op: string, expr: string, a: TensorLike, b: TensorLike): Tensor {
  if (typeof a === "number" && typeof b === "number") {
    throw new Error(`${op}: at least one operand must be a Tensor.`);
  }
  if (typeof b === "number") {
    return map(`${op}_sr`, bind(expr, { X: "a", Y: "s0" }), [checkTensor(op, a)], [b]);
  }
  if (typeof a === "number") {
    return map(`${op}_sl`, bind(expr, { X: "s0", Y: "a" }), [checkTensor(op, b)], [a]);
  }
  return map(op, bind(expr, { X: "a", Y: "b" }), [checkTensor(op, a), checkTensor(op, b)]);
}

/** 1 where a > b. */
export const greater = (a: TensorLike, b: TensorLike): Tensor =>
  compare("greater", "select(0.0, 1.0, X > Y)", a, b);
/** 1 where a < b. */
export const less = (a: TensorLike, b: TensorLike): Tensor =>
  compare("less", "select(0.0, 1.0, X < Y)", a, b);
/** 1 where a == b. */
export const equal = (a: TensorLike, b: TensorLike): Tensor =>
  compare("equal", "select(0.0, 1.0, X == Y)", a, b);

// --- where / clamp -----------------------------------------------------------------------------------

/** Picks `a` where `cond` is non-zero and `b` elsewhere (all three broadcast). */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  checkTensor("where", cond, "cond");
  const ta = typeof a === "number" ? null : checkTensor("where", a, "a");
  const tb = typeof b === "number" ? null : checkTensor("where", b, "b");
  const inputs = [cond, ...(ta ? [ta] : []), ...(tb ? [tb] : [])];
  const av = ta ? "b" : "s0";
  const bv = tb ? (ta ? "c" : "b") : "s1";
  const scalars = [typeof a === "number" ? a : 0, typeof b === "number" ? b : 0];
  const out = map(
    `where_${ta ? "t" : "s"}${tb ? "t" : "s"}`,
    `select(${bv}, ${av}, a != 0.0)`,
    inputs,
    scalars,
  );
  const diff = [...(ta ? [ta] : []), ...(tb ? [tb] : [])];
  return record("where", out, diff, (g, [c], needs) => {
    const grads: Array<Tensor | null> = [];
    if (ta) {
      grads.push(
        needs[0] ? reduceTo(map("where_grad_a", "select(0.0, a, b != 0.0)", [g, c]), ta.shape) : null,
      );
    }
    if (tb) {
      const need = needs[ta ? 1 : 0];
      grads.push(need ? reduceTo(map("where_grad_b", "select(a, 0.0, b != 0.0)", [g, c]), tb.shape) : null);
    }
    return grads;
  }, [cond]);
}

/** Limits x to [lo, hi] (either bound may be omitted); gradient 1 inside, 0 where clamped. */
export function clamp(x: Tensor, lo?: number, hi?: number): Tensor {
  checkTensor("clamp", x);
  const low = lo ?? -Infinity;
  const high = hi ?? Infinity;
  if (Number.isNaN(low) || Number.isNaN(high) || low > high) {
    throw new Error(`clamp: bounds [${lo}, ${hi}] are invalid; expected lo <= hi (either may be omitted).`);
  }
  const out = map("clamp", "min(max(a, s0), s1)", [x], [low, high]);
  return record("clamp", out, [x], (g, [xs]) => [
    map("clamp_grad", "select(0.0, a, b >= s0 && b <= s1)", [g, xs], [low, high]),
  ], [x]);
}

/**
 * The mean-squared-error loss `mean((a − b)²)` over all elements, as a scalar tensor (differentiable;
 * PyTorch's `mse_loss`). The per-item metric of the same quantity is `metrics.mse`.
 */
export function mseLoss(a: Tensor, b: Tensor): Tensor {
  checkTensor("mseLoss", a, "a");
  checkTensor("mseLoss", b, "b");
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`mseLoss: shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} must be equal.`);
  }
  const d = sub(a, b);
  const sq = square(d);
  d.dispose();
  const m = mean(sq);
  sq.dispose();
  return m;
}
