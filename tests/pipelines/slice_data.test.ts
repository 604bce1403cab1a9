/**
 * The slice-model training data: the index sampler's invariants, the packing of slots (which slice of
 * which volume lands in each slot), and the loss restricted to target slots through `train`.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import * as V from "../../mod.ts";
import { seededRandom } from "../../nn/init.ts";
import { Module } from "../../nn/module.ts";
import {
  packIndependentSlices,
  packSlices,
  sampleIndexGroup,
  sampleSliceSets,
  sliceBatches,
} from "../../pipelines/slice_data.ts";
import { train } from "../../pipelines/train.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";

const increasing = (xs: number[]) => xs.every((v, i) => i === 0 || v > xs[i - 1]);

Deno.test("index groups: 1..max distinct slices inside the volume, evenly spaced, short and long gaps", () => {
  const random = seededRandom(1);
  let unit = 0, long = 0, groups = 0;
  for (const [max, depth] of [[8, 64], [20, 128], [4, 6], [8, 4], [1, 3]]) {
    for (let n = 0; n < 500; n++) {
      const g = sampleIndexGroup(max, depth, random);
      ok(g.length >= 1 && g.length <= max, `${g.length} slices for at most ${max}`);
      ok(g.every((i) => Number.isInteger(i) && i >= 0 && i < depth), `outside 0..${depth - 1}: ${g}`);
      ok(increasing(g), `not distinct and ascending: ${g}`);
      if (g.length >= 3 && depth > max) {
        // ⌊start + i·gap⌋: consecutive differences are ⌊gap⌋ or ⌈gap⌉.
        const diffs = g.slice(1).map((v, i) => v - g[i]);
        ok(Math.max(...diffs) - Math.min(...diffs) <= 1, `unevenly spaced: ${g}`);
      }
      if (depth === 64 && g.length >= 2) {
        groups++;
        if (g[1] - g[0] === 1) unit++;
        if (g[1] - g[0] >= 8) long++;
      }
    }
  }
  // Log-uniform gaps: adjacent slices and gaps of an eighth of the volume are both common.
  ok(unit / groups > 0.1 && long / groups > 0.1, `gap 1: ${unit}/${groups}, gap ≥ 8: ${long}/${groups}`);
});

Deno.test("slice sets: disjoint, ascending, at least one target, at most `slots` in all; sometimes unconditional", () => {
  const random = seededRandom(2);
  let unconditional = 0, conditional = 0, filled = 0;
  for (const [depth, slots] of [[64, 8], [128, 20], [5, 8], [3, 1], [48, 2]]) {
    for (let n = 0; n < 400; n++) {
      const { condition, target } = sampleSliceSets(depth, slots, random);
      ok(target.length >= 1, "no target");
      ok(condition.length + target.length <= Math.min(slots, depth), `${condition} + ${target} > ${slots}`);
      ok(increasing(condition) && increasing(target), `not ascending: ${condition} / ${target}`);
      ok(condition.every((i) => !target.includes(i)), `shared slices: ${condition} / ${target}`);
      ok([...condition, ...target].every((i) => i >= 0 && i < depth));
      if (depth === 64) {
        if (condition.length === 0) unconditional++;
        else conditional++;
        if (condition.length + target.length === slots) filled++;
      }
    }
  }
  ok(unconditional > 20 && conditional > 100, `unconditional ${unconditional}, conditional ${conditional}`);
  ok(filled > 0, "the slots are never all used");
  throws(() => sampleSliceSets(0, 4, random), /depth must be a positive integer/);
  throws(() => sampleSliceSets(8, 0, random), /slots must be a positive integer/);
});

/** Volumes [3, 1, 6, 2, 2] whose every voxel holds 100·volume + slice. */
function labelledVolumes(): V.Tensor {
  const [b, d, hw] = [3, 6, 4];
  return V.tensor(
    Float32Array.from(
      { length: b * d * hw },
      (_, i) => 100 * Math.floor(i / (d * hw)) + Math.floor(i / hw) % d,
    ),
    [b, 1, d, 2, 2],
  );
}

gpuTest(
  "packSlices: real slots hold the named slices of their volume, padding slots slices of the next volume",
  async () => {
    const volumes = labelledVolumes();
    const batch = packSlices(volumes, 5, seededRandom(3));
    deepStrictEqual(batch.x0.shape, [3, 5, 1, 2, 2]);
    ok(batch.slices.clean === batch.x0);
    const values = await batch.x0.toArray();
    const mask = await batch.lossMask.toArray();
    const { roles, indices } = batch.slices;
    deepStrictEqual(batch.slices.depth, 6);
    for (let b = 0; b < 3; b++) {
      const real = roles[b].filter((r) => r !== "padding").length;
      ok(roles[b].slice(0, real).every((r) => r !== "padding"), "real slots come first");
      ok(increasing(indices[b].slice(0, real)), "real slots ascending");
      ok(roles[b].includes("target"));
      for (let t = 0; t < 5; t++) {
        const from = roles[b][t] === "padding" ? (b + 1) % 3 : b;
        const slot = values.slice((b * 5 + t) * 4, (b * 5 + t + 1) * 4);
        deepStrictEqual([...slot], new Array(4).fill(100 * from + indices[b][t]), `slot (${b}, ${t})`);
        deepStrictEqual(mask[b * 5 + t], roles[b][t] === "target" ? 1 : 0);
      }
    }
    batch.x0.dispose();
    batch.lossMask.dispose();
    volumes.dispose();
  },
);

