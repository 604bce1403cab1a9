import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import * as V from "../../mod.ts";
import { AdamW, type AdamWOptions } from "../../engine/optim.ts";
import { dispatch, runtimeStats } from "../../engine/runtime.ts";
import { adamwKernel, adamwParams } from "../../kernels/optim.ts";
import {
  type AdamWRefOptions,
  type AdamWRefState,
  adamwRefState,
  adamwStepRef,
} from "../../engine/reference/adamw.ts";
import { randomRef } from "../../engine/reference/random.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

// torch.optim.AdamW (PyTorch 1.13, float64) on p = [0.5, -1.25, 2, 0, 3] with these three gradients; printed by
//   p = torch.tensor(P0, requires_grad=True); opt = torch.optim.AdamW([p], **opts)
//   for g, lr in zip(GRADS, lrs): opt.param_groups[0]['lr'] = lr; p.grad = torch.tensor(g); opt.step()
//   print(p, opt.state[p]['exp_avg'], opt.state[p]['exp_avg_sq'])
const P0 = [0.5, -1.25, 2.0, 0.0, 3.0];
const GRADS = [[0.1, -0.2, 0.0, 1.5, -3.0], [0.3, 0.25, -1e-3, 0.0, 2.0], [-0.5, 0.125, 4.0, -2.0, 0.75]];
const TORCH: Array<{ opts: AdamWOptions; lrs: number[]; p: number[]; m: number[]; v: number[] }> = [
  {
    opts: { lr: 0.1, betas: [0.8, 0.95], eps: 1e-6, weightDecay: 0.1 },
    lrs: [0.1, 0.05, 0.2],
    p: [0.3855984032802457, -1.201788748176281, 1.8302492449768368, -0.07008297242713997, 2.981001986026087],
    m: [
      -0.039199999999999985,
      0.03939999999999999,
      0.7998399999999998,
      -0.20799999999999993,
      0.08599999999999995,
    ],
    v: [
      0.017226250000000016,
      0.005555000000000004,
      0.8000000475000008,
      0.30153125000000025,
      0.6242500000000006,
    ],
  },
  {
    opts: {}, // PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01
    lrs: [1e-3, 1e-3, 1e-3],
    p: [
      0.49822816264866615,
      -1.2494748926606178,
      2.000045449617762,
      -0.0014693718574853322,
      3.001033667648048,
    ],
    m: [
      -0.014899999999999997,
      0.018799999999999994,
      0.39990999999999993,
      -0.07849999999999997,
      0.011999999999999969,
    ],
    v: [
      0.0003498900100000003,
      0.00011798254000000012,
      0.016000000999000015,
      0.006245502250000005,
      0.013540509000000011,
    ],
  },
];

function refOptions(opts: AdamWOptions): AdamWRefOptions {
  const { lr = 1e-3, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0.01 } = opts;
  return { lr, beta1: betas[0], beta2: betas[1], eps, weightDecay };
}

Deno.test("reference AdamW reproduces torch.optim.AdamW", () => {
  for (const { opts, lrs, p, m, v } of TORCH) {
    const param = Float64Array.from(P0);
    const state = adamwRefState(param.length);
    lrs.forEach((lr, k) => adamwStepRef(param, GRADS[k], state, { ...refOptions(opts), lr }));
    // Both in float64 with the same operations up to association: agreement to a few ulp.
    assertClose(param, p, { rtol: 1e-14, atol: 1e-15, name: "p" });
    assertClose(state.m, m, { rtol: 1e-14, atol: 1e-15, name: "m" });
    assertClose(state.v, v, { rtol: 1e-14, atol: 1e-15, name: "v" });
    strictEqual(state.step, 3);
  }
});

/** Reads the optimizer's moments of parameter `i`. */
async function moments(opt: AdamW, i: number): Promise<[Float32Array, Float32Array]> {
  const state = opt.state();
  return [await state.get(`m.${i}`)!.toArray(), await state.get(`v.${i}`)!.toArray()];
}

