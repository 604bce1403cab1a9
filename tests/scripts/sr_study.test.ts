/**
 * scripts/sr_study.ts: the axial interpolation baselines keep the kept slices exactly, linear interpolation
 * reproduces a linear ramp in z and cubic convolution (with Keys' boundary values) a quadratic, and the scores are those of the metrics on a known error.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import { interpolateAxial, srScores } from "../../scripts/sr_study.ts";
import { gpuTest } from "../helpers/gpu.ts";

const shape = [3, 2, 17] as const;
const plane = shape[0] * shape[1];

/** A volume whose every voxel of slice z is f(z) plus a per-voxel offset (so in-plane mix-ups show). */
function volumeOf(f: (z: number) => number): Float32Array {
  return Float32Array.from(
    { length: plane * shape[2] },
    (_, i) => f(Math.floor(i / plane)) + (i % plane) * 0.01,
  );
}

/** Values of the missing slices zeroed, as the condition holds them. */
function keptOnly(v: Float32Array, every: number): Float32Array {
  return v.map((x, i) => (Math.floor(i / plane) % every === 0 ? x : 0));
}

Deno.test("interpolateAxial: exact on kept slices, linear ramps, and quadratics by cubic convolution", () => {
  const ramp = volumeOf((z) => 0.5 * z - 1);
  const quad = volumeOf((z) => 0.01 * z * z - 0.1 * z);
  for (const method of ["linear", "cubic"] as const) {
    const out = interpolateAxial(keptOnly(ramp, 4), shape, 4, method);
    for (let i = 0; i < out.length; i++) ok(Math.abs(out[i] - ramp[i]) < 1e-5, `${method} ramp at ${i}`);
  }
  const cubic = interpolateAxial(keptOnly(quad, 4), shape, 4, "cubic");
  const linear = interpolateAxial(keptOnly(quad, 4), shape, 4, "linear");
  // Keys' boundary values keep quadratics exact up to the last kept slice.
  for (let z = 0; z < 17; z++) {
    for (let i = z * plane; i < (z + 1) * plane; i++) ok(Math.abs(cubic[i] - quad[i]) < 1e-5, `cubic z=${z}`);
  }
  ok(
    Math.abs(linear[6 * plane] - quad[6 * plane]) > 1e-3,
    "linear interpolation does not reproduce a quadratic",
  );
  // Past the last kept slice (z = 16 is kept here; with every 5 the last kept is 15, z = 16 copies it).
  const five = interpolateAxial(keptOnly(ramp, 5), shape, 5, "cubic");
  deepStrictEqual(five.subarray(16 * plane), ramp.subarray(15 * plane, 16 * plane));
  throws(() => interpolateAxial(ramp, shape, 0, "linear"), /every must be ≥ 1/);
  throws(() => interpolateAxial(ramp.subarray(1), shape, 4, "linear"), /101 values for a 3×2×17 volume/);
});

gpuTest(
  "srScores: MAE overall and on missing slices, PSNR of a known error, SSIM 1 for the same volume",
  async () => {
    const dims = [8, 8, 8] as const;
    const real = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i * 0.37));
    const same = await srScores(real, real, dims, 4, [-1, 1]);
    deepStrictEqual([same.mae, same.maeMissing, same.psnr], [0, 0, Infinity]);
    ok(Math.abs(same.ssim - 1) < 1e-5);
    // +0.1 on the missing slices (z ≢ 0 mod 4: 6 of 8 slices) only.
    const off = real.map((v, i) => (Math.floor(i / 64) % 4 === 0 ? v : v + 0.1));
    const s = await srScores(off, real, dims, 4, [-1, 1]);
    ok(Math.abs(s.maeMissing - 0.1) < 1e-6);
    ok(Math.abs(s.mae - 0.1 * 6 / 8) < 1e-6);
    // PSNR = 20 log10(2) − 10 log10(MSE), MSE = 0.01 · 6/8.
    ok(Math.abs(s.psnr - (20 * Math.log10(2) - 10 * Math.log10(0.0075))) < 1e-3, `psnr ${s.psnr}`);
    ok(s.ssim < 1);
  },
);
