import assert from "node:assert/strict";
import { type Tensor, tensor } from "../../mod.ts";
import {
  checkMsSsimSize,
  msSsim,
  type MsSsimOptions,
  nearestRealMsSsim,
  pairwiseMsSsim,
  ssim,
} from "../../metrics/ssim.ts";
import { msSsimRef, ssimRef, ssimRefDefaults, type SsimRefOptions } from "../../engine/reference/metrics.ts";
import type { RefTensor } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { imagePair, metricFixtures, num, sum } from "./fixtures.ts";

/** MONAI's argument names → voxgen's. */
function options(monai: Record<string, unknown>): MsSsimOptions {
  const o: Record<string, unknown> = {};
  const names: Record<string, string> = {
    data_range: "dataRange",
    kernel_type: "kernelType",
    win_size: "kernelSize",
    kernel_size: "kernelSize",
    kernel_sigma: "kernelSigma",
    k1: "k1",
    k2: "k2",
    weights: "weights",
  };
  for (const [k, v] of Object.entries(monai)) {
    if (!names[k]) throw new Error(`unknown MONAI option ${k}`);
    o[names[k]] = v;
  }
  return o as MsSsimOptions;
}

function seededUniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A random pair in [0, 1): y = x blended with noise, as float32 values. */
function randomPair(shape: number[], seed: number): [Float32Array, Float32Array] {
  const r = seededUniform(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const x = Float32Array.from({ length: n }, () => r());
  const y = Float32Array.from(x, (v) => 0.7 * v + 0.3 * r());
  return [x, y];
}

const ref = (data: Float32Array, shape: number[]): RefTensor => ({ shape, data: Float64Array.from(data) });

gpuTest("ssim / msSsim match MONAI's SSIMMetric and MultiScaleSSIMMetric on the fixtures", async () => {
  const fx = await metricFixtures();
  for (const c of fx.ssim) {
    const [x, y] = imagePair(c.shape, c.seed, c.kind);
    // The recipe must reproduce the script's inputs exactly before any metric is compared.
    assert.equal(sum(x), c.sums[0], `${c.name}: input x differs from the script's`);
    assert.equal(sum(y), c.sums[1], `${c.name}: input y differs from the script's`);
    const a = tensor(x, c.shape);
    const b = tensor(y, c.shape);
    const out = c.metric === "ssim" ? ssim(a, b, options(c.options)) : msSsim(a, b, options(c.options));
    const got = await out.toArray();
    // Both sides are float32 with window sums of up to 11³ products accumulated in different orders
    // (MONAI: one N-D correlation; voxgen: separable passes). SSIM agrees to < 5e-7. MS-SSIM differs by up
    // to 1.4e-5: at the coarsest scales few windows remain and σ² = E[x²] − μ² cancels, and there MONAI's
    // float32 answer is itself up to 1.6e-5 from the float64 truth (voxgen's: 5e-6). Hence 3e-5.
    assertClose(got, c.expected.map(num), { atol: 3e-5, rtol: 0, name: c.name });
    disposeAll(a, b, out);
  }
});

gpuTest(
  "ssim / msSsim match the float64 reference on random odd shapes (2-D and 3-D, batch > 1)",
  async () => {
    const cases: Array<{ shape: number[]; opts: MsSsimOptions; ms: boolean }> = [
      { shape: [2, 3, 17, 15], opts: { kernelSize: 7, kernelSigma: 1.2 }, ms: false },
      {
        shape: [3, 2, 11, 13, 9],
        opts: { kernelType: "uniform", kernelSize: [3, 5, 3], dataRange: 2 },
        ms: false,
      },
      {
        shape: [2, 1, 9, 10, 12],
        opts: { kernelSize: [5, 3, 7], kernelSigma: [0.7, 1, 1.9], k1: 0.05 },
        ms: false,
      },
      { shape: [2, 2, 23, 21], opts: { kernelSize: 5, weights: [0.4, 0.6, 0.3] }, ms: true },
      {
        shape: [2, 1, 13, 15, 14],
        opts: { kernelSize: 3, kernelType: "uniform", weights: [0.2, 0.5, 0.3] },
        ms: true,
      },
    ];
    let seed = 100;
    for (const c of cases) {
      const [x, y] = randomPair(c.shape, seed++);
      const sd = c.shape.length - 2;
      const per = (v: number | number[] | undefined, d: number): number[] =>
        v === undefined ? new Array(sd).fill(d) : typeof v === "number" ? new Array(sd).fill(v) : v;
      const o: SsimRefOptions = {
        ...ssimRefDefaults(sd),
        kernelType: c.opts.kernelType ?? "gaussian",
        kernelSize: per(c.opts.kernelSize as number | number[] | undefined, 11),
        kernelSigma: per(c.opts.kernelSigma as number | number[] | undefined, 1.5),
        dataRange: c.opts.dataRange ?? 1,
        k1: c.opts.k1 ?? 0.01,
      };
      const expected = c.ms
        ? msSsimRef(ref(x, c.shape), ref(y, c.shape), o, c.opts.weights!)
        : ssimRef(ref(x, c.shape), ref(y, c.shape), o);
      const a = tensor(x, c.shape);
      const b = tensor(y, c.shape);
      const out = c.ms ? msSsim(a, b, c.opts) : ssim(a, b, c.opts);
      assert.deepEqual(out.shape, [c.shape[0]]);
      // float32 window sums vs float64: see the fixture test for the bound.
      assertClose(await out.toArray(), expected, { atol: 3e-5, rtol: 0, name: JSON.stringify(c) });
      disposeAll(a, b, out);
    }
  },
);

gpuTest("identical volumes: SSIM and MS-SSIM are 1", async () => {
  const [x] = randomPair([2, 1, 20, 18, 19], 7);
  const a = tensor(x, [2, 1, 20, 18, 19]);
  const s = ssim(a, a, { kernelSize: 5 });
  const m = msSsim(a, a, { kernelSize: 3, weights: [0.5, 0.5] });
  // (2σ² + c2)/(2σ² + c2) is formed from two differently rounded f32 expressions: a few ulps.
  assertClose(await s.toArray(), [1, 1], { atol: 1e-5, rtol: 0 });
  assertClose(await m.toArray(), [1, 1], { atol: 1e-5, rtol: 0 });
  disposeAll(a, s, m);
});

gpuTest(
  "msSsim on a too-small volume throws, naming the smallest size and the options to change",
  async () => {
    const fx = await metricFixtures();
    for (const c of fx.ms_ssim_too_small) {
      assert.ok(c.monai_error, "MONAI rejects this size too");
      const opts = options(c.options);
      const k = (opts.kernelSize as number | undefined) ?? 11;
      const need = k * 16;
      assert.throws(() => checkMsSsimSize(c.shape, opts), (e: Error) => {
        assert.match(e.message, new RegExp(`at least ${need}`));
        assert.match(e.message, /kernelSize <= \d+/);
        assert.match(e.message, /weights/);
        return true;
      });
      // The reported smallest size is accepted (MONAI accepts it too: ⌊need/16⌋ = k > k − 1).
      checkMsSsimSize(c.shape.map((d, i) => (i < 2 ? d : Math.max(d, need))), opts);
      const a = tensor(new Float32Array(c.shape.reduce((p, q) => p * q, 1)), c.shape);
      assert.throws(() => msSsim(a, a, opts), /too small/);
      a.dispose();
    }
    // For 4 scales MONAI's own check ((4 − 1)² = 9) is stricter than the geometry (2³ = 8): both apply.
    assert.throws(
      () => checkMsSsimSize([1, 1, 44, 50], { kernelSize: 5, weights: [1, 1, 1, 1] }),
      /at least 45/,
    );
    checkMsSsimSize([1, 1, 45, 50], { kernelSize: 5, weights: [1, 1, 1, 1] });
    // For 6 scales the geometry (2⁵ = 32) is stricter than MONAI's check (25), which would let the conv fail.
    assert.throws(
      () => checkMsSsimSize([1, 1, 90, 96], { kernelSize: 3, weights: [1, 1, 1, 1, 1, 1] }),
      /at least 96/,
    );
  },
);

gpuTest("ssim rejects mismatched shapes, bad ranks and windows larger than the image", () => {
  const a = tensor(new Float32Array(2 * 8 * 8), [2, 1, 8, 8]);
  const b = tensor(new Float32Array(8 * 8), [1, 1, 8, 8]);
  const v = tensor(new Float32Array(8), [8]);
  assert.throws(() => ssim(a, b), /ssim: a \[2, 1, 8, 8\] and b \[1, 1, 8, 8\] must have the same shape/);
  assert.throws(() => ssim(v, v), /ssim: inputs must be \[N, C, H, W\]/);
  assert.throws(() => ssim(a, a), /11-wide window does not fit spatial axis 0 of size 8.*kernelSize <= 8/);
  assert.throws(
    () => ssim(a, a, { kernelSize: [3] }),
    /kernelSize \[3\] must be a positive integer or a list of 2/,
  );
  assert.throws(() => ssim(a, a, { spatialDims: 3 }), /spatialDims 3 needs inputs of rank 5/);
  disposeAll(a, b, v);
});

gpuTest("pairwiseMsSsim and nearestRealMsSsim agree with msSsim pair by pair", async () => {
  const shape = [1, 14, 13, 12];
  const opts: MsSsimOptions = { kernelSize: 3, weights: [0.6, 0.4] };
  const make = (seed: number): Tensor => tensor(randomPair(shape, seed)[0], shape);
  const fakes = [make(1), make(2), make(3)];
  const reals = [make(4), make(5)];
  const direct = async (a: Tensor, b: Tensor): Promise<number> => {
    const a4 = a.shape.length === 4 ? tensor(await a.toArray(), [1, ...a.shape]) : a;
    const b4 = tensor(await b.toArray(), [1, ...b.shape]);
    const m = msSsim(a4, b4, opts);
    const v = (await m.toArray())[0];
    disposeAll(a4, b4, m);
    return v;
  };
  const pw = await pairwiseMsSsim(fakes, opts);
  assert.deepEqual(pw.pairs.map((p) => [p.i, p.j]), [[0, 1], [0, 2], [1, 2]]);
  for (const p of pw.pairs) {
    // Same kernels and inputs: bit-identical up to batching, which changes nothing per item.
    assertClose([p.value], [await direct(fakes[p.i], fakes[p.j])], { atol: 1e-7, rtol: 0 });
  }
  assertClose([pw.mean], [pw.pairs.reduce((s, p) => s + p.value, 0) / 3], { atol: 1e-12, rtol: 0 });
  const sub = await pairwiseMsSsim(fakes, { ...opts, maxPairs: 2, seed: 3 });
  assert.equal(sub.pairs.length, 2);

  // A real volume identical to fake 1 is its nearest, at MS-SSIM 1.
  const copy = tensor(await fakes[1].toArray(), shape);
  const near = await nearestRealMsSsim(fakes, [...reals, copy], opts);
  assert.equal(near.nearest[1].index, 2);
  assertClose([near.nearest[1].value], [1], { atol: 1e-5, rtol: 0 });
  for (const i of [0, 2]) {
    const values = await Promise.all([...reals, copy].map((r) => direct(fakes[i], r)));
    const best = Math.max(...values);
    assertClose([near.nearest[i].value], [best], { atol: 1e-7, rtol: 0 });
    assert.equal(near.nearest[i].index, values.indexOf(best));
  }
  await assert.rejects(() => pairwiseMsSsim([fakes[0]], opts), /at least 2 volumes/);
  disposeAll(fakes, reals, copy);
});
