/**
 * The cDPM study's metrics on synthetic 12³ volumes with known answers: view slices index the right voxels;
 * roughness of ramps is their slope squared; a set scored against itself gives nearest MS-SSIM 1, ρ = 1 and
 * MMD² ≈ 0; a set whose axial slices are real slices of different volumes (what independent 2-D generation
 * can at best do) looks real in the axial view but not in the others, and has ρ_z ≫ 1.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import type { MsSsimOptions } from "../../metrics/ssim.ts";
import { seededRandom } from "../../nn/init.ts";
import {
  roughness,
  studySet,
  viewFitsMsSsim,
  viewSimilarity,
  viewStack,
} from "../../scripts/cdpm_metrics.ts";
import { gpuTest } from "../helpers/gpu.ts";

const N = 12;
const SHAPE = [N, N, N];
/** MS-SSIM that fits 12² slices: 2 scales of a 3-tap window (needs ≥ 6 per axis). */
const MS: MsSsimOptions = { dataRange: 2, kernelSize: 3, kernelSigma: 1, weights: [0.5, 0.5] };

function volume(f: (x: number, y: number, z: number) => number, shape = SHAPE): Float32Array {
  const [nx, ny, nz] = shape;
  const v = new Float32Array(nx * ny * nz);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) v[x + nx * (y + ny * z)] = f(x, y, z);
  }
  return v;
}

/** Smooth volumes in [−1, 1] with random phases: each differs from the others along every axis. */
function smoothSet(count: number, seed: number): Float32Array[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => {
    const [a, b, c] = [random() * 6.28, random() * 6.28, random() * 6.28];
    return volume((x, y, z) => 0.9 * Math.sin(0.5 * x + a) * Math.sin(0.4 * y + b) * Math.cos(0.45 * z + c));
  });
}

Deno.test("view stacks: axial images are [y, x] at each z, coronal [z, x] at each y, sagittal [z, y] at each x", () => {
  const shape = [3, 4, 5];
  const v = volume((x, y, z) => x + 10 * y + 100 * z, shape);
  const axial = viewStack(v, shape, "axial");
  deepStrictEqual([axial.count, axial.h, axial.w], [5, 4, 3]);
  deepStrictEqual(axial.data[2 * 12 + 1 * 3 + 2], 2 + 10 * 1 + 100 * 2); // z 2, y 1, x 2
  const coronal = viewStack(v, shape, "coronal");
  deepStrictEqual([coronal.count, coronal.h, coronal.w], [4, 5, 3]);
  deepStrictEqual(coronal.data[3 * 15 + 4 * 3 + 1], 1 + 10 * 3 + 100 * 4); // y 3, z 4, x 1
  const sagittal = viewStack(v, shape, "sagittal");
  deepStrictEqual([sagittal.count, sagittal.h, sagittal.w], [3, 5, 4]);
  deepStrictEqual(sagittal.data[1 * 20 + 2 * 4 + 3], 1 + 10 * 3 + 100 * 2); // x 1, z 2, y 3
  throws(() => viewStack(new Float32Array(5), shape, "axial"), /needs 60 values, got 5/);
  // A 4-slice slab is too thin for coronal and sagittal MS-SSIM with these options.
  deepStrictEqual(
    (["axial", "coronal", "sagittal"] as const).map((view) => viewFitsMsSsim([N, N, 4], view, MS)),
    [true, false, false],
  );
});

Deno.test("roughness: a ramp's is its slope squared along it and 0 across; noise slices are rough", () => {
  const ramp = (slope: number) => volume((_x, _y, z) => slope * z);
  ok(Math.abs(roughness([ramp(0.1)], SHAPE, 2) - 0.01) < 1e-8); // float32 volumes
  deepStrictEqual(roughness([ramp(0.1)], SHAPE, 0), 0);
  ok(Math.abs(roughness([ramp(0.2)], SHAPE, 2) / roughness([ramp(0.1)], SHAPE, 2) - 4) < 1e-5);
  const random = seededRandom(3);
  const noisy = volume(() => random() * 2 - 1); // independent noise: E(a − b)² = 2/3 along every axis
  const smooth = smoothSet(4, 4);
  ok(Math.abs(roughness([noisy], SHAPE, 2) - 2 / 3) < 0.05, `noise: ${roughness([noisy], SHAPE, 2)}`);
  ok(roughness([noisy], SHAPE, 2) / roughness(smooth, SHAPE, 2) > 10, "noise slices are not rough");
});

