import assert from "node:assert/strict";
import { tensor } from "../../mod.ts";
import { mae, mse, psnr } from "../../metrics/regression.ts";
import { meanErrorRef } from "../../engine/reference/metrics.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { imagePair, metricFixtures, num } from "./fixtures.ts";

gpuTest("mse / mae / psnr match MONAI's MSEMetric, MAEMetric and PSNRMetric", async () => {
  const fx = await metricFixtures();
  for (const c of fx.regression) {
    const [x, y] = imagePair(c.shape, c.seed, "correlated");
    if (c.identical_first) y.set(x.subarray(0, x.length / c.shape[0]));
    const a = tensor(x, c.shape);
    const b = tensor(y, c.shape);
    const outs = [mse(a, b), mae(a, b), psnr(a, b, c.max_val)];
    const [gotMse, gotMae, gotPsnr] = await Promise.all(outs.map((t) => t.toArray()));
    // float32 means of ≤ 420 terms of size ~1e-3 on both sides: ~1e-7 relative.
    assertClose(gotMse, c.mse.map(num), { rtol: 1e-5, atol: 0, name: `${c.name} mse` });
    assertClose(gotMae, c.mae.map(num), { rtol: 1e-5, atol: 0, name: `${c.name} mae` });
    // PSNR in dB: 10·log10 turns 1e-5 relative MSE error into 4e-5 dB. An identical item gives +Infinity.
    assertClose(gotPsnr, c.psnr.map(num), { atol: 1e-4, rtol: 0, name: `${c.name} psnr` });
    disposeAll(a, b, outs);
  }
});

gpuTest("mse / mae match the float64 reference on a random odd shape with batch > 1", async () => {
  const shape = [3, 2, 5, 7, 3];
  const n = shape.reduce((p, q) => p * q, 1);
  const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.7) * 3);
  const y = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.3) * 2);
  const a = tensor(x, shape);
  const b = tensor(y, shape);
  const r = (v: Float32Array) => ({ shape, data: Float64Array.from(v) });
  const m = mse(a, b);
  const e = mae(a, b);
  assert.deepEqual(m.shape, [3]);
  // f32 sums of 210 terms of size ≤ 25: 1e-6 relative.
  assertClose(await m.toArray(), meanErrorRef(r(x), r(y), "squared"), { rtol: 1e-5, atol: 0 });
  assertClose(await e.toArray(), meanErrorRef(r(x), r(y), "absolute"), { rtol: 1e-5, atol: 0 });
  disposeAll(a, b, m, e);
});

gpuTest("regression metrics reject mismatched shapes, a missing batch axis and a bad maxVal", () => {
  const a = tensor([1, 2, 3, 4], [2, 2]);
  const b = tensor([1, 2, 3, 4], [4, 1]);
  const v = tensor([1, 2], [2]);
  assert.throws(() => mse(a, b), /mse: a \[2, 2\] and b \[4, 1\] must have the same shape/);
  assert.throws(() => mae(v, v), /mae: inputs \[2\] need a batch axis/);
  assert.throws(() => psnr(a, a, 0), /psnr: maxVal 0 must be a positive number/);
  disposeAll(a, b, v);
});
