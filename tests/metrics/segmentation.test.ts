import assert from "node:assert/strict";
import {
  assd,
  averageSurfaceDistance,
  dice,
  hausdorff95,
  hausdorffDistance,
  type LabelVolume,
  maskEdges,
  squaredDistanceTransform,
  surfaceDistances,
} from "../../metrics/segmentation.ts";
import { assertClose } from "../helpers/check.ts";
import { hashU32, makeMask, metricFixtures, num } from "./fixtures.ts";

const vol = (data: ArrayLike<number>, shape: number[]): LabelVolume => ({ data, shape });

/** A box mask lo ≤ c < hi. */
function box(shape: number[], lo: number[], hi: number[]): Uint8Array {
  return makeMask(shape, { kind: "box", lo, hi });
}

Deno.test("dice / HD95 / HD / ASSD match MONAI's compute_dice, compute_hausdorff_distance, compute_average_surface_distance", async () => {
  const fx = await metricFixtures();
  for (const c of fx.segmentation) {
    const pm = makeMask(c.shape, c.pred);
    const gm = makeMask(c.shape, c.gt);
    const count = (m: Uint8Array) => m.reduce((s, v) => s + v, 0);
    assert.deepEqual([count(pm), count(gm)], c.counts, `${c.name}: masks differ from the script's`);
    const p = vol(pm, c.shape);
    const g = vol(gm, c.shape);
    const spacing = c.spacing;
    const got = [
      dice(p, g),
      dice(p, g, { ignoreEmpty: false }),
      hausdorff95(p, g, { spacing }),
      hausdorffDistance(p, g, { spacing }),
      hausdorffDistance(p, g, { spacing, percentile: 95, directed: true }),
      assd(p, g, { spacing }),
      averageSurfaceDistance(p, g, { spacing }),
    ];
    const expected = [c.dice, c.dice_keep_empty, c.hd95, c.hd, c.hd95_directed, c.assd, c.asd].map(num);
    // MONAI keeps distances and their quantiles/means in float32 (≈ 6e-8 relative); here they are float64.
    // NaN and ±Infinity (empty masks) must match exactly.
    assertClose(got, expected, { rtol: 1e-6, atol: 0, name: c.name });
  }
});

Deno.test("a sheet shifted by 3 voxels: every edge distance is 3 spacings (HD95 = HD = ASSD = 3s)", () => {
  const shape = [12, 10, 9];
  const a = box(shape, [2, 1, 1], [3, 9, 8]);
  const b = box(shape, [5, 1, 1], [6, 9, 8]);
  for (const s of [1, 0.7]) {
    const spacing = [s, 1.3, 2];
    assert.equal(hausdorff95(vol(a, shape), vol(b, shape), { spacing }), 3 * s);
    assert.equal(hausdorffDistance(vol(a, shape), vol(b, shape), { spacing }), 3 * s);
    // The mean of ~100 equal float64 terms: a few ulps.
    assertClose([assd(vol(a, shape), vol(b, shape), { spacing })], [3 * s], { rtol: 1e-13, atol: 0 });
  }
  // A solid cube shifted by 3: the farthest edge voxels are 3 apart (the faces perpendicular to the
  // shift), and they are more than 5% of the edge voxels, so HD95 = HD = 3.
  const c1 = box([20, 20, 20], [5, 5, 5], [13, 13, 13]);
  const c2 = box([20, 20, 20], [8, 5, 5], [16, 13, 13]);
  assert.equal(hausdorff95(vol(c1, [20, 20, 20]), vol(c2, [20, 20, 20])), 3);
  assert.equal(hausdorffDistance(vol(c1, [20, 20, 20]), vol(c2, [20, 20, 20])), 3);
  assert.equal(dice(vol(c1, [20, 20, 20]), vol(c2, [20, 20, 20])), (2 * 5 * 64) / (2 * 512));
});

Deno.test("single voxels (3, 4, 0) apart: every distance is the Euclidean distance in mm", () => {
  const shape = [8, 8, 8];
  const a = box(shape, [1, 1, 1], [2, 2, 2]);
  const b = box(shape, [4, 5, 1], [5, 6, 2]);
  assert.equal(hausdorff95(vol(a, shape), vol(b, shape)), 5);
  assert.equal(assd(vol(a, shape), vol(b, shape)), 5);
  assert.equal(hausdorff95(vol(a, shape), vol(b, shape), { spacing: [2, 0.5, 9] }), Math.sqrt(36 + 4));
});

