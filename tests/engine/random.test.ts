import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import * as V from "../../mod.ts";
import { rand, randn, randomBits, type RandomOptions } from "../../engine/ops/random.ts";
import { randomKernel, randomParams } from "../../kernels/random.ts";
import { dispatch, runtimeStats } from "../../engine/runtime.ts";
import {
  mulhilo32,
  philox4x32,
  philoxBitsRef,
  philoxNormalRef,
  philoxUniformRef,
} from "../../engine/reference/philox.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

/** The raw 32-bit words of a tensor (no float conversion: NaN patterns survive). */
async function wordsOf(t: V.Tensor): Promise<Uint32Array> {
  return new Uint32Array((await t.toArray()).buffer);
}

async function drawAndRead(fn: () => V.Tensor): Promise<Float32Array> {
  const t = fn();
  try {
    return await t.toArray();
  } finally {
    t.dispose();
  }
}

const hex = (ws: ArrayLike<number>): string =>
  Array.from(ws, (w) => w.toString(16).padStart(8, "0")).join(" ");

// Known-answer vectors of the Random123 distribution (`kat_vectors`: counter ×4, key ×2 → output ×4), for
// Philox-4x32-10 and -7. Also recomputed independently with Python integers (exact 64-bit products) before
// being pasted here: all six agree.
const KAT: Array<{ rounds: number; counter: number[]; key: number[]; out: string }> = [
  { rounds: 10, counter: [0, 0, 0, 0], key: [0, 0], out: "6627e8d5 e169c58d bc57ac4c 9b00dbd8" },
  {
    rounds: 10,
    counter: [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    key: [0xffffffff, 0xffffffff],
    out: "408f276d 41c83b0e a20bc7c6 6d5451fd",
  },
  {
    rounds: 10,
    counter: [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    key: [0xa4093822, 0x299f31d0],
    out: "d16cfe09 94fdcceb 5001e420 24126ea1",
  },
  { rounds: 7, counter: [0, 0, 0, 0], key: [0, 0], out: "5f6fb709 0d893f64 4f121f81 4f730a48" },
  {
    rounds: 7,
    counter: [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    key: [0xffffffff, 0xffffffff],
    out: "5207ddc2 45165e59 4d8ee751 8c52f662",
  },
  {
    rounds: 7,
    counter: [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    key: [0xa4093822, 0x299f31d0],
    out: "4dfccaba 190a87f0 c47362ba b6b5242a",
  },
];

Deno.test("reference mulhilo32 equals the exact 64-bit product", () => {
  const edge = [0, 1, 2, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0xd2511f53];
  const values = [...edge];
  let s = 0x9e3779b9;
  for (let i = 0; i < 200; i++) values.push(s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  for (const a of values) {
    for (const b of edge.concat(values.slice(0, 20))) {
      const product = BigInt(a) * BigInt(b); // BigInt only here, as the independent check
      deepStrictEqual(
        mulhilo32(a, b),
        [Number(product >> 32n), Number(product & 0xffffffffn)],
        `${a} × ${b}`,
      );
    }
  }
});

Deno.test("reference Philox-4x32 reproduces the Random123 known-answer vectors", () => {
  for (const { rounds, counter, key, out } of KAT) {
    strictEqual(
      hex(philox4x32(counter, key, rounds)),
      out,
      `Philox-4x32-${rounds} ${hex(counter)} / ${hex(key)}`,
    );
  }
});

gpuTest("GPU Philox kernel reproduces the Random123 known-answer vectors", async () => {
  for (const { counter, key, out } of KAT.filter((k) => k.rounds === 10)) {
    const t = V.zeros([4]);
    dispatch(randomKernel("bits"), randomParams(4, counter, key), [t.storage().buffer], 1);
    strictEqual(hex(await wordsOf(t)), out, `counter ${hex(counter)}, key ${hex(key)}`);
    t.dispose();
  }
});

// Seeds and offsets chosen to exercise both key words, the 64-bit counter carry (2³² − 2 + j crosses 2³²) and
// the largest accepted values.
const STREAMS: Array<{ seed: number; offset: number; shape: number[] }> = [
  { seed: 0, offset: 0, shape: [1] },
  { seed: 1, offset: 0, shape: [3] },
  { seed: 42, offset: 5, shape: [37] },
  { seed: 12345 + 6 * 2 ** 32, offset: 0, shape: [257] },
  { seed: 7, offset: 2 ** 32 - 2, shape: [3, 37] },
  { seed: 2 ** 53 - 1, offset: 2 ** 53 - 1, shape: [2, 3, 5, 7] },
  { seed: 99, offset: 123456789, shape: [4099] },
];

gpuTest("GPU Philox words equal the reference bit for bit (odd sizes, carries, extreme seeds)", async () => {
  for (const { seed, offset, shape } of STREAMS) {
    const t = randomBits(shape, { seed, offset });
    strictEqual(t.dtype, "int32");
    deepStrictEqual(await wordsOf(t), philoxBitsRef(t.size, seed, offset), `seed ${seed} offset ${offset}`);
    t.dispose();
  }
});

gpuTest("rand equals the reference bit for bit and lies in [0, 1) on a 24-bit grid", async () => {
  for (const { seed, offset, shape } of STREAMS) {
    const u = await drawAndRead(() => rand(shape, { seed, offset }));
    // Exact: (u >> 8)·2⁻²⁴ is representable in f32, on the GPU and in the reference.
    assertClose(u, philoxUniformRef(shape, seed, offset), { rtol: 0, atol: 0, name: `rand seed ${seed}` });
    ok(u.every((x) => x >= 0 && x < 1 && Number.isInteger(x * 2 ** 24)));
  }
});

gpuTest("randn matches the float64 reference to 1e-6", async () => {
  for (const { seed, offset, shape } of STREAMS) {
    const z = await drawAndRead(() => randn(shape, { seed, offset }));
    // Same uniforms on both sides; the GPU then computes in f32: ln to a few ulp relative (≲ 2e-7·|z|), √, and
    // sin/cos to ~2 ulp of 1 times r ≤ √(2·24·ln 2) = 5.77 (≲ 7e-7). Observed max error: ~5e-7.
    assertClose(z, philoxNormalRef(shape, seed, offset), {
      rtol: 2e-7,
      atol: 1e-6,
      name: `randn seed ${seed}`,
    });
  }
});

gpuTest("the element → counter mapping ignores the shape and the launch grid", async () => {
  const opts = { seed: 2024, offset: 3 };
  const long = await drawAndRead(() => randn([1001], opts));
  const flat = await drawAndRead(() => randn([42], opts));
  const folded = await drawAndRead(() => randn([2, 3, 7], opts));
  deepStrictEqual(flat, long.slice(0, 42), "a longer draw begins with a shorter one");
  deepStrictEqual(folded, flat, "the shape only arranges the same values");

  // The kernel reads its block index from linear_workgroup: 2-D and 3-D grids (as the runtime folds grids past
  // 65535 workgroups), and grids with spare workgroups, give the same words.
  const n = 4 * 256 * 6 - 5; // six workgroups, the last one partly idle
  const expected = philoxBitsRef(n, opts.seed, opts.offset);
  const grids: Array<number | [number, number, number]> = [6, [2, 3, 1], [3, 2, 1], [1, 2, 3], [4, 2, 1]];
  for (const grid of grids) {
    const t = V.zeros([n]);
    const params = randomParams(n, [opts.offset, 0, 0, 0], [opts.seed, 0]);
    dispatch(randomKernel("bits"), params, [t.storage().buffer], grid);
    deepStrictEqual(await wordsOf(t), expected, `grid ${JSON.stringify(grid)}`);
    t.dispose();
  }
});

gpuTest("the same seed gives the same values; offset + ⌈n/4⌉ continues the stream", async () => {
  const seed = 31337;
  const a = await drawAndRead(() => randn([5, 7], { seed }));
  const b = await drawAndRead(() => randn([5, 7], { seed }));
  deepStrictEqual(a, b);
  // 13 values use blocks 0..3 (values 13..15 of block 3 are dropped); offset 4 continues at value 16.
  const long = await drawAndRead(() => randn([16 + 11], { seed }));
  const first = await drawAndRead(() => randn([13], { seed }));
  const next = await drawAndRead(() => randn([11], { seed, offset: Math.ceil(13 / 4) }));
  deepStrictEqual(first, long.slice(0, 13));
  deepStrictEqual(next, long.slice(16));
  const u = await drawAndRead(() => rand([9], { seed, offset: 100 }));
  const uLong = await drawAndRead(() => rand([400 + 9], { seed }));
  deepStrictEqual(u, uLong.slice(400));
});

// --- Distributions ----------------------------------------------------------------------------------------
// Each bound below is set so that a correct generator fails it with probability ≲ 1e-9 (6σ for asymptotically
// normal estimators), while the fixed seeds make the outcome deterministic.

const N = 1 << 20;
const SIGMA6 = 6;

function meanVar(x: ArrayLike<number>): { mean: number; variance: number } {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  const mean = s / x.length;
  let q = 0;
  for (let i = 0; i < x.length; i++) q += (x[i] - mean) ** 2;
  return { mean, variance: q / (x.length - 1) };
}

function correlation(x: ArrayLike<number>, y: ArrayLike<number>): number {
  const mx = meanVar(x), my = meanVar(y);
  let c = 0;
  for (let i = 0; i < x.length; i++) c += (x[i] - mx.mean) * (y[i] - my.mean);
  return c / (x.length - 1) / Math.sqrt(mx.variance * my.variance);
}

/** Φ(x) via erfc (Numerical Recipes `erfcc`, fractional error < 1.2e-7: far below the KS bound). */
function normalCdf(x: number): number {
  const z = Math.abs(x) / Math.SQRT2;
  const t = 1 / (1 + 0.5 * z);
  const erfc = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
                      t *
                        (0.27886807 +
                          t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? 1 - erfc / 2 : erfc / 2;
}

gpuTest("randn: mean, variance, tails and Kolmogorov–Smirnov over 2^20 samples", async () => {
  const z = await drawAndRead(() => randn([N], { seed: 20240607 }));
  const { mean, variance } = meanVar(z);
  // mean ~ N(0, 1/n); sample variance ~ N(1, 2/n) for normal data.
  ok(Math.abs(mean) < SIGMA6 / Math.sqrt(N), `mean ${mean}`);
  ok(Math.abs(variance - 1) < SIGMA6 * Math.sqrt(2 / N), `variance ${variance}`);
  // P(|z| > 3) = erfc(3/√2) = 0.0026998; the fraction is binomial.
  const p3 = 2 * (1 - normalCdf(3));
  const tail = z.filter((x) => Math.abs(x) > 3).length / N;
  ok(Math.abs(tail - p3) < SIGMA6 * Math.sqrt(p3 * (1 - p3) / N), `tail ${tail} vs ${p3}`);
  const skew = z.reduce((s, x) => s + x ** 3, 0) / N; // var(z³) = 15
  ok(Math.abs(skew) < SIGMA6 * Math.sqrt(15 / N), `third moment ${skew}`);
  const kurt = z.reduce((s, x) => s + x ** 4, 0) / N; // E z⁴ = 3, var(z⁴) = 105 − 9 = 96
  ok(Math.abs(kurt - 3) < SIGMA6 * Math.sqrt(96 / N), `fourth moment ${kurt}`);
  // 24-bit uniforms bound the radius: |z| ≤ √(−2 ln 2⁻²⁴) = 5.77.
  ok(z.every((x) => Number.isFinite(x) && Math.abs(x) <= Math.sqrt(48 * Math.LN2) + 1e-5));
  // Kolmogorov–Smirnov: by the DKW inequality P(D > ε) ≤ 2·exp(−2nε²); ε for 1e-9.
  const sorted = Float64Array.from(z).sort();
  let d = 0;
  for (let i = 0; i < N; i++) {
    const f = normalCdf(sorted[i]);
    d = Math.max(d, f - i / N, (i + 1) / N - f);
  }
  const bound = Math.sqrt(Math.log(2 / 1e-9) / (2 * N));
  ok(d < bound, `KS statistic ${d} ≥ ${bound}`);
});

gpuTest("rand: mean, variance and a chi-square histogram over 2^20 samples", async () => {
  const u = await drawAndRead(() => rand([N], { seed: 777 }));
  const { mean, variance } = meanVar(u);
  // Uniform: mean 1/2 with variance 1/(12n); the sample variance 1/12 with variance (1/80 − 1/144)/n.
  ok(Math.abs(mean - 0.5) < SIGMA6 / Math.sqrt(12 * N), `mean ${mean}`);
  ok(Math.abs(variance - 1 / 12) < SIGMA6 * Math.sqrt((1 / 80 - 1 / 144) / N), `variance ${variance}`);
  const bins = 1000;
  const counts = new Float64Array(bins);
  for (const x of u) counts[Math.floor(x * bins)]++;
  const expected = N / bins;
  const chi2 = counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
  // χ² with k = 999 degrees of freedom; Wilson–Hilferty: (χ²/k)^(1/3) ~ N(1 − 2/(9k), 2/(9k)). Both tails:
  // too uniform is as suspicious as too lumpy.
  const k = bins - 1, s = 2 / (9 * k);
  const lo = k * (1 - s - SIGMA6 * Math.sqrt(s)) ** 3, hi = k * (1 - s + SIGMA6 * Math.sqrt(s)) ** 3;
  ok(chi2 > lo && chi2 < hi, `chi-square ${chi2} outside [${lo}, ${hi}]`);
});

gpuTest(
  "different seeds and offsets give uncorrelated streams; Box–Muller partners are independent",
  async () => {
    const n = N / 4;
    const bound = SIGMA6 / Math.sqrt(n); // a sample correlation of independent data is ~ N(0, 1/n)
    const base = await drawAndRead(() => randn([n], { seed: 1 }));
    const others: Array<[string, RandomOptions]> = [
      ["seed 2", { seed: 2 }],
      ["seed 1 + 2^32 (high key word)", { seed: 1 + 2 ** 32 }],
      ["offset 1 (lag of one block)", { seed: 1, offset: 1 }],
    ];
    for (const [label, opts] of others) {
      const other = await drawAndRead(() => randn([n], opts));
      const r = correlation(base, other);
      ok(Math.abs(r) < bound, `${label}: correlation ${r}`);
      ok(other.some((x, i) => x !== base[i]), `${label}: identical to seed 1`);
    }
    // z₂ₖ and z₂ₖ₊₁ share one radius: uncorrelated, and (for exact Box–Muller) so are their squares.
    const even = base.filter((_, i) => i % 2 === 0), odd = base.filter((_, i) => i % 2 === 1);
    const pairBound = SIGMA6 / Math.sqrt(n / 2);
    ok(Math.abs(correlation(even, odd)) < pairBound, "pair correlation");
    ok(
      Math.abs(correlation(even.map((x) => x * x), odd.map((x) => x * x))) < pairBound,
      "pair correlation of squares",
    );
    // Lag-4 (next block, same lane) within one stream.
    ok(Math.abs(correlation(base.subarray(0, n - 4), base.subarray(4))) < bound, "lag-4 correlation");
  },
);

gpuTest("random tensors are constants drawn with one dispatch", async () => {
  const before = runtimeStats().dispatches;
  const z = randn([3, 1000], { seed: 5 });
  strictEqual(runtimeStats().dispatches - before, 1);
  strictEqual(z.requiresGrad, false);
  strictEqual(z.node, null);
  const empty = rand([0, 3], { seed: 5 });
  strictEqual(empty.size, 0);
  const scalar = randn([], { seed: 5 });
  strictEqual(await scalar.item(), (await z.toArray())[0]);
  disposeAll(z, empty, scalar);
});

gpuTest("bad shapes, seeds and offsets are refused naming the op and what is accepted", () => {
  throws(
    () => randn([2, -1], { seed: 1 }),
    /randn: shape \[2,-1\] is invalid; expected a list of non-negative/,
  );
  throws(() => rand([2.5], { seed: 1 }), /rand: shape \[2.5\] is invalid/);
  for (const seed of [-1, 1.5, 2 ** 53, NaN]) {
    throws(() => randn([2], { seed }), /randn: seed .* is invalid; accepted: an integer 0 ≤ seed < 2\^53/);
  }
  for (const offset of [-1, 0.5, Infinity]) {
    throws(
      () => rand([2], { seed: 1, offset }),
      /rand: offset .* is invalid; accepted: an integer 0 ≤ offset/,
    );
  }
  // @ts-expect-error: the seed is required
  throws(() => randn([2]), /randn\(shape, \{ seed, offset\? \}\): options with an integer seed are required/);
  // @ts-expect-error: the seed is required
  throws(() => randn([2], {}), /randn: seed undefined is invalid/);
});