gpuTest("AdamW on the GPU reproduces torch.optim.AdamW (defaults and a learning-rate schedule)", async () => {
  for (const { opts, lrs, p, m, v } of TORCH) {
    const param = V.tensor(P0, [5], { requiresGrad: true });
    const opt = new AdamW([param], opts);
    for (const [k, lr] of lrs.entries()) {
      opt.lr = lr;
      const g = V.tensor(GRADS[k], [5]);
      opt.step([g]);
      g.dispose();
    }
    strictEqual(opt.stepCount, 3);
    // f32 state and gradients (0.1 etc. rounded to f32): relative errors of a few 2⁻²⁴ per step.
    assertClose(await param.toArray(), p, { rtol: 1e-6, atol: 1e-7, name: "p" });
    const [gm, gv] = await moments(opt, 0);
    assertClose(gm, m, { rtol: 1e-6, atol: 1e-7, name: "m" });
    assertClose(gv, v, { rtol: 1e-6, atol: 1e-12, name: "v" });
    opt.dispose();
    param.dispose();
  }
});

/** Runs `steps` AdamW steps on the GPU and in the float64 reference with the same f32 inputs; compares. */
async function checkAgainstReference(
  shapes: number[][],
  opts: Required<AdamWOptions>,
  lrs: number[],
  seed: number,
): Promise<void> {
  const init = shapes.map((s, i) => Float32Array.from(randomRef(s, seed + i, -2, 2).data));
  const params = shapes.map((s, i) => V.tensor(init[i], s, { requiresGrad: true }));
  const refParams = init.map((x) => Float64Array.from(x));
  const refStates: AdamWRefState[] = init.map((x) => adamwRefState(x.length));
  const opt = new AdamW(params, opts);
  for (const [k, lr] of lrs.entries()) {
    const grads = shapes.map((s, i) => {
      const g = Float32Array.from(randomRef(s, seed + 100 * (k + 1) + i, -1.5, 1.5).data);
      for (let j = 0; j < g.length; j += 7) g[j] = 0; // zero gradients: the update is then decay only
      return g;
    });
    opt.lr = lr;
    const gpuGrads = grads.map((g, i) => V.tensor(g, shapes[i]));
    opt.step(gpuGrads);
    disposeAll(gpuGrads);
    refParams.forEach((p, i) => adamwStepRef(p, grads[i], refStates[i], { ...refOptions(opts), lr }));
  }
  for (const [i, shape] of shapes.entries()) {
    const name = `${JSON.stringify(shape)} after ${lrs.length} steps`;
    // Per step: m and v carry a few ulp of relative error (f32 β factors and products); the update
    // lr·m̂/(√v̂ + eps) is of size lr (|m̂|/√v̂ ≲ 1) with a few ulp relative; rounding p costs ½ ulp of |p| ≤ 2.
    // Over K ≤ 5 steps: ≲ K·(1.2e-7 + lr·5e-7) < 1e-6.
    assertClose(await params[i].toArray(), refParams[i], { rtol: 1e-6, atol: 1e-6, name: `p ${name}` });
    const [m, v] = await moments(opt, i);
    // m may cancel to ~0 (gradients of both signs): absolute error ~ulp of its terms (≤ 1.5).
    assertClose(m, refStates[i].m, { rtol: 1e-6, atol: 5e-7, name: `m ${name}` });
    assertClose(v, refStates[i].v, { rtol: 1e-6, atol: 1e-12, name: `v ${name}` });
  }
  opt.dispose();
  disposeAll(params);
}

gpuTest(
  "AdamW vs the float64 reference: odd sizes, several parameters, lr changes, weight decay",
  async () => {
    await checkAgainstReference(
      [[1], [37], [257], [3, 37], [2, 3, 5]],
      { lr: 0.01, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.05 },
      [0.01, 0.003, 0.02, 0.001, 0.01],
      11,
    );
    // Strong decay and eps, β1 = 0 (no momentum).
    await checkAgainstReference(
      [[37], [4, 4]],
      { lr: 0.1, betas: [0, 0.9], eps: 1e-3, weightDecay: 1 },
      [0.1, 0.2, 0.05],
      12,
    );
  },
);

gpuTest("AdamW on a parameter of 2^20 + 3 elements", async () => {
  await checkAgainstReference(
    [[(1 << 20) + 3]],
    { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 },
    [1e-3, 2e-3],
    13,
  );
});

gpuTest("decoupled weight decay: a zero gradient only shrinks p by (1 − lr·wd) per step", async () => {
  const p = V.tensor([1, -2, 4], [3]);
  const g = V.zeros([3]);
  const opt = new AdamW([p], { lr: 0.1, weightDecay: 0.5 });
  opt.step([g]);
  opt.step([g]);
  assertClose(await p.toArray(), [0.9025, -1.805, 3.61], { rtol: 2e-7, atol: 0, name: "decay 0.95²" });
  opt.dispose();
  disposeAll(p, g);
});

