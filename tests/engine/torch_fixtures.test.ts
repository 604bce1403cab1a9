/**
 * The GPU ops against live PyTorch: each case of tests/fixtures/torch_kernels.json is run through the voxgen
 * op on the same float32 inputs, and the output and the gradients of L = Σ out ⊙ r (via `grad`) are compared
 * with PyTorch's. One test per op, named "torch fixtures: <op> (<module>)", so `--filter` can pick families.
 *
 * Tolerances: the fixtures are the exact (float64) answers for the float32 inputs, so the whole difference
 * is the GPU's own f32 rounding. Each op gets a bound τ applied as |a − e| ≤ τ·|e| + τ·max|e| (the max term
 * makes it scale-free and covers elements that are small through cancellation). As a yardstick, the
 * fixture generator prints how far PyTorch's own float32 CPU kernels land from the same answers (quoted per
 * op below as "torch f32"); τ is about 10-40 times that, for a different summation order.
 *
 * The ops are imported from their own modules (not mod.ts), as each family is owned separately.
 */

import { AssertionError } from "node:assert";
import { grad, mul, sum, type Tensor } from "../../mod.ts";
import type { RefTensor } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { type PerAxis, type TorchCase, torchCases, type TorchOp } from "../helpers/fixtures.ts";
import { conv2d, conv3d } from "../../engine/ops/conv.ts";
import { groupNorm, layerNorm } from "../../engine/ops/norm.ts";
import { attention } from "../../engine/ops/attention.ts";
import { avgPool2d, avgPool3d, interpolate } from "../../engine/ops/resample.ts";
import { einsum } from "../../engine/ops/einsum.ts";

type Triple = number | [number, number, number];
type Pair = number | [number, number];

// ---- The comparison loop shared by every op.

/** τ for the output and for the gradients (see the module comment). */
interface Tolerance {
  output: number;
  grads: number;
}

function maxAbs(t: RefTensor): number {
  let m = 0;
  for (const v of t.data) m = Math.max(m, Math.abs(v));
  return m;
}

/**
 * Runs every fixture case of `op` through `run` (given the inputs in fixture order, all requiring
 * gradients) and compares output and gradients; throws one error listing every mismatch.
 */