Deno.test("edges are foreground voxels with a background face-neighbour, the image border included", () => {
  const shape = [5, 5, 5];
  const cube = box(shape, [1, 1, 1], [4, 4, 4]);
  const e = maskEdges(cube, shape);
  assert.equal(e.reduce((s, v) => s + v, 0), 26); // all of the 3³ cube but its centre
  assert.equal(e[2 * 25 + 2 * 5 + 2], 0);
  const full = new Uint8Array(125).fill(1);
  assert.equal(maskEdges(full, shape).reduce((s, v) => s + v, 0), 125 - 27); // the outer layer
  // 2-D: a plus sign has no interior voxel except its centre... which touches background diagonally only.
  const plus = Uint8Array.from([0, 1, 0, 1, 1, 1, 0, 1, 0]);
  assert.deepEqual([...maskEdges(plus, [3, 3])], [0, 1, 0, 1, 0, 1, 0, 1, 0]);
});

Deno.test("the separable distance transform equals brute force (3-D and 2-D, anisotropic)", () => {
  for (
    const [shape, spacing, seed] of [[[13, 11, 9], [0.8, 1.7, 1.1], 3], [[17, 6], [2.5, 0.4], 3]] as const
  ) {
    const n = shape.reduce((a, b) => a * b, 1);
    const sites = Uint8Array.from({ length: n }, (_, i) => (hashU32(i, seed) >>> 24 < 20 ? 1 : 0));
    const d2 = squaredDistanceTransform(sites, shape, spacing);
    const coords = (i: number) => {
      const c: number[] = [];
      for (let d = shape.length - 1; d >= 0; d--) {
        c[d] = i % shape[d];
        i = Math.floor(i / shape[d]);
      }
      return c;
    };
    const siteList = [...sites.keys()].filter((i) => sites[i]).map(coords);
    assert.ok(siteList.length > 3);
    for (let i = 0; i < n; i++) {
      const c = coords(i);
      let best = Infinity;
      for (const s of siteList) {
        best = Math.min(best, s.reduce((t, v, a) => t + ((v - c[a]) * spacing[a]) ** 2, 0));
      }
      // Sums of the same squared terms in another order: float64 round-off.
      assert.ok(Math.abs(d2[i] - best) <= 1e-12 * Math.max(1, best), `voxel ${c}: ${d2[i]} vs ${best}`);
    }
  }
  assert.ok(squaredDistanceTransform(new Uint8Array(6), [2, 3], [1, 1]).every((v) => v === Infinity));
});

Deno.test("label selects one class of a label map; other values are background", () => {
  const shape = [6, 6];
  const labels = new Float32Array(36);
  labels.fill(2, 7, 10); // row 1, columns 1..3
  labels.fill(1, 25, 28);
  const pred = new Float32Array(36);
  pred.fill(2, 7, 9);
  assert.equal(dice(vol(pred, shape), vol(labels, shape), { label: 2 }), (2 * 2) / 5);
  assert.equal(dice(vol(pred, shape), vol(labels, shape)), (2 * 2) / 8);
  const d = surfaceDistances(vol(pred, shape), vol(labels, shape), { label: 2 });
  assert.deepEqual([...d.predToGt], [0, 0]);
  assert.deepEqual([...d.gtToPred], [0, 0, 1]);
});

Deno.test("HD95 and ASSD on 128³ masks: plausible distances (time logged, not asserted)", () => {
  const shape = [128, 128, 128];
  const a = makeMask(shape, { kind: "ellipsoid", center: [60, 64, 66], radii: [40, 35, 45] });
  const b = makeMask(shape, { kind: "ellipsoid", center: [66, 60, 64], radii: [38, 37, 44] });
  const t0 = performance.now();
  const hd = hausdorff95(vol(a, shape), vol(b, shape), { spacing: [1, 1, 1.2] });
  const sd = assd(vol(a, shape), vol(b, shape), { spacing: [1, 1, 1.2] });
  const seconds = (performance.now() - t0) / 1000;
  assert.ok(hd > 5 && hd < 12 && sd > 1 && sd < hd, `plausible distances: HD95 ${hd}, ASSD ${sd}`);
  console.log(`HD95 + ASSD on 128³ took ${seconds.toFixed(1)} s`);
});

Deno.test("segmentation metrics reject mismatched shapes, wrong data lengths, bad spacing and percentile", () => {
  const a = vol(new Uint8Array(24), [2, 3, 4]);
  const b = vol(new Uint8Array(24), [4, 3, 2]);
  assert.throws(() => dice(a, b), /dice: pred \[2, 3, 4\] and gt \[4, 3, 2\] must have the same shape/);
  assert.throws(() => assd(vol(new Uint8Array(5), [2, 3]), vol(new Uint8Array(5), [2, 3])), /6 voxels/);
  assert.throws(
    () => hausdorff95(a, a, { spacing: [1, 1] }),
    /spacing \[1,1\] must be a positive number or 3/,
  );
  assert.throws(() => hausdorffDistance(a, a, { percentile: 101 }), /percentile 101 must be in \[0, 100\]/);
});
