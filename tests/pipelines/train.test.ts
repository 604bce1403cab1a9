import * as V from "../../mod.ts";
import { learningRate, train } from "../../pipelines/train.ts";
import { Module } from "../../nn/module.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, rejects } from "node:assert";

/** ε̂ = w·x + b per voxel: tiny, but it can lower the loss, and all of train's machinery runs. */
class Affine extends Module {
  readonly w = this.param("w", V.tensor([0.1], [1]));
  readonly b = this.param("b", V.tensor([0.3], [1]));
  forward(x: V.Tensor): V.Tensor {
    return V.scope(() => V.add(V.mul(x, this.w), this.b));
  }
}

const data = (step: number) => ({
  x0: V.tensor(Float32Array.from({ length: 2 * 64 }, (_, i) => Math.sin(i + step) * 0.8), [2, 1, 4, 4, 4]),
});

Deno.test("learning rate: linear warm-up, then cosine decay to the minimum", () => {
  deepStrictEqual([learningRate(0, 100, 1, 0.1, 10), learningRate(9, 100, 1, 0.1, 10)], [0.1, 1]);
  assertClose([learningRate(55, 100, 1, 0.1, 10), learningRate(100, 100, 1, 0.1, 10)], [0.55, 0.1], {
    atol: 1e-12,
  });
});

gpuTest(
  "training lowers the loss, writes checkpoint/CSV/plot, and a resumed run equals an uninterrupted one",
  async () => {
    const dir = await Deno.makeTempDir();
    const sched = new DDPMScheduler();
    const losses: number[] = [];
    const full = new Affine();
    const r = await train(full, sched, data, {
      steps: 60,
      lr: 0.05,
      warmupSteps: 5,
      outDir: `${dir}/full`,
      checkpointEvery: 30,
      progress: false,
      onStep: (s) => losses.push(s.loss),
    });
    const first = losses.slice(0, 10).reduce((a, b) => a + b) / 10;
    const last = losses.slice(-10).reduce((a, b) => a + b) / 10;
    if (!(last < 0.8 * first)) throw new Error(`loss did not fall: first 10 steps ${first}, last 10 ${last}`);
    deepStrictEqual(r.step, 60);
    for (
      const f of [
        "checkpoint/model.safetensors",
        "checkpoint/ema.safetensors",
        "checkpoint/optimizer.safetensors",
        "checkpoint/meta.json",
        "loss.csv",
        "loss.png",
      ]
    ) {
      await Deno.stat(`${dir}/full/${f}`);
    }
    deepStrictEqual((await Deno.readTextFile(`${dir}/full/loss.csv`)).trim().split("\n").length, 61);

    // A 60-step run interrupted after step 31 (its last checkpoint is step 30), then resumed: the same
    // weights as the uninterrupted run.
    const part = new Affine();
    await rejects(
      () =>
        train(part, sched, data, {
          steps: 60,
          lr: 0.05,
          warmupSteps: 5,
          outDir: `${dir}/part`,
          checkpointEvery: 30,
          progress: false,
          onStep: (s) => {
            if (s.step === 31) throw new Error("interrupted");
          },
        }),
      /interrupted/,
    );
    const resumed = new Affine();
    const steps: number[] = [];
    await train(resumed, sched, data, {
      steps: 60,
      lr: 0.05,
      warmupSteps: 5,
      outDir: `${dir}/part`,
      progress: false,
      onStep: (s) => steps.push(s.step),
    });
    deepStrictEqual([steps[0], steps.length], [31, 30]);
    for (const [name, t] of full.namedParameters()) {
      const other = resumed.namedParameters().find(([n]) => n === name)![1];
      assertClose(await other.toArray(), await t.toArray(), {
        rtol: 1e-6,
        atol: 1e-7,
        name: `resumed ${name}`,
      });
    }
    // Nothing is left half-written: only complete files in the checkpoint folder.
    deepStrictEqual([...Deno.readDirSync(`${dir}/part/checkpoint`)].map((e) => e.name).sort(), [
      "ema.safetensors",
      "meta.json",
      "model.safetensors",
      "optimizer.safetensors",
    ]);
    await rejects(
      () => train(full, sched, data, { steps: 0, outDir: dir }),
      /steps must be a positive integer/,
    );
    for (const m of [full, part, resumed]) m.dispose();
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "trainableOnly: EMA and checkpoints hold only the trainable parameters, and resuming works with them",
  async () => {
    const dir = await Deno.makeTempDir();
    const sched = new DDPMScheduler();
    // b is frozen (the "base model"), w trains (the "adapter").
    const frozenB = (m: Affine) => m.freeze((name) => name === "b");
    const opts = { steps: 12, lr: 0.05, warmupSteps: 2, checkpointEvery: 6, progress: false };
    const full = frozenB(new Affine());
    await train(full, sched, data, { ...opts, outDir: `${dir}/full`, trainableOnly: true });
    for (const file of ["model", "ema"]) {
      const state = await V.loadSafetensors(`${dir}/full/checkpoint/${file}.safetensors`);
      deepStrictEqual([...state.keys()], ["w"]);
      for (const t of state.values()) t.dispose();
    }
    deepStrictEqual(await full.b.toArray(), Float32Array.of(0.3));

    // Interrupted after step 7 (checkpoint at 6), resumed on a model with the same frozen b: equal weights.
    const part = frozenB(new Affine());
    await rejects(
      () =>
        train(part, sched, data, {
          ...opts,
          outDir: `${dir}/part`,
          trainableOnly: true,
          onStep: (s) => {
            if (s.step === 7) throw new Error("interrupted");
          },
        }),
      /interrupted/,
    );
    const resumed = frozenB(new Affine());
    const steps: number[] = [];
    await train(resumed, sched, data, {
      ...opts,
      outDir: `${dir}/part`,
      trainableOnly: true,
      onStep: (s) => steps.push(s.step),
    });
    deepStrictEqual([steps[0], steps.length], [7, 6]);
    // Same arithmetic in the same order on the same device: equal up to f32 rounding.
    assertClose(await resumed.w.toArray(), await full.w.toArray(), { rtol: 1e-6, atol: 1e-7, name: "w" });

    // A checkpoint of trainable parameters only cannot resume a run that keeps all of them.
    const other = frozenB(new Affine());
    await rejects(
      () => train(other, sched, data, { ...opts, steps: 20, outDir: `${dir}/part` }),
      /holds trainable parameters but this run keeps all/,
    );
    for (const m of [full, part, resumed, other]) m.dispose();
    await Deno.remove(dir, { recursive: true });
  },
);
