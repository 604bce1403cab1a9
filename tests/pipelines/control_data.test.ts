/** Paired conditions: one-hot tissue, the partial image outside the brain, kept slices, latent dropout mix. */

import { deepStrictEqual, ok, throws } from "node:assert";
import { tensor } from "../../mod.ts";
import { conditionsOf, pairedBatches, parseConditionKinds } from "../../pipelines/control_data.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

const N = 8;

/** An 8³ pair: the image is a ramp, the tissue labels cycle 0..3 along x, the ventricle mask is x = 3. */
function pair() {
  const v = N ** 3;
  const image = Float32Array.from({ length: v }, (_, i) => (i % 97) / 97);
  const labels = new Float32Array(2 * v);
  for (let i = 0; i < v; i++) {
    labels[i] = i % 4;
    labels[v + i] = i % N === 3 ? 1 : 0;
  }
  return {
    image: tensor(image, [1, 1, N, N, N]),
    labels: tensor(labels, [1, 2, N, N, N]),
    values: { image, labels },
  };
}

gpuTest(
  "conditionsOf: ventricles, one-hot tissue, the image outside the brain, every k-th axial slice",
  async () => {
    const p = pair();
    const v = N ** 3;
    const [vent, tissue, outside, slices] = conditionsOf(
      ["ventricles", "tissue", "outside", "slices"],
      p.image,
      p.labels,
      { sliceEvery: 3 },
    );
    deepStrictEqual(await vent.toArray(), p.values.labels.slice(v));
    deepStrictEqual(tissue.shape, [1, 3, N, N, N]);
    const t = await tissue.toArray();
    const o = await outside.toArray();
    const s = await slices.toArray();
    for (let i = 0; i < v; i++) {
      const k = i % 4;
      for (let c = 0; c < 3; c++) deepStrictEqual(t[c * v + i], k === c + 1 ? 1 : 0);
      deepStrictEqual([o[i], o[v + i]], k === 0 ? [p.values.image[i], 1] : [0, 0]);
      const kept = Math.floor(i / (N * N)) % 3 === 0; // z is the slowest axis
      deepStrictEqual([s[i], s[v + i]], kept ? [p.values.image[i], 1] : [0, 0]);
    }
    disposeAll(p.image, p.labels, vent, tissue, outside, slices);
    throws(
      () => parseConditionKinds(["tissue", "skull"]),
      /unknown condition "skull"; accepted: ventricles, tissue/,
    );
  },
);

gpuTest("pairedBatches: deterministic batches with conditions; latent dropout keeps one or all", async () => {
  const p = pair();
  const data = pairedBatches(p, {
    batch: 2,
    seed: 1,
    conditions: ["ventricles", "tissue"],
    augment: { range: [0, 1] },
    pool: 3,
  });
  let all = 0;
  let single = 0;
  for (let step = 0; step < 20; step++) {
    const b = data(step, 0);
    deepStrictEqual(b.x0.shape, [2, 1, N, N, N]);
    deepStrictEqual(b.control!.conditions.map((c) => c!.shape[1]), [1, 3]);
    for (let s = 0; s < 2; s++) {
      const kept = b.control!.keep!.map((row) => row[s]);
      ok(kept.some((k) => k === 1), "never both dropped");
      if (kept.every((k) => k === 1)) all++;
      else single++;
    }
    if (step === 0) {
      const again = data(0, 0);
      deepStrictEqual(await again.x0.toArray(), await b.x0.toArray());
      disposeAll(again.x0, again.control!.conditions as never);
    }
    disposeAll(b.x0, b.control!.conditions as never);
  }
  ok(all > 5 && single > 10, `keep-all ${all}, one ${single} of 40 (expected 0.4 / 0.6)`);
  disposeAll(p.image, p.labels);
});
