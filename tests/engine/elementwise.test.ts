import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { assertClose } from "../helpers/check.ts";
import { randomRef } from "../../engine/reference/mod.ts";

const SIZES = [[1], [3], [37], [257], [3, 37]];

type Unary = (x: V.Tensor) => V.Tensor;
type RefUnary = (x: R.RefTensor) => R.RefTensor;
const UNARY: Array<[string, Unary, RefUnary, [number, number]]> = [
  ["neg", V.neg, R.neg, [-2, 2]],
  ["abs", V.abs, R.abs, [-2, 2]],
  ["exp", V.exp, R.exp, [-3, 3]],
  ["log", V.log, R.log, [0.1, 4]],
  ["sqrt", V.sqrt, R.sqrt, [0.1, 4]],
  ["rsqrt", V.rsqrt, R.rsqrt, [0.1, 4]],
  ["square", V.square, R.square, [-2, 2]],
  ["sigmoid", V.sigmoid, R.sigmoid, [-6, 6]],
  ["tanh", V.tanh, R.tanh, [-4, 4]],
  ["relu", V.relu, R.relu, [-2, 2]],
  ["silu", V.silu, R.silu, [-5, 5]],
  ["gelu", V.gelu, R.gelu, [-4, 4]],
];

for (const [name, gpu, ref, [lo, hi]] of UNARY) {
  gpuTest(`${name}: values and gradient vs reference on odd sizes`, async () => {
    for (const [i, shape] of SIZES.entries()) {
      await checkOp({
        name: `${name} ${JSON.stringify(shape)}`,
        gpu: ([x]) => gpu(x),
        ref: ([x]) => ref(x),
        inputs: [randomRef(shape, 100 + i, lo, hi)],
      });
    }
  });
}

gpuTest("unary ops read non-contiguous views", async () => {
  for (const [name, gpu, ref, [lo, hi]] of UNARY) {
    await checkOp({
      name: `${name} on a transposed view`,
      gpu: ([x]) => gpu(x),
      ref: ([x]) => ref(x),
      inputs: [randomRef([5, 7], 3, lo, hi)],
      asViews: true,
    });
  }
});

type Binary = (a: V.Tensor, b: V.Tensor) => V.Tensor;
type RefBinary = (a: R.RefTensor, b: R.RefTensor) => R.RefTensor;
const BINARY: Array<[string, Binary, RefBinary, [number, number], [number, number]]> = [
  ["add", V.add, R.add, [-2, 2], [-2, 2]],
  ["sub", V.sub, R.sub, [-2, 2], [-2, 2]],
  ["mul", V.mul, R.mul, [-2, 2], [-2, 2]],
  ["div", V.div, R.div, [-2, 2], [0.5, 2]],
  ["pow", V.pow, R.pow, [0.2, 2], [-2, 2]],
  ["maximum", V.maximum, R.maximum, [-2, 2], [-2, 2]],
  ["minimum", V.minimum, R.minimum, [-2, 2], [-2, 2]],
];
const BROADCAST: Array<[number[], number[]]> = [
  [[37], [37]],
  [[3, 37], [37]],
  [[3, 1], [1, 5]],
  [[2, 1, 4], [3, 1]],
  [[1], [257]],
];

for (const [name, gpu, ref, ra, rb] of BINARY) {
  gpuTest(`${name}: broadcasting, values and both gradients vs reference`, async () => {
    for (const [i, [sa, sb]] of BROADCAST.entries()) {
      await checkOp({
        name: `${name} ${JSON.stringify(sa)} × ${JSON.stringify(sb)}`,
        gpu: ([a, b]) => gpu(a, b),
        ref: ([a, b]) => ref(a, b),
        inputs: [randomRef(sa, 10 + i, ...ra), randomRef(sb, 20 + i, ...rb)],
      });
    }
    await checkOp({
      name: `${name} on views`,
      gpu: ([a, b]) => gpu(a, b),
      ref: ([a, b]) => ref(a, b),
      inputs: [randomRef([4, 6], 1, ...ra), randomRef([4, 6], 2, ...rb)],
      asViews: true,
    });
  });
}

