/**
 * Staged generation: stage plans (the paper's 13 stages for 128 slices, FDM's autoregressive layout), and
 * staged runs in which condition slices stay exactly as their stage generated them.
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { add, keep, mul, noGrad, scope, type Tensor } from "../../mod.ts";
import { map } from "../../engine/ops/map.ts";
import { SliceDiffusionUNet } from "../../models/slice_unet.ts";
import { DDIMScheduler, DDPMScheduler, EulerAncestralScheduler } from "../../samplers/scheduler.ts";
import { planStages, type Stage, stagedSample, type StageSlots } from "../../samplers/staged.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { loadRandom } from "../models/slice_helpers.ts";

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

Deno.test("paper plan: 128 slices, 20 slots, 10 per stage → 13 stages, each conditioned on the previous one", () => {
  const plan = planStages(128, { slots: 20, step: 10 });
  deepStrictEqual(plan.length, 13);
  deepStrictEqual(plan[0], { condition: [], target: range(0, 10) });
  for (let s = 1; s < plan.length; s++) deepStrictEqual(plan[s].condition, plan[s - 1].target);
  deepStrictEqual(plan[12].target, range(120, 128));
  deepStrictEqual(plan.flatMap((s) => s.target), range(0, 128));
  ok(plan.every((s) => s.condition.length + s.target.length <= 20));
  // The default step is half the slots; a depth below one stage is one stage.
  deepStrictEqual(planStages(10, { slots: 8 }).map((s) => s.target.length), [4, 4, 2]);
  deepStrictEqual(planStages(3, { slots: 8 }), [{ condition: [], target: [0, 1, 2] }]);
});

Deno.test("fdm plan: the first stage fills the slots, later ones keep slots − step slices of context", () => {
  deepStrictEqual(planStages(32, { slots: 16, step: 8, mode: "fdm" }), [
    { condition: [], target: range(0, 16) },
    { condition: range(8, 16), target: range(16, 24) },
    { condition: range(16, 24), target: range(24, 32) },
  ]);
  const plan = planStages(20, { slots: 8, step: 3, mode: "fdm" });
  deepStrictEqual(plan.flatMap((s) => s.target), range(0, 20));
  ok(plan.slice(1).every((s) => s.condition.length === 5 && s.condition.at(-1)! + 1 === s.target[0]));
});

Deno.test("planStages explains impossible plans", () => {
  throws(
    () => planStages(64, { slots: 8, step: 5 }),
    /step must be an integer in 1\.\.4 for 8 slots in "paper" mode/,
  );
  throws(() => planStages(64, { slots: 8, step: 8, mode: "fdm" }), /1\.\.7/);
  throws(() => planStages(0, { slots: 8 }), /depth must be a positive integer/);
  throws(() => planStages(8, { slots: 1 }), /slots must be an integer ≥ 2/);
  throws(() => planStages(8, { slots: 4, mode: "x" as "paper" }), /mode "x"/);
});

/** A fake slice model: ε̂ = 0.3·x + 0.2·Σ(clean slots) per pixel; records each stage's clean input. */
function fakeModel(seen: Array<{ indices: number[]; roles: string[]; clean: Tensor }>) {
  let lastTimestep = Infinity;
  return (x: Tensor, t: number, slots: StageSlots): Tensor => {
    if (t > lastTimestep || seen.length === 0) {
      seen.push({
        indices: [...slots.indices[0]],
        roles: [...slots.roles[0]],
        clean: keep(map("copy", "a", [slots.clean])),
      });
    }
    lastTimestep = t;
    return scope(() => add(mul(x, 0.3), mul(slots.clean, 0.2)));
  };
}

