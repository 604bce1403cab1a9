/**
 * scripts/evaluate_concepts.ts: the per-concept score table and its confusion check on sets whose answer is
 * known (two visibly different synthetic "concepts": held-out variants of each are recognised, swapped sets
 * are confused both ways), and the manifest's concept files.
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { fromData, type Tensor } from "../../engine/tensor.ts";
import { parseManifest } from "../../pipelines/manifest.ts";
import { filesByConcept, scoreConcepts } from "../../scripts/evaluate_concepts.ts";
import { gpuTest } from "../helpers/gpu.ts";

const S = 24; // the smallest grid the 3-scale MS-SSIM of the studies accepts with a 5-voxel window

/** A ball (concept "ball") or a slab (concept "slab") with seeded noise, [1, 1, S, S, S] in [-1, 1]. */
function volume(kind: "ball" | "slab", seed: number): Tensor {
  let state = seed * 7919 + 1;
  const noise = () => ((state = (state * 48271) % 2147483647) / 2147483647 - 0.5) * 0.2;
  const data = new Float32Array(S ** 3);
  for (let z = 0; z < S; z++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const r = Math.hypot(x - S / 2, y - S / 2, z - S / 2);
        const inside = kind === "ball" ? r < S / 3 : Math.abs(z - S / 2) < S / 6;
        data[(z * S + y) * S + x] = (inside ? 0.8 : -0.8) + noise();
      }
    }
  }
  return fromData(data, [1, 1, S, S, S]);
}

gpuTest("scoreConcepts: held-out variants are recognised, swapped sets are confused", async () => {
  const make = (kind: "ball" | "slab", first: number) => [0, 1, 2].map((i) => volume(kind, first + i));
  const reals = [make("ball", 0), make("slab", 10)];
  const sets = [make("ball", 100), make("slab", 110)];
  try {
    const good = await scoreConcepts(["<ball>", "<slab>"], sets, reals);
    deepStrictEqual([good.confusedByMmd, good.confusedByMsSsim], [[], []]);
    ok(good.cells[0][0].msSsimMean > good.cells[0][1].msSsimMean);
    ok(good.cells[1][1].mmdLinear < good.cells[1][0].mmdLinear);
    const swapped = await scoreConcepts(["<ball>", "<slab>"], [sets[1], sets[0]], reals, good.sigma);
    deepStrictEqual(swapped.sigma, good.sigma);
    deepStrictEqual(swapped.confusedByMmd, [["<ball>", "<slab>"], ["<slab>", "<ball>"]]);
    deepStrictEqual(swapped.confusedByMsSsim, [["<ball>", "<slab>"], ["<slab>", "<ball>"]]);
    await rejects(() => scoreConcepts(["<ball>"], sets, reals), /1 concepts but 2 sets/);
  } finally {
    for (const t of [...reals.flat(), ...sets.flat()]) t.dispose();
  }
});

Deno.test("filesByConcept: single-token items per concept; a concept without its own item is an error", () => {
  const m = parseManifest(
    JSON.stringify([{ file: "a1", concept: "<a>" }, { file: "b1", concept: "<b>" }, {
      file: "a2",
      concept: "<a>",
    }]),
    "/d",
  );
  deepStrictEqual([...filesByConcept(m)], [["<a>", ["/d/a1", "/d/a2"]], ["<b>", ["/d/b1"]]]);
  const mixed = parseManifest(
    JSON.stringify([{ file: "a", concept: "<a>" }, { file: "x", prompt: "<a> <b>" }]),
    "/d",
  );
  throws(() => filesByConcept(mixed), /concept <b>: no manifest item has it as its only token/);
});