gpuTest("binary ops with a number operand on either side", async () => {
  const cases: Array<
    [string, (x: V.Tensor, s: number) => V.Tensor, (x: R.RefTensor, s: number) => R.RefTensor]
  > = [
    ["x + 2.5", (x, s) => V.add(x, s), (x, s) => R.add(x, s)],
    ["2.5 - x", (x, s) => V.sub(s, x), (x, s) => R.sub(s, x)],
    ["x * 2.5", (x, s) => V.mul(x, s), (x, s) => R.mul(x, s)],
    ["2.5 / x", (x, s) => V.div(s, x), (x, s) => R.div(s, x)],
    ["x ^ 2.5", (x, s) => V.pow(x, s), (x, s) => R.pow(x, s)],
    ["2.5 ^ x", (x, s) => V.pow(s, x), (x, s) => R.pow(s, x)],
    ["max(x, 2.5)", (x, s) => V.maximum(x, s), (x, s) => R.maximum(x, s)],
  ];
  for (const [name, gpu, ref] of cases) {
    await checkOp({
      name,
      gpu: ([x]) => gpu(x, 2.5),
      ref: ([x]) => ref(x, 2.5),
      inputs: [randomRef([37], 5, 0.5, 3)],
    });
  }
});

gpuTest("pow follows IEEE for negative bases and zero", async () => {
  const a = V.tensor([-2, -2, 0, 0, 0, 3], [6]);
  const b = V.tensor([2, 3, 2, 0, -1, 0], [6]);
  const y = V.pow(a, b);
  assertClose(await y.toArray(), [4, -8, 0, 1, Infinity, 1], { name: "pow" });
  disposeAll(a, b, y);
});

gpuTest("comparisons, where and clamp", async () => {
  const a = randomRef([4, 5], 1);
  const b = randomRef([5], 2);
  const ta = fromRef(R.roundToF32(a));
  const tb = fromRef(R.roundToF32(b));
  for (
    const [name, gpu, ref] of [
      ["greater", V.greater, R.greater],
      ["less", V.less, R.less],
      ["equal", V.equal, R.equal],
    ] as const
  ) {
    const y = gpu(ta, tb);
    assertClose(await toRef(y), ref(R.roundToF32(a), R.roundToF32(b)), { name, atol: 0, rtol: 0 });
    y.dispose();
  }
  const self = V.equal(ta, ta);
  assertClose(await self.toArray(), new Float32Array(20).fill(1), { name: "equal(x, x)" });
  disposeAll(ta, tb, self);

  const cond = R.greater(randomRef([4, 1], 9), 0);
  await checkOp({
    name: "where(cond, a, b)",
    gpu: ([c, x, y]) => V.where(c, x, y),
    ref: ([c, x, y]) => R.where(c, x, y),
    inputs: [cond, randomRef([4, 5], 3), randomRef([5], 4)],
    gradWrt: [1, 2],
  });
  await checkOp({
    name: "where(cond, a, 0.5)",
    gpu: ([c, x]) => V.where(c, x, 0.5),
    ref: ([c, x]) => R.where(c, x, 0.5),
    inputs: [cond, randomRef([4, 5], 3)],
    gradWrt: [1],
  });
  await checkOp({
    name: "clamp(x, -0.5, 0.3)",
    gpu: ([x]) => V.clamp(x, -0.5, 0.3),
    ref: ([x]) => R.clamp(x, -0.5, 0.3),
    inputs: [randomRef([257], 8)],
  });
  await checkOp({
    name: "clamp(x, undefined, 0.3)",
    gpu: ([x]) => V.clamp(x, undefined, 0.3),
    ref: ([x]) => R.clamp(x, null, 0.3),
    inputs: [randomRef([37], 8)],
  });
});

gpuTest("mseLoss matches the reference and its gradient", async () => {
  await checkOp({
    name: "mseLoss",
    gpu: ([a, b]) => V.mseLoss(a, b),
    ref: ([a, b]) => R.mseLoss(a, b),
    inputs: [randomRef([3, 37], 1), randomRef([3, 37], 2)],
  });
});

gpuTest("element-wise ops past one workgroup grid dimension (> 65535 × 256 elements)", async () => {
  const n = 65535 * 256 + 1000;
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i % 1013) - 500;
  const x = V.tensor(data, [n]);
  const y = V.add(x, 1);
  const out = await y.toArray();
  let bad = 0;
  for (let i = 0; i < n; i++) if (out[i] !== data[i] + 1) bad++;
  if (bad !== 0) throw new Error(`${bad} wrong elements of ${n}`);
  disposeAll(x, y);
});

gpuTest("empty tensors flow through element-wise ops", async () => {
  const x = V.zeros([0, 3]);
  const y = V.scope(() => V.exp(V.add(x, 1)));
  if (y.size !== 0 || (await y.toArray()).length !== 0) throw new Error("expected an empty result");
  disposeAll(x, y);
});
