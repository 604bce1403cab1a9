/**
 * The float64 references in engine/reference against live PyTorch (tests/fixtures/torch_kernels.json).
 *
 * The fixtures are PyTorch's float64 answers for float32 inputs, stored with 12 significant digits, so a
 * reference with the same semantics agrees to ~1e-12 relative: TIGHT (1e-10, relative to the array's largest
 * magnitude) leaves room only for float64 summation order. Anything looser is stated where used.
 *
 * Gradients: conv has exact reference gradients (conv3dBackward). The other references are forward-only,
 * so PyTorch's gradients are checked against central differences of the reference — which also proves the
 * stored gradients consistent with the stored outputs before the GPU tests rely on them.
 */

import { AssertionError } from "node:assert";
import {
  attention,
  avgPool2d,
  avgPool3d,
  conv2d,
  conv2dBackward,
  type Conv2dOptions,
  conv3d,
  conv3dBackward,
  type Conv3dOptions,
  einsum,
  groupNorm,
  interpolate,
  layerNorm,
  type Pair,
  type RefTensor,
  type Triple,
} from "../../engine/reference/mod.ts";
import { assertClose } from "../helpers/check.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import {
  type ConvCaseOptions,
  type PerAxis,
  type TorchCase,
  torchCases,
  type TorchOp,
} from "../helpers/fixtures.ts";

/** Float64 summation-order differences plus the 12-digit storage rounding (5e-13). */
const TIGHT = 1e-10;
/**
 * Central differences (eps 1e-6) of a smooth float64 function: truncation O(eps²·f''') plus rounding
 * ~1e-16·Σ|L|/eps ≈ 1e-8 for these sizes; 1e-6 of the gradient's scale is comfortably above both.
 */
const NUMERIC = 1e-6;
/**
 * Ops linear in the differentiated input (interpolate, pools, einsum per operand): central differences with
 * a large step have no truncation error, leaving only rounding.
 */
const LINEAR_EPS = 0.5;
const LINEAR = 1e-9;

function maxAbs(t: RefTensor): number {
  let m = 0;
  for (const v of t.data) m = Math.max(m, Math.abs(v));
  return m;
}

/** Collects every mismatch of an op's cases, so one run reports them all. */
class Mismatches {
  readonly lines: string[] = [];

  /** Records a failure unless |a − e| ≤ tol·(|e| + max|e|) everywhere. */
  check(actual: RefTensor, expected: RefTensor, tol: number, label: string): void {
    try {
      assertClose(actual, expected, { rtol: tol, atol: tol * maxAbs(expected), name: label });
    } catch (e) {
      this.lines.push(e instanceof Error ? e.message : String(e));
    }
  }