gpuTest("one dispatch per parameter; a non-contiguous gradient gives the same update", async () => {
  const a = V.tensor(Float32Array.from(randomRef([3, 37], 1).data), [3, 37]);
  const b = V.tensor(await a.toArray(), [3, 37]);
  const gT = V.tensor(Float32Array.from(randomRef([37, 3], 2).data), [37, 3]);
  const gView = V.transpose(gT);
  const gDense = V.scope(() => V.contiguous(V.transpose(gT)));
  ok(!gView.isContiguous && gDense.isContiguous);
  const optA = new AdamW([a]);
  const optB = new AdamW([b]);
  const before = runtimeStats().dispatches;
  optA.step([gDense]);
  strictEqual(runtimeStats().dispatches - before, 1, "one fused dispatch");
  optB.step([gView]);
  deepStrictEqual(await b.toArray(), await a.toArray());
  const c = V.zeros([4]), d = V.zeros([5, 2]), e = V.zeros([1]);
  const many = new AdamW([c, d, e]);
  const gs = [V.ones([4]), V.ones([5, 2]), V.ones([1])];
  const start = runtimeStats().dispatches;
  many.step(gs);
  strictEqual(runtimeStats().dispatches - start, 3, "one dispatch per parameter");
  disposeAll(a, b, gT, gView, gDense, c, d, e, gs);
  optA.dispose();
  optB.dispose();
  many.dispose();
});

gpuTest("the kernel's element index ignores how the runtime folds the grid", async () => {
  // Grids past 65535 workgroups (> 16.7M elements) are folded into 2-D/3-D; force that on a small parameter.
  const n = 256 * 6 - 3;
  const init = Float32Array.from(randomRef([n], 70).data);
  const g = V.tensor(Float32Array.from(randomRef([n], 71).data), [n]);
  const params = adamwParams(n, 0, {
    decay: 0.99,
    stepSize: 0.01,
    beta1: 0.9,
    beta2: 0.999,
    invSqrtBias2: 31.6,
    eps: 1e-8,
  });
  const results: Float32Array[] = [];
  for (const grid of [6, [2, 3, 1], [3, 1, 2], [4, 2, 1]] as Array<number | [number, number, number]>) {
    const [p, m, v] = [V.tensor(init, [n]), V.zeros([n]), V.zeros([n])];
    dispatch(adamwKernel(), params, [g, p, m, v].map((t) => t.storage().buffer), grid);
    results.push(await p.toArray());
    disposeAll(p, m, v);
  }
  for (const r of results.slice(1)) deepStrictEqual(r, results[0]);
  ok(results[0].some((x, i) => x !== init[i]), "the parameter was updated");
  g.dispose();
});

gpuTest("state() / loadState() resume a run exactly", async () => {
  const shapes = [[37], [3, 5]];
  const init = shapes.map((s, i) => Float32Array.from(randomRef(s, 40 + i).data));
  const gradsAt = (k: number): V.Tensor[] =>
    shapes.map((s, i) => V.tensor(Float32Array.from(randomRef(s, 50 + 10 * k + i).data), s));
  const run = (opt: AdamW, from: number, to: number): void => {
    for (let k = from; k < to; k++) {
      const gs = gradsAt(k);
      opt.step(gs);
      disposeAll(gs);
    }
  };
  const opts: AdamWOptions = { lr: 0.01, weightDecay: 0.1 };
  const a = shapes.map((s, i) => V.tensor(init[i], s));
  const optA = new AdamW(a, opts);
  run(optA, 0, 3);
  // Resume on a copy of the parameters from A's checkpoint.
  const b = await Promise.all(a.map(async (p) => V.tensor(await p.toArray(), p.shape)));
  const optB = new AdamW(b, opts);
  const state = optA.state();
  deepStrictEqual([...state.keys()].sort(), ["m.0", "m.1", "v.0", "v.1"]);
  optB.loadState(state, optA.stepCount);
  strictEqual(optB.stepCount, 3);
  run(optA, 3, 5);
  run(optB, 3, 5);
  for (let i = 0; i < shapes.length; i++) {
    deepStrictEqual(await b[i].toArray(), await a[i].toArray(), `param ${i}`);
    deepStrictEqual(await moments(optB, i), await moments(optA, i), `moments ${i}`);
  }
  optA.dispose();
  optB.dispose();
  disposeAll(a, b);
});