gpuTest(
  "packIndependentSlices: distinct slices of each volume, one target slot each, labelled with their index",
  async () => {
    const volumes = labelledVolumes();
    const batch = packIndependentSlices(volumes, 4, seededRandom(5));
    deepStrictEqual(batch.x0.shape, [12, 1, 1, 2, 2]);
    deepStrictEqual(batch.slices.depth, 6);
    ok(batch.slices.roles.every((r) => r.length === 1 && r[0] === "target"));
    const values = await batch.x0.toArray();
    const { indices } = batch.slices;
    for (let v = 0; v < 3; v++) {
      const mine = indices.slice(v * 4, v * 4 + 4).map((row) => row[0]);
      deepStrictEqual(new Set(mine).size, 4, `volume ${v}: slices ${mine} not distinct`);
      mine.forEach((z, i) => {
        const k = v * 4 + i;
        deepStrictEqual([...values.slice(k * 4, k * 4 + 4)], new Array(4).fill(100 * v + z), `example ${k}`);
      });
    }
    // Every slice of the volume gets drawn (uniformly, over many draws).
    const seen = new Set<number>();
    const random = seededRandom(11);
    for (let i = 0; i < 20; i++) {
      const b = packIndependentSlices(volumes, 2, random);
      for (const row of b.slices.indices) seen.add(row[0]);
      b.x0.dispose();
      b.lossMask.dispose();
    }
    deepStrictEqual([...seen].sort(), [0, 1, 2, 3, 4, 5]);
    throws(
      () => packIndependentSlices(volumes, 7, random),
      /7 distinct slices per volume, but the depth is 6/,
    );
    batch.x0.dispose();
    batch.lossMask.dispose();
    volumes.dispose();
  },
);

gpuTest(
  "sliceBatches draws the same slots for the same (seed, step, micro-batch) and frees the volumes",
  async () => {
    const source = () => ({ x0: labelledVolumes() });
    const a = await sliceBatches(source, 4, 7)(3, 0);
    const b = await sliceBatches(source, 4, 7)(3, 0);
    const c = await sliceBatches(source, 4, 7)(4, 0);
    deepStrictEqual(a.slices.indices, b.slices.indices);
    deepStrictEqual(a.slices.roles, b.slices.roles);
    ok(JSON.stringify(a.slices) !== JSON.stringify(c.slices), "another step draws other slices");
    for (const x of [a, b, c]) {
      x.x0.dispose();
      x.lossMask.dispose();
    }
  },
);

/** ε̂ = w·x + b, starting at w = 0: the first loss is the error of a constant b against the noise. */
class Constant extends Module {
  readonly w = this.param("w", V.tensor([0], [1]));
  readonly b = this.param("b", V.tensor([0.25], [1]));
  forward(x: V.Tensor): V.Tensor {
    return V.scope(() => V.add(V.mul(x, this.w), this.b));
  }
}

gpuTest("train with a loss mask: the loss is the mean squared error over the target slots only", async () => {
  const volumes = labelledVolumes();
  const batch = packSlices(volumes, 4, seededRandom(5));
  volumes.dispose();
  const roles = batch.slices.roles;
  const shape = batch.x0.shape;
  const losses: number[] = [];
  const dir = await Deno.makeTempDir();
  const model = new Constant();
  await train(model, new DDPMScheduler(), () => batch, {
    steps: 1,
    lr: 1e-9,
    warmupSteps: 0,
    emaDecay: 0,
    outDir: dir,
    progress: false,
    onStep: (s) => losses.push(s.loss),
  });
  // train's noise of step 0: seed 0, offset 0.
  const noise = V.randn(shape, { seed: 0, offset: 0 });
  const n = await noise.toArray();
  noise.dispose();
  const per = n.length / (shape[0] * shape[1]);
  let sum = 0, count = 0, all = 0;
  roles.flat().forEach((r, slot) => {
    for (let i = 0; i < per; i++) {
      const e = (0.25 - n[slot * per + i]) ** 2;
      all += e;
      if (r === "target") [sum, count] = [sum + e, count + 1];
    }
  });
  assertClose(losses, [sum / count], { rtol: 1e-5, atol: 1e-6 });
  ok(
    Math.abs(sum / count - all / n.length) > 1e-3,
    "masked and unmasked losses coincide: the test proves nothing",
  );
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});