gpuTest(
  "a staged run keeps condition slices exactly as their stage generated them, for every volume",
  async () => {
    const plan = planStages(7, { slots: 4, step: 2 }); // [0,1], [0,1]→[2,3], [2,3]→[4,5], [4,5]→[6]
    const seen: Array<{ indices: number[]; roles: string[]; clean: Tensor }> = [];
    const generated = new Map<number, Float32Array>();
    const volume = await stagedSample(fakeModel(seen), new DDIMScheduler(), {
      volumes: 2,
      sliceShape: [1, 2, 3],
      plan,
      steps: 4,
      seed: 5,
      onStage: async (_, slices) => {
        for (const [z, t] of slices) generated.set(z, await t.toArray());
      },
    });
    deepStrictEqual(volume.shape, [2, 1, 7, 2, 3]);
    const values = await volume.toArray();
    volume.dispose();
    deepStrictEqual([...generated.keys()].sort(), range(0, 7));
    // Slice z of volume b in the result is bit for bit what its stage produced.
    for (let b = 0; b < 2; b++) {
      for (let z = 0; z < 7; z++) {
        const start = (b * 7 + z) * 6;
        deepStrictEqual(
          [...values.slice(start, start + 6)],
          [...generated.get(z)!.slice(b * 6, b * 6 + 6)],
          `(${b}, ${z})`,
        );
      }
    }
    // Each stage saw its condition slices exactly as generated, and zeros in its target slots.
    deepStrictEqual(seen.length, plan.length);
    for (const [s, stage] of plan.entries()) {
      const { indices, roles, clean } = seen[s];
      deepStrictEqual(indices, [...stage.condition, ...stage.target]);
      const c = await clean.toArray();
      clean.dispose();
      const slots = indices.length;
      indices.forEach((z, i) => {
        for (let b = 0; b < 2; b++) {
          const got = [...c.slice((b * slots + i) * 6, (b * slots + i + 1) * 6)];
          const want = roles[i] === "condition"
            ? [...generated.get(z)!.slice(b * 6, b * 6 + 6)]
            : new Array(6).fill(0);
          deepStrictEqual(got, want, `stage ${s + 1}, slice ${z}, volume ${b}`);
        }
      });
    }
    // Stages draw different noise: the two volumes and the first two slices differ.
    ok(values.slice(0, 6).some((v, i) => v !== values[42 + i]), "the two volumes are identical");
  },
);

gpuTest(
  "stagedSample with a SliceDiffusionUNet builds a volume of the requested depth, progress by stage and step",
  async () => {
    const net = new SliceDiffusionUNet({
      channels: [8, 16],
      attentionLevels: [false, true],
      numHeadChannels: 8,
      normNumGroups: 4,
    });
    loadRandom(net, 3, 0.3);
    net.eval();
    const events: string[] = [];
    const plan = planStages(5, { slots: 4, step: 2 });
    const volume = await stagedSample(
      (x, t, slots) => net.forward(x, t, { slices: slots }),
      new DDPMScheduler({ predictionType: "v_prediction" }),
      {
        volumes: 1,
        sliceShape: [1, 4, 4],
        plan,
        steps: 3,
        onProgress: (p) => events.push(`${p.stage}/${p.stages}:${p.step}/${p.steps}`),
      },
    );
    deepStrictEqual(volume.shape, [1, 1, 5, 4, 4]);
    const values = await volume.toArray();
    volume.dispose();
    ok(values.every(Number.isFinite) && values.some((v) => v !== 0));
    deepStrictEqual(events, [
      "1/3:1/3",
      "1/3:2/3",
      "1/3:3/3",
      "2/3:1/3",
      "2/3:2/3",
      "2/3:3/3",
      "3/3:1/3",
      "3/3:2/3",
      "3/3:3/3",
    ]);
    // Any scheduler: Euler ancestral scales the model input and starts from σ_max-scaled noise.
    const euler = await stagedSample(
      (x, t, slots) => net.forward(x, t, { slices: slots }),
      new EulerAncestralScheduler({ predictionType: "v_prediction" }),
      { volumes: 2, sliceShape: [1, 4, 4], plan, steps: 2 },
    );
    deepStrictEqual(euler.shape, [2, 1, 5, 4, 4]);
    ok((await euler.toArray()).every(Number.isFinite));
    euler.dispose();
    net.dispose();
  },
);

gpuTest("stagedSample rejects plans that do not build the volume, and stops when aborted", async () => {
  const bad: Stage[][] = [
    [{ condition: [], target: [0, 1] }, { condition: [3], target: [2] }],
    [{ condition: [], target: [0, 1] }, { condition: [0], target: [1] }],
    [{ condition: [], target: [0, 2] }],
  ];
  const model = (x: Tensor) => noGrad(() => mul(x, 0.5));
  const opts = { volumes: 1, sliceShape: [1, 2, 2] as const, steps: 2 };
  await rejects(
    stagedSample(model, new DDIMScheduler(), { ...opts, plan: bad[0] }),
    /conditioned on slice 3, not generated before/,
  );
  await rejects(
    stagedSample(model, new DDIMScheduler(), { ...opts, plan: bad[1] }),
    /slice 1 is generated twice/,
  );
  await rejects(
    stagedSample(model, new DDIMScheduler(), { ...opts, plan: bad[2] }),
    /never generates slice 1/,
  );
  const controller = new AbortController();
  await rejects(
    stagedSample(model, new DDIMScheduler(), {
      ...opts,
      plan: planStages(6, { slots: 4 }),
      onStage: (stage) => {
        if (stage === 1) controller.abort();
      },
      signal: controller.signal,
    }),
    /cancelled/,
  );
});