gpuTest("a set against itself: nearest MS-SSIM 1, ρ = 1, MMD² ≈ 0, diversity = the real set's", async () => {
  const reals = smoothSet(6, 7);
  const same = await studySet(reals, reals, SHAPE, { msSsim: MS });
  const other = await studySet(smoothSet(6, 8).map((v) => v.map((x) => 0.3 * x)), reals, SHAPE, {
    msSsim: MS,
  });
  deepStrictEqual(same.rho, [1, 1, 1]);
  for (const view of ["axial", "coronal", "sagittal"] as const) {
    const s = same.views[view]!;
    ok(Math.abs(s.msSsimNearest - 1) < 1e-5, `${view}: nearest ${s.msSsimNearest}`);
    deepStrictEqual(s.diversity, same.realDiversity[view]);
    ok(s.diversity < 0.9, `${view}: the smooth volumes are all alike (${s.diversity})`);
    const o = other.views[view]!;
    // The unbiased MMD² of a set against itself is −(2/m)(1 − mean kernel between distinct rows): in [−2/m, 0].
    const m = 6 * N;
    ok(s.mmdGaussian <= 0 && s.mmdGaussian >= -2 / m, `${view}: MMD² ${s.mmdGaussian}`);
    ok(o.mmdGaussian > 2 / m, `${view}: MMD² of another set ${o.mmdGaussian}`);
    ok(s.mmdLinear <= 0, `${view}: linear MMD² ${s.mmdLinear}`); // −2/(m − 1) × the rows' variance
    ok(o.msSsimNearest < 0.99);
  }
});

gpuTest(
  "axial slices of real volumes, mixed across volumes: real in the axial view, not in the others; ρ_z ≫ 1",
  async () => {
    const reals = smoothSet(10, 11);
    const reference = smoothSet(10, 12); // other real volumes: what a perfect model scores
    const random = seededRandom(13);
    const sources = smoothSet(10, 14);
    // Volume i's slice z is slice z of a random volume of `sources`.
    const mixed = sources.map(() => {
      const picks = Array.from({ length: N }, () => Math.floor(random() * sources.length));
      return volume((x, y, z) => sources[picks[z]][x + N * (y + N * z)]);
    });
    const opts = { msSsim: MS };
    const ref = await studySet(reference, reals, SHAPE, opts);
    const mix = await studySet(mixed, reals, SHAPE, opts);
    ok(mix.rho[2] > 3 && Math.abs(ref.rho[2] - 1) < 0.5, `ρ_z: mixed ${mix.rho[2]}, reference ${ref.rho[2]}`);
    // In-plane, mixing whole slices changes nothing (in expectation).
    for (const a of [0, 1]) {
      ok(Math.abs(mix.rho[a] - ref.rho[a]) < 0.25, `in-plane ρ ${mix.rho} vs ${ref.rho}`);
    }
    const m = mix.views;
    const r = ref.views;
    // Axial slices are real slices; the side views show the seams: their MMD² exceeds the reference's by
    // more, and their nearest MS-SSIM falls further below it.
    const axialExcess = m.axial!.mmdGaussian - r.axial!.mmdGaussian;
    const axialRatio = m.axial!.msSsimNearest / r.axial!.msSsimNearest;
    for (const view of ["coronal", "sagittal"] as const) {
      const excess = m[view]!.mmdGaussian - r[view]!.mmdGaussian;
      ok(excess > axialExcess && excess > 0, `${view}: MMD² excess ${excess}, axial ${axialExcess}`);
      const ratio = m[view]!.msSsimNearest / r[view]!.msSsimNearest;
      ok(ratio < axialRatio && ratio < 0.8, `${view}: nearest MS-SSIM ratio ${ratio}, axial ${axialRatio}`);
    }
  },
);

gpuTest(
  "viewSimilarity: rows limited by `pairs` leave NaN elsewhere; a volume is identical to itself",
  async () => {
    const set = smoothSet(3, 21);
    const rows = await viewSimilarity(set, set, SHAPE, "coronal", MS, (i) => (i === 0 ? [0, 2] : []));
    ok(Math.abs(rows[0][0] - 1) < 1e-5 && rows[0][2] < 1 && Number.isNaN(rows[0][1]));
    ok(rows[1].every(Number.isNaN));
  },
);