  /** Runs one case, recording an exception as a mismatch. */
  run(c: TorchCase, body: () => void): void {
    try {
      body();
    } catch (e) {
      this.lines.push(`${c.op} '${c.name}' threw: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Throws one error listing all mismatches, if any. */
  throwIfAny(op: TorchOp): void {
    if (this.lines.length > 0) {
      throw new AssertionError({
        message: `${op}: reference differs from PyTorch\n${this.lines.join("\n")}`,
      });
    }
  }
}

/**
 * Checks PyTorch's gradient of every input of `c` against central differences of `f` (the reference as a
 * function of the inputs in `c.inputs` order).
 */
function checkNumericGrads(
  m: Mismatches,
  c: TorchCase,
  f: (xs: RefTensor[]) => RefTensor,
  linear: boolean,
): void {
  const names = Object.keys(c.inputs);
  const xs = names.map((k) => c.inputs[k]);
  names.forEach((name, i) => {
    const g = numericGrad(f, xs, i, c.r, linear ? LINEAR_EPS : 1e-6);
    m.check(g, c.grads[name], linear ? LINEAR : NUMERIC, `${c.op} '${c.name}' d/d${name}`);
  });
}

function triple(v: PerAxis | undefined): Triple | undefined {
  return v as Triple | undefined;
}

function pair(v: PerAxis | undefined): Pair | undefined {
  return v as Pair | undefined;
}

function conv3dOptions(o: ConvCaseOptions): Conv3dOptions {
  return {
    stride: triple(o.stride),
    padding: triple(o.padding),
    dilation: triple(o.dilation),
    groups: o.groups,
  };
}

function conv2dOptions(o: ConvCaseOptions): Conv2dOptions {
  return { stride: pair(o.stride), padding: pair(o.padding), dilation: pair(o.dilation), groups: o.groups };
}

Deno.test("reference vs PyTorch: conv3d and conv2d, outputs and exact gradients", () => {
  for (const op of ["conv3d", "conv2d"] as const) {
    const m = new Mismatches();
    for (const c of torchCases(op)) {
      m.run(c, () => {
        const { x, w, bias } = c.inputs;
        const label = `${op} '${c.name}'`;
        const y = op === "conv3d"
          ? conv3d(x, w, bias, conv3dOptions(c.options))
          : conv2d(x, w, bias, conv2dOptions(c.options));
        const g = op === "conv3d"
          ? conv3dBackward(x, w, c.r, conv3dOptions(c.options))
          : conv2dBackward(x, w, c.r, conv2dOptions(c.options));
        m.check(y, c.output, TIGHT, `${label} output`);
        m.check(g.dx, c.grads.x, TIGHT, `${label} dx`);
        m.check(g.dw, c.grads.w, TIGHT, `${label} dw`);
        if (bias) m.check(g.db, c.grads.bias, TIGHT, `${label} dbias`);
      });
    }
    m.throwIfAny(op);
  }
});

Deno.test("reference vs PyTorch: group_norm and layer_norm", () => {
  const m = new Mismatches();
  for (const c of torchCases("group_norm")) {
    m.run(c, () => {
      const { numGroups, eps } = c.options;
      const f = ([x, weight, bias]: RefTensor[]) => groupNorm(x, numGroups, weight, bias, eps);
      m.check(f(Object.values(c.inputs)), c.output, TIGHT, `group_norm '${c.name}' output`);
      checkNumericGrads(m, c, f, false);
    });
  }
  m.throwIfAny("group_norm");
  for (const c of torchCases("layer_norm")) {
    m.run(c, () => {
      const { normalizedShape, eps } = c.options;
      const f = ([x, weight, bias]: RefTensor[]) => layerNorm(x, normalizedShape, weight, bias, eps);
      m.check(f(Object.values(c.inputs)), c.output, TIGHT, `layer_norm '${c.name}' output`);
      checkNumericGrads(m, c, f, false);
    });
  }
  m.throwIfAny("layer_norm");
});

Deno.test("reference vs PyTorch: attention", () => {
  const m = new Mismatches();
  for (const c of torchCases("attention")) {
    m.run(c, () => {
      const scale = c.options.scale ?? undefined;
      const f = ([q, k, v]: RefTensor[]) => attention(q, k, v, scale);
      m.check(f(Object.values(c.inputs)), c.output, TIGHT, `attention '${c.name}' output`);
      checkNumericGrads(m, c, f, false);
    });
  }
  m.throwIfAny("attention");
});

Deno.test("reference vs PyTorch: interpolate", () => {
  const m = new Mismatches();
  for (const c of torchCases("interpolate")) {
    m.run(c, () => {
      const { mode, size, scaleFactor } = c.options;
      const label = `interpolate '${c.name}'`;
      // The linear fixtures are PyTorch's float64 kernels (float64 coordinates): precision "float64".
      const f = ([x]: RefTensor[]) => interpolate(x, { mode, size, scaleFactor, precision: "float64" });
      m.check(f(Object.values(c.inputs)), c.output, TIGHT, `${label} output`);
      checkNumericGrads(m, c, f, true);
      if (mode !== "nearest") {
        // The default "float32" coordinates move each weight by ≤ a few f32 ulps (~1e-7 relative).
        const y32 = interpolate(c.inputs.x, { mode, size, scaleFactor });
        m.check(y32, c.output, 1e-6, `${label} output with float32 coordinates`);
      }
    });
  }
  m.throwIfAny("interpolate");
});

Deno.test("reference vs PyTorch: avg_pool3d and avg_pool2d", () => {
  for (const op of ["avg_pool3d", "avg_pool2d"] as const) {
    const m = new Mismatches();
    for (const c of torchCases(op)) {
      m.run(c, () => {
        const { kernel, stride } = c.options;
        const f = op === "avg_pool3d"
          ? ([x]: RefTensor[]) => avgPool3d(x, triple(kernel)!, triple(stride))
          : ([x]: RefTensor[]) => avgPool2d(x, pair(kernel)!, pair(stride));
        m.check(f(Object.values(c.inputs)), c.output, TIGHT, `${op} '${c.name}' output`);
        checkNumericGrads(m, c, f, true);
      });
    }
    m.throwIfAny(op);
  }
});

Deno.test("reference vs PyTorch: einsum, including the TenVOO-L and TenVOO-Q contractions", () => {
  const m = new Mismatches();
  for (const c of torchCases("einsum")) {
    m.run(c, () => {
      const { spec } = c.options;
      const f = (xs: RefTensor[]) => einsum(spec, ...xs);
      m.check(f(Object.values(c.inputs)), c.output, TIGHT, `einsum '${c.name}' output`);
      // The brute-force reference takes ~2 s per TenVOO evaluation, too slow for finite differences of
      // its ~200 core entries; the GPU test checks those gradients against PyTorch directly.
      if (!c.name.startsWith("TenVOO")) checkNumericGrads(m, c, f, true);
    });
  }
  m.throwIfAny("einsum");
});
