import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { randomRef } from "../../engine/reference/mod.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest, toRef } from "../helpers/gpu.ts";
import { throws as assertThrows } from "node:assert";

const AXES: Array<[number[], number | number[] | undefined, boolean]> = [
  [[37], undefined, false],
  [[3, 37], 1, false],
  [[3, 37], 0, true],
  [[3, 1, 5], [0, 2], false],
  [[2, 3, 4, 5], [1, 3], true],
  [[2, 3, 4, 5], -1, false],
  [[257, 3], undefined, true],
  [[1], 0, false],
];

const REDUCE = [
  ["sum", V.sum, R.sum],
  ["mean", V.mean, R.mean],
  ["max", V.max, R.max],
  ["min", V.min, R.min],
] as const;

for (const [name, gpu, ref] of REDUCE) {
  gpuTest(`${name}: axes, keepDims, values and gradient vs reference`, async () => {
    for (const [i, [shape, axes, keep]] of AXES.entries()) {
      await checkOp({
        name: `${name} ${JSON.stringify(shape)} axes ${JSON.stringify(axes)} keepDims ${keep}`,
        gpu: ([x]) => gpu(x, axes, keep),
        ref: ([x]) => ref(x, axes, keep),
        inputs: [randomRef(shape, 40 + i)],
        // Sums of up to ~1000 f32 values: relative error grows with the count.
        rtol: 1e-5,
        atol: 1e-5,
      });
    }
    await checkOp({
      name: `${name} over a transposed view`,
      gpu: ([x]) => gpu(x, 0, false),
      ref: ([x]) => ref(x, 0, false),
      inputs: [randomRef([6, 9], 3)],
      asViews: true,
    });
  });
}

gpuTest("long reductions split into chunks agree with the reference", async () => {
  // 100003 elements in one row forces the two-pass (chunked) path; [3, 20011] a few long rows.
  for (const [shape, axes] of [[[100003], undefined], [[3, 20011], 1]] as const) {
    for (const [name, gpu, ref] of REDUCE) {
      const x = R.roundToF32(randomRef([...shape], 5, 0, 1));
      const t = V.tensor(Float32Array.from(x.data), [...shape]);
      const y = gpu(t, axes);
      // f32 tree sums of 1e5 values in [0, 1]: relative error ~1e-6, 1e-5 gives margin.
      assertClose(await toRef(y), ref(x, axes), { rtol: 1e-5, atol: 1e-5, name: `${name} ${shape}` });
      disposeAll(t, y);
    }
  }
});

gpuTest("max/min share the gradient between ties", async () => {
  const x = V.tensor([1, 3, 3, 2], [4], { requiresGrad: true });
  const y = V.max(x);
  const [g] = V.grad(y, [x]);
  assertClose(await g.toArray(), [0, 0.5, 0.5, 0], { name: "max tie gradient" });
  disposeAll(x, y, g);
});

gpuTest("reductions over empty axes", async () => {
  const x = V.zeros([3, 0]);
  const s = V.sum(x, 1);
  const m = V.mean(x, 1);
  assertClose(await s.toArray(), [0, 0, 0], { name: "sum over empty axis" });
  const mv = await m.toArray();
  if (!mv.every(Number.isNaN)) throw new Error(`mean over empty axis should be NaN, got ${mv}`);
  assertThrows(() => V.max(x, 1), /max: cannot reduce over an empty axis/);
  const e = V.sum(x, 0);
  if (e.shape.join() !== "0") throw new Error(`sum over axis 0 of [3, 0] has shape ${e.shape}`);
  disposeAll(x, s, m, e);
});

gpuTest("softmax and logSoftmax along any axis", async () => {
  for (
    const [i, [shape, axis]] of ([[[37], -1], [[3, 37], 1], [[4, 5, 6], 1], [[257, 2], 0]] as const).entries()
  ) {
    await checkOp({
      name: `softmax ${shape} axis ${axis}`,
      gpu: ([x]) => V.softmax(x, axis),
      ref: ([x]) => R.softmax(x, axis),
      inputs: [randomRef([...shape], 60 + i, -3, 3)],
    });
    await checkOp({
      name: `logSoftmax ${shape} axis ${axis}`,
      gpu: ([x]) => V.logSoftmax(x, axis),
      ref: ([x]) => R.logSoftmax(x, axis),
      inputs: [randomRef([...shape], 70 + i, -3, 3)],
    });
  }
  // Large logits must not overflow.
  const x = V.tensor([1000, 1001, 1002], [3]);
  const y = V.softmax(x);
  assertClose(await y.toArray(), R.softmax(R.ref([0, 1, 2], [3])).data, { name: "softmax of large logits" });
  disposeAll(x, y);
});

gpuTest("reductions accept strided incoming gradients (sum after a transpose)", async () => {
  await checkOp({
    name: "sum(x, 0) then transpose",
    gpu: ([x]) => V.scope(() => V.transpose(V.sum(x, 0))),
    ref: ([x]) => R.transpose(R.sum(x, 0)),
    inputs: [randomRef([3, 4, 5], 11)],
  });
});