gpuTest("updates run outside autograd, and AdamW drives a least-squares loss down", async () => {
  // y = x·W* exactly; fit W from zero with AdamW (lr 0.05): the loss falls from 0.35 to ~4e-8 in 150 steps.
  const x = V.tensor(Float32Array.from(randomRef([32, 5], 60).data), [32, 5]);
  const wTrue = V.tensor(Float32Array.from(randomRef([5, 3], 61).data), [5, 3]);
  const y = V.noGrad(() => V.matmul(x, wTrue));
  const w = V.zeros([5, 3], { requiresGrad: true });
  const opt = new AdamW([w], { lr: 0.05, weightDecay: 0 });
  const lossAt = async (): Promise<number> => {
    const l = V.scope(() => V.noGrad(() => V.mseLoss(V.matmul(x, w), y)));
    const value = await l.item();
    l.dispose();
    return value;
  };
  const initial = await lossAt();
  for (let step = 0; step < 150; step++) {
    V.scope(() => {
      const loss = V.mseLoss(V.matmul(x, w), y);
      opt.step(V.grad(loss, [w]));
    });
  }
  strictEqual(w.node, null, "the update recorded no autograd node");
  ok(w.requiresGrad, "the parameter still requires gradients");
  const final = await lossAt();
  ok(final < initial * 1e-5, `loss ${initial} → ${final}`);
  opt.dispose();
  disposeAll(x, wTrue, y, w);
});

gpuTest("bad parameters, gradients, options and states are refused with clear errors", () => {
  const p = V.zeros([3, 4]);
  const base = V.zeros([6, 4]);
  const sliced = V.slice(base, [0], [3]);
  const transposed = V.scope(() => V.transpose(V.zeros([4, 3])));
  const leaf = V.zeros([3], { requiresGrad: true });
  const derived = V.mul(leaf, 2);
  throws(() => new AdamW([]), /AdamW: params must be a non-empty array of tensors/);
  throws(() => new AdamW([sliced]), /AdamW: params\[0\] .* is a view .* must own their contiguous storage/);
  throws(() => new AdamW([p, transposed]), /AdamW: params\[1\] .* is a view \(strides \[1, 3\], offset 0\)/);
  throws(() => new AdamW([derived]), /AdamW: params\[0\] .* is the output of mul, not a leaf tensor/);
  throws(() => new AdamW([p, p]), /AdamW: params\[0\] and params\[1\] share storage/);
  throws(() => new AdamW([p], { lr: -1 }), /AdamW: lr -1 is invalid; accepted: a finite number ≥ 0/);
  throws(
    () => new AdamW([p], { betas: [0.9, 1] }),
    /AdamW: betas\[1\] 1 is invalid; accepted: a number in \[0, 1\)/,
  );
  throws(() => new AdamW([p], { eps: NaN }), /AdamW: eps NaN is invalid/);
  throws(() => new AdamW([p], { weightDecay: -0.1 }), /AdamW: weightDecay -0.1 is invalid/);

  const opt = new AdamW([p]);
  throws(() => (opt.lr = Infinity), /AdamW: lr Infinity is invalid/);
  const wrong = V.zeros([4, 3]);
  throws(() => opt.step([]), /AdamW.step: got 0 gradients for 1 parameters; pass one gradient per parameter/);
  throws(
    () => opt.step([wrong]),
    /AdamW.step: grads\[0\] is Tensor\[4, 3\] float32 but params\[0\] is Tensor\[3, 4\] float32; each gradient must be float32 with its parameter's shape/,
  );
  throws(() => opt.step([p]), /AdamW.step: grads\[0\] shares storage with params\[0\]/);
  strictEqual(opt.stepCount, 0, "a refused step changes nothing");
  throws(
    () => opt.loadState(new Map([["m.0", wrong], ["v.0", wrong]]), 1),
    /AdamW.loadState: "m.0" has shape \[4, 3\] but the parameter has \[3, 4\]/,
  );
  throws(() => opt.loadState(new Map([["m.0", p]]), 1), /AdamW.loadState: state has no tensor "v.0"/);
  throws(
    () => opt.loadState(new Map([["m.7", p]]), 1),
    /AdamW.loadState: unknown keys m.7; accepted: m.<i> and v.<i>/,
  );
  throws(() => opt.loadState(opt.state(), -1), /AdamW.loadState: stepCount -1 is invalid/);
  opt.dispose();
  throws(() => opt.step([wrong]), /AdamW.step: the optimizer was disposed/);
  disposeAll(p, base, sliced, transposed, leaf, derived, wrong);
});