async function checkAgainstTorch<Op extends TorchOp>(
  op: Op,
  tolerance: (c: TorchCase<Op>) => Tolerance,
  run: (c: TorchCase<Op>, inputs: Tensor[]) => Tensor,
): Promise<void> {
  const failures: string[] = [];
  const compare = (actual: RefTensor, expected: RefTensor, tol: number, label: string): void => {
    try {
      assertClose(actual, expected, { rtol: tol, atol: tol * maxAbs(expected), name: label });
    } catch (e) {
      failures.push(e instanceof Error ? e.message : String(e));
    }
  };
  for (const c of torchCases(op)) {
    const label = `${op} '${c.name}'`;
    const tol = tolerance(c);
    const names = Object.keys(c.inputs);
    const inputs = names.map((k) => fromRef(c.inputs[k], { requiresGrad: true }));
    const temporaries: Tensor[] = [...inputs];
    try {
      const y = run(c, inputs);
      temporaries.push(y);
      compare(await toRef(y), c.output, tol.output, `${label} output`);
      const r = fromRef(c.r);
      const weighted = mul(y, r);
      const loss = sum(weighted);
      temporaries.push(r, weighted, loss);
      const grads = grad(loss, inputs);
      temporaries.push(...grads);
      for (const [i, name] of names.entries()) {
        compare(await toRef(grads[i]), c.grads[name], tol.grads, `${label} gradient wrt ${name}`);
      }
    } catch (e) {
      failures.push(`${label} threw: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      disposeAll(temporaries);
    }
  }
  if (failures.length > 0) {
    throw new AssertionError({ message: `${op} differs from PyTorch:\n${failures.join("\n")}` });
  }
}

const triple = (v: PerAxis | undefined): Triple | undefined => v as Triple | undefined;
const pair = (v: PerAxis | undefined): Pair | undefined => v as Pair | undefined;

// ---- One test per op.

gpuTest("torch fixtures: conv3d (engine/ops/conv.ts)", async () => {
  // Outputs sum Cin/groups·27 ≤ 81 products, dw sums N·OD·OH·OW ≤ 420; torch f32 ≤ 2.7e-7 / 5.4e-7.
  await checkAgainstTorch("conv3d", () => ({ output: 1e-5, grads: 2e-5 }), (c, [x, w, bias]) =>
    conv3d(x, w, {
      bias,
      stride: triple(c.options.stride),
      padding: triple(c.options.padding),
      dilation: triple(c.options.dilation),
      groups: c.options.groups,
    }));
});

gpuTest("torch fixtures: conv2d (engine/ops/conv.ts)", async () => {
  // As conv3d with 9-tap kernels; torch f32 ≤ 1.4e-7 / 7.8e-7.
  await checkAgainstTorch("conv2d", () => ({ output: 1e-5, grads: 2e-5 }), (c, [x, w, bias]) =>
    conv2d(x, w, {
      bias,
      stride: pair(c.options.stride),
      padding: pair(c.options.padding),
      dilation: pair(c.options.dilation),
      groups: c.options.groups,
    }));
});

gpuTest("torch fixtures: group_norm (engine/ops/norm.ts)", async () => {
  // The small-variance case (std 0.01 around 0.5) loses ~log10(50) digits to cancellation in x − μ:
  // torch f32 reaches 1.7e-6 on its output and 1.3e-5 on its gradients (others ≤ 1.3e-7). A one-pass
  // E[x²] − E[x]² variance would be ~1e-4 off there and fail, as it should.
  await checkAgainstTorch(
    "group_norm",
    () => ({ output: 2e-5, grads: 1e-4 }),
    (c, [x, weight, bias]) => groupNorm(x, c.options.numGroups, weight, bias, c.options.eps),
  );
});

gpuTest("torch fixtures: layer_norm (engine/ops/norm.ts)", async () => {
  // Rows of ≤ 63 elements; torch f32 ≤ 5.9e-7 / 6.7e-7 (the small-variance case).
  await checkAgainstTorch(
    "layer_norm",
    () => ({ output: 1e-5, grads: 2e-5 }),
    (c, [x, weight, bias]) => layerNorm(x, c.options.normalizedShape, weight, bias, c.options.eps),
  );
});

gpuTest("torch fixtures: attention (engine/ops/attention.ts)", async () => {
  // Dots of d ≤ 16, softmax over Nk ≤ 11, sums over Nk; torch f32 ≤ 2.3e-7 / 2.0e-7.
  await checkAgainstTorch(
    "attention",
    () => ({ output: 1e-5, grads: 2e-5 }),
    (c, [q, k, v]) => attention(q, k, v, { scale: c.options.scale ?? undefined }),
  );
});

gpuTest("torch fixtures: interpolate (engine/ops/resample.ts)", async () => {
  // nearest copies values, so its output must be exact (1e-9 only absorbs the fixture's 12-digit storage,
  // far below an f32 ulp): anything else is a wrong source index — the "size probe" cases need PyTorch's
  // float32 index arithmetic. Its gradient sums ≤ 8 values.
  // Linear modes: ≤ 8 weighted taps with f32 weights; torch f32 ≤ 5.3e-7 / 4.5e-7.
  await checkAgainstTorch(
    "interpolate",
    (c) => c.options.mode === "nearest" ? { output: 1e-9, grads: 1e-6 } : { output: 1e-5, grads: 1e-5 },
    (c, [x]) =>
      interpolate(x, { mode: c.options.mode, size: c.options.size, scaleFactor: c.options.scaleFactor }),
  );
});

gpuTest("torch fixtures: avg_pool3d (engine/ops/resample.ts)", async () => {
  // Means of ≤ 27 values; torch f32 ≤ 1.6e-7.
  await checkAgainstTorch(
    "avg_pool3d",
    () => ({ output: 1e-5, grads: 1e-5 }),
    (c, [x]) => avgPool3d(x, triple(c.options.kernel)!, triple(c.options.stride)),
  );
});

gpuTest("torch fixtures: avg_pool2d (engine/ops/resample.ts)", async () => {
  // Means of ≤ 9 values; torch f32 ≤ 1.2e-7.
  await checkAgainstTorch(
    "avg_pool2d",
    () => ({ output: 1e-5, grads: 1e-5 }),
    (c, [x]) => avgPool2d(x, pair(c.options.kernel)!, pair(c.options.stride)),
  );
});

gpuTest("torch fixtures: einsum (engine/ops/einsum.ts)", async () => {
  // The TenVOO networks contract 10 cores pairwise; each core's gradient is a contraction of the other
  // nine with r (1728 terms, with cancellation): torch f32 reaches 2.5e-6 there, ≤ 2.4e-7 elsewhere.
  await checkAgainstTorch(
    "einsum",
    () => ({ output: 1e-5, grads: 5e-5 }),
    (c, operands) => einsum(c.options.spec, ...operands),
  );
});
