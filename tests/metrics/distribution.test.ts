import assert from "node:assert/strict";
import { fid } from "../../metrics/fid.ts";
import { symmetricEigen } from "../../metrics/linalg.ts";
import { medianDistance, mmd } from "../../metrics/mmd.ts";
import { assertClose } from "../helpers/check.ts";
import { imagePair, metricFixtures, num } from "./fixtures.ts";

function rows(data: Float32Array, count: number): Float32Array[] {
  const width = data.length / count;
  return Array.from({ length: count }, (_, i) => data.subarray(i * width, (i + 1) * width));
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

Deno.test("mmd (linear) matches MONAI's MMDMetric", async () => {
  const fx = await metricFixtures();
  for (const c of fx.mmd_linear) {
    const [x, y0] = imagePair(c.shape, c.seed, "correlated");
    const y = Float32Array.from(y0, (v) => Math.fround(v * c.y_scale));
    const value = mmd(rows(x, c.shape[0]), rows(y, c.shape[0]));
    // MONAI in float64 sums the same products in another order: agreement to float64 round-off of the
    // O(10) terms.
    assertClose([value], [num(c.float64)], { rtol: 1e-12, atol: 1e-12, name: `${c.name} vs float64` });
    // MONAI's own float32 answer carries float32 round-off of those terms (~1e-6 relative).
    assertClose([value], [num(c.float32)], { rtol: 1e-5, atol: 0, name: `${c.name} vs float32` });
    // Samples as one { rows, cols, data } matrix give the same number.
    const asMatrix = mmd(
      { rows: c.shape[0], cols: x.length / c.shape[0], data: x },
      { rows: c.shape[0], cols: y.length / c.shape[0], data: y },
    );
    assert.equal(asMatrix, value);
  }
});

Deno.test("mmd (gaussian) matches TenVOO's evaluation (torch_two_sample MMDStatistic, median α)", async () => {
  const fx = await metricFixtures();
  for (const c of fx.mmd_gaussian) {
    // TenVOO's distances come from ‖a‖² + ‖b‖² − 2a·b (float64); ours are direct differences: ~1e-15.
    assertClose([medianDistance(c.x, c.y)], [num(c.alpha)], { rtol: 1e-12, atol: 0, name: `${c.name} α` });
    assertClose([mmd(c.x, c.y, { kernel: "gaussian" })], [num(c.expected)], {
      rtol: 1e-9,
      atol: 1e-12,
      name: c.name,
    });
    const alpha = num(c.alpha);
    assert.equal(mmd(c.x, c.y, { kernel: "gaussian", alpha }), mmd(c.x, c.y, { kernel: "gaussian" }));
    assert.equal(
      mmd(c.x, c.y, { kernel: "gaussian", bandwidth: 2 }),
      mmd(c.x, c.y, { kernel: "gaussian", alpha: 1 / 8 }),
    );
  }
});

Deno.test("mmd of sets made of one repeated sample is 0 for both kernels", () => {
  const v = [0.3, -1.2, 2.5, 0.7];
  const x = [v, v, v];
  const y = [v, v, v, v, v];
  assertClose([mmd(x, y)], [0], { atol: 1e-14, rtol: 0 });
  assertClose([mmd(x, y, { kernel: "gaussian", alpha: 0.7 })], [0], { atol: 1e-14, rtol: 0 });
});

Deno.test("mmd and medianDistance reject too few samples, width mismatches and bad kernel options", () => {
  assert.throws(
    () => mmd([[1, 2]], [[1, 2], [3, 4]]),
    /mmd: needs at least two samples in each set, got 1 and 2/,
  );
  assert.throws(() => mmd([[1, 2], [3, 4]], [[1], [2]]), /samples of x have 2 values and samples of y 1/);
  assert.throws(() => mmd([[1], [2]], [[1], [2]], { alpha: 1 }), /apply to the "gaussian" kernel only/);
  assert.throws(
    () => mmd([[1], [2]], [[1], [2]], { kernel: "gaussian", alpha: 1, bandwidth: 1 }),
    /at most one of alpha and bandwidth/,
  );
  assert.throws(() => mmd([[1], [2]], [[1], [2]], { kernel: "gaussian", bandwidth: -1 }), /bandwidth -1/);
  assert.throws(() => mmd({ rows: 2, cols: 3, data: [1, 2, 3] }, [[1], [2]]), /data.length = rows·cols/);
  assert.throws(
    () => medianDistance([[1, 2], [3]], [[1, 2], [3, 4]]),
    /x row 1 has 1 values, but row 0 has 2/,
  );
});

Deno.test("fid matches MONAI's FIDMetric (both the sample-space and the feature-space path)", async () => {
  const fx = await metricFixtures();
  for (const c of fx.fid) {
    // MONAI: scipy.linalg.sqrtm (Schur form) of the non-symmetric Σ₁Σ₂; here: symmetric eigen-
    // decompositions. Both are float64; with fewer samples than features Σ₁Σ₂ is singular, where sqrtm's
    // accuracy is ~√ε relative to the trace terms: 1e-6 relative covers it.
    assertClose([fid(c.a, c.b)], [num(c.expected)], { rtol: 1e-6, atol: 1e-9, name: c.name });
    assertClose([fid(c.b, c.a)], [num(c.expected)], { rtol: 1e-6, atol: 1e-9, name: `${c.name} swapped` });
  }
});

Deno.test("fid of a set with itself is 0, and of a shifted copy is the squared shift", () => {
  const r = lcg(5);
  const a = Array.from({ length: 30 }, () => Array.from({ length: 6 }, r));
  const shift = [0.5, -1, 2, 0, 0.25, 1];
  const b = a.map((row) => row.map((v, j) => v + shift[j]));
  // Identical covariances: tr Σ + tr Σ − 2 tr √(Σ²) cancels to float64 round-off of tr Σ ≈ 0.5.
  assertClose([fid(a, a)], [0], { atol: 1e-12, rtol: 0 });
  assertClose([fid(a, b)], [shift.reduce((s, v) => s + v * v, 0)], { atol: 1e-12, rtol: 1e-12 });
  // Fewer samples than features (the sample-space path) as well.
  const wide = Array.from({ length: 5 }, () => Array.from({ length: 12 }, r));
  assertClose([fid(wide, wide)], [0], { atol: 1e-12, rtol: 0 });
});

Deno.test("fid rejects single samples and differing feature counts", () => {
  assert.throws(
    () => fid([[1, 2]], [[1, 2], [3, 4]]),
    /fid: each set needs at least 2 samples .* got 1 and 2/,
  );
  assert.throws(() => fid([[1, 2], [3, 4]], [[1], [2]]), /same, non-zero feature count, got 2 and 1/);
});

Deno.test("symmetricEigen reconstructs random, diagonal, repeated and zero matrices", () => {
  const r = lcg(11);
  const cases: Array<{ n: number; a: Float64Array }> = [];
  for (const n of [1, 2, 7, 40]) {
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = r();
    cases.push({ n, a });
  }
  cases.push({ n: 4, a: Float64Array.from([3, 0, 0, 0, 0, -1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0]) });
  cases.push({ n: 5, a: Float64Array.from({ length: 25 }, (_, k) => (k % 6 === 0 ? 2 : 0)) });
  cases.push({ n: 3, a: new Float64Array(9) });
  for (const { n, a } of cases) {
    const { values, vectors } = symmetricEigen(a, n);
    for (let i = 1; i < n; i++) assert.ok(values[i - 1] <= values[i], "ascending");
    const scale = Math.max(1, ...a.map(Math.abs));
    // A = V Λ Vᵀ and Vᵀ V = I to float64 round-off of an O(n) sum.
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        let g = 0;
        for (let k = 0; k < n; k++) {
          s += vectors[i * n + k] * values[k] * vectors[j * n + k];
          g += vectors[k * n + i] * vectors[k * n + j];
        }
        assert.ok(Math.abs(s - a[i * n + j]) < 1e-12 * scale * n, `A[${i},${j}] (n=${n})`);
        assert.ok(Math.abs(g - (i === j ? 1 : 0)) < 1e-12 * n, `VᵀV[${i},${j}] (n=${n})`);
      }
    }
  }
  assert.throws(() => symmetricEigen([1, 2, 3], 2), /3 values do not form a 2 × 2 matrix/);
});
