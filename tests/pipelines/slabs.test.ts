/**
 * Slabs (the cDPM study's "3-D on slabs" model): crops along z hold the named slices, their positions
 * cover the volume and repeat per (seed, step), and `train --slab` writes a model of slabs that `sample`
 * generates, on 8³ volumes.
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { main as sample } from "../../cli/sample.ts";
import { main as train } from "../../cli/train.ts";
import { readNifti } from "../../io/nifti.ts";
import * as V from "../../mod.ts";
import { seededRandom } from "../../nn/init.ts";
import { cropSlabs, slabBatches, slabStarts } from "../../pipelines/slabs.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

/** [2, 1, 6, 2, 2] volumes whose voxels hold 100·volume + slice. */
function labelledVolumes(): V.Tensor {
  const [b, d, hw] = [2, 6, 4];
  return V.tensor(
    Float32Array.from(
      { length: b * d * hw },
      (_, i) => 100 * Math.floor(i / (d * hw)) + Math.floor(i / hw) % d,
    ),
    [b, 1, d, 2, 2],
  );
}

Deno.test("slab starts: uniform over 0..D − depth, every start drawn; bad depths explained", () => {
  const random = seededRandom(2);
  const counts = new Array(4).fill(0);
  for (let i = 0; i < 400; i++) for (const z of slabStarts(1, 6, 3, random)) counts[z]++;
  ok(counts.every((c) => c > 60), `starts not uniform: ${counts}`);
  throws(() => slabStarts(1, 6, 7, random), /slab depth must be an integer in 1\.\.6/);
});

gpuTest("cropSlabs: volume b holds slices starts[b] … starts[b] + depth − 1", async () => {
  const volumes = labelledVolumes();
  const slabs = cropSlabs(volumes, 3, [2, 0]);
  deepStrictEqual(slabs.shape, [2, 1, 3, 2, 2]);
  const expected = [2, 3, 4, 100, 101, 102].flatMap((v) => [v, v, v, v]);
  deepStrictEqual([...await slabs.toArray()], expected);
  throws(() => cropSlabs(volumes, 3, [4, 0]), /slab starts in 0\.\.3/);
  slabs.dispose();
  const batches = slabBatches(() => ({ x0: labelledVolumes() }), 2, 5);
  const [a, b] = [await batches(3, 0), await batches(3, 0)];
  deepStrictEqual(await a.x0.toArray(), await b.x0.toArray());
  deepStrictEqual(a.x0.shape, [2, 1, 2, 2, 2]);
  a.x0.dispose();
  b.x0.dispose();
  volumes.dispose();
});

gpuTest("train --slab writes a model of slabs; sample generates them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-slabs-" });
  await Deno.mkdir(`${dir}/data`);
  await writeTinyVolumes(`${dir}/data`);
  const run = `${dir}/run`;
  const args = [
    "--data",
    `${dir}/data`,
    "--out",
    run,
    ...["--size", "8", "--channels", "8,16", "--attention", "0,1", "--groups", "4", "--head-channels", "8"],
    ...["--batch", "2", "--previews", "0", "--steps", "2"],
  ];
  await rejects(capture(() => train([...args, "--slab", "5"])), /--slab 5 must be divisible by 2\^1/);
  const printed = await capture(() => train([...args, "--slab", "4"]));
  ok(printed.stdout.includes("model.safetensors"), printed.stdout);
  const changed = capture(() => train([...args, "--slab", "2", "--steps", "3"]));
  await rejects(changed, /slab: 4 in the checkpoint, 2 now/);
  const out = `${dir}/slab.nii`;
  await capture(() => sample(["--model", `${run}/model.safetensors`, "--steps", "2", "--out", out]));
  const volume = await readNifti(out);
  deepStrictEqual(volume.shape.slice(0, 3), [8, 8, 4]);
  ok(volume.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1));
  await Deno.remove(dir, { recursive: true });
});
