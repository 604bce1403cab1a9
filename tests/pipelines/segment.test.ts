/** The segmenter for generated volumes: k-means recovers intensity classes; the ventricle rule; mask scores. */

import { deepStrictEqual, ok } from "node:assert";
import { ventricleMask } from "../../pipelines/control_data.ts";
import { maskScores, segmentTissue, segmentVolume, tissueCentroids } from "../../pipelines/segment.ts";
import { seededRandom } from "../../nn/init.ts";

/** A 16³ volume of four intensity classes (nested boxes) with noise well below their spacing. */
function phantom(): { image: Float32Array; labels: Float32Array } {
  const n = 16;
  const random = seededRandom(3);
  const levels = [-1, -0.6, 0.2, 0.7];
  const labels = new Float32Array(n ** 3);
  const image = new Float32Array(n ** 3);
  for (let i = 0; i < n ** 3; i++) {
    const x = i % n, y = Math.floor(i / n) % n, z = Math.floor(i / (n * n));
    const r = Math.max(Math.abs(x - 7.5), Math.abs(y - 7.5), Math.abs(z - 7.5));
    const k = r > 7 ? 0 : r > 5 ? 3 : r > 2 ? 2 : 1;
    labels[i] = k;
    image[i] = levels[k] + 0.05 * (2 * random() - 1);
  }
  return { image, labels };
}

Deno.test("segmentTissue recovers four intensity classes, even from shifted starting centroids", () => {
  const { image, labels } = phantom();
  const init = tissueCentroids(image, labels);
  ok(Math.abs(init[1] + 0.6) < 0.01 && Math.abs(init[3] - 0.7) < 0.01, JSON.stringify(init));
  const shifted = init.map((c) => c + 0.15) as typeof init;
  deepStrictEqual(segmentTissue(image, shifted), Uint8Array.from(labels));
});

Deno.test("ventricleMask keeps the CSF of the central box; segmentVolume applies the same rule", () => {
  const { image, labels } = phantom();
  const mask = ventricleMask(labels, [16, 16, 16]);
  // CSF is the central 4³ cube (|x − 7.5| ≤ 2 → coordinates 6..9); the central box is 4..11: all of it.
  deepStrictEqual(mask.reduce((a, b) => a + b, 0), 4 ** 3);
  const seg = segmentVolume(image, [16, 16, 16], tissueCentroids(image, labels));
  deepStrictEqual(seg.ventricles, mask);
  const s = maskScores(seg.ventricles, mask, [16, 16, 16]);
  deepStrictEqual([s.dice, s.hd95, s.assd], [1, 0, 0]);
  // One voxel layer removed from one face: Dice 2·48/(48 + 64), distances of at most one voxel.
  const thinner = mask.map((v, i) => (v && Math.floor(i / 256) === 9 ? 0 : v));
  const t = maskScores(thinner, mask, [16, 16, 16]);
  ok(Math.abs(t.dice - 96 / 112) < 1e-12, `dice ${t.dice}`);
  ok(t.hd95 <= 1 && t.assd > 0 && t.assd < 1, JSON.stringify(t));
});
