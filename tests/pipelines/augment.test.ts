import * as V from "../../mod.ts";
import { augment } from "../../pipelines/augment.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, notDeepStrictEqual, throws } from "node:assert";

/** A blocky label volume [1, 1, 16, 16, 16] with values 0..3. */
function blocks(): Float32Array {
  const n = 16;
  return Float32Array.from({ length: n ** 3 }, (_, i) => {
    const x = i % n, y = Math.floor(i / n) % n, z = Math.floor(i / n / n);
    return (x > 3 && x < 12 && y > 3 && y < 12 && z > 3 && z < 12)
      ? 1 + ((x >> 2) + (y >> 2) + (z >> 2)) % 3
      : 0;
  });
}

gpuTest("image and labels move together; augmentation is deterministic per seed", async () => {
  const values = blocks();
  const img = V.tensor(values, [1, 1, 16, 16, 16]);
  const lab = V.tensor(values, [1, 1, 16, 16, 16]);
  const noIntensity = {
    biasField: 0,
    gamma: 0,
    contrast: 0,
    brightness: 0,
    range: [0, 3] as [number, number],
  };
  const run = async (seed: number) => {
    const a = augment(img, seed, { ...noIntensity, elastic: 1.2, rotateDegrees: 10 }, lab);
    const out = [await a.image.toArray(), await a.labels!.toArray()];
    disposeAll(a.image, a.labels);
    return out;
  };
  const [i1, l1] = await run(1);
  // Where the (nearest-sampled) labels say k, the (trilinear) image must be near k: same geometry.
  let agree = 0;
  for (let i = 0; i < i1.length; i++) if (Math.abs(i1[i] - l1[i]) < 0.5) agree++;
  if (agree / i1.length < 0.9) {
    throw new Error(`image and labels agree on only ${(100 * agree / i1.length).toFixed(1)}% of voxels`);
  }
  if (!l1.every((v) => Number.isInteger(v) && v >= 0 && v <= 3)) {
    throw new Error("labels must stay integer classes");
  }
  const [i1b, l1b] = await run(1);
  deepStrictEqual([[...i1b], [...l1b]], [[...i1], [...l1]]);
  const [i2] = await run(2);
  notDeepStrictEqual([...i2], [...i1]);
  disposeAll(img, lab);
});

gpuTest("intensity jitter keeps images inside their range", async () => {
  const img = V.tensor(Float32Array.from(blocks(), (v) => v / 1.5 - 1), [1, 1, 16, 16, 16]);
  for (const seed of [3, 4, 5]) {
    const a = augment(img, seed, { biasField: 0.5, gamma: 0.5, contrast: 0.3, brightness: 0.2 });
    const v = await a.image.toArray();
    if (v.some((x) => x < -1 - 1e-6 || x > 1 + 1e-6 || !Number.isFinite(x))) {
      throw new Error("value outside [-1, 1]");
    }
    a.image.dispose();
  }
  const flat = V.zeros([2, 2]);
  throws(() => augment(flat, 1), /augment: image \[2, 2\] must be \[1, C, D, H, W\]/);
  disposeAll(img, flat);
});
