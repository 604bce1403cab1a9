import * as V from "../../mod.ts";
import {
  changedSettings,
  emaDecayAt,
  learningRate,
  ResumeMismatchError,
  train,
} from "../../pipelines/train.ts";
import { portablePath } from "../../cli/options.ts";
import { loadSafetensors } from "../../io/safetensors.ts";
import { Module } from "../../nn/module.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, ok, rejects } from "node:assert";

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

Deno.test("EMA decay: warmed up as min(decay, (1 + t) / (10 + t)) at optimizer step t", () => {
  deepStrictEqual(
    [emaDecayAt(0.999, 1), emaDecayAt(0.999, 80), emaDecayAt(0.99, 1000), emaDecayAt(0.5, 1)],
    [2 / 11, 0.9, 0.99, 2 / 11],
  );
});

/** The tensors of a safetensors file as arrays, by name. */
async function readState(path: string): Promise<Map<string, Float32Array>> {
  const state = await loadSafetensors(path);
  const out = new Map<string, Float32Array>();
  for (const [name, t] of state) {
    out.set(name, await t.toArray());
    t.dispose();
  }
  return out;
}

/** Runs `fn` with console.error captured; returns what it printed. */
async function captureErrors(fn: () => Promise<unknown>): Promise<string> {
  const { error } = console;
  let printed = "";
  console.error = (...parts: unknown[]) => void (printed += `${parts.join(" ")}\n`);
  try {
    await fn();
  } finally {
    console.error = error;
  }
  return printed;
}

gpuTest("EMA after one step: the warm-up decay 2/11, not the nominal 0.999", async () => {
  const dir = await Deno.makeTempDir();
  const model = new Affine();
  const initial = { w: 0.1, b: 0.3 };
  await train(model, new DDPMScheduler(), data, {
    steps: 1,
    lr: 0.05,
    warmupSteps: 1,
    emaDecay: 0.999,
    outDir: dir,
    progress: false,
  });
  const ema = await readState(`${dir}/checkpoint/ema.safetensors`);
  const decay = emaDecayAt(0.999, 1); // 2/11
  for (const name of ["w", "b"] as const) {
    const trained = (await model[name].toArray())[0];
    const averaged = ema.get(name)![0];
    // One f32 multiply-add of values of magnitude < 1: a few ulps.
    assertClose([averaged], [decay * initial[name] + (1 - decay) * trained], { atol: 1e-7, name });
    const moved = (averaged - initial[name]) / (trained - initial[name]);
    ok(moved >= 0.5, `EMA ${name} moved ${moved} of the way to the trained weight (a fixed 0.999: 0.001)`);
  }
  model.dispose();
  await Deno.remove(dir, { recursive: true });
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
    // The EMA weights too: the warm-up decay depends only on the step, which the checkpoint holds.
    const fullEma = await readState(`${dir}/full/checkpoint/ema.safetensors`);
    const resumedEma = await readState(`${dir}/part/checkpoint/ema.safetensors`);
    for (const [name, values] of fullEma) {
      assertClose(resumedEma.get(name)!, values, { rtol: 1e-6, atol: 1e-7, name: `resumed EMA ${name}` });
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
      const state = await loadSafetensors(`${dir}/full/checkpoint/${file}.safetensors`);
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

gpuTest(
  "resuming refuses changed settings, accepts more steps, and warns on checkpoints without settings",
  async () => {
    const dir = await Deno.makeTempDir();
    const sched = new DDPMScheduler();
    const opts = {
      lr: 0.05,
      warmupSteps: 1,
      outDir: dir,
      checkpointEvery: 2,
      progress: false,
      settings: { data: ["a.nii.gz"], size: 4 },
    };
    const model = new Affine();
    await train(model, sched, data, { ...opts, steps: 2 });
    const meta = JSON.parse(await Deno.readTextFile(`${dir}/checkpoint/meta.json`));
    deepStrictEqual(
      [meta.settings.lr, meta.settings.emaDecay, meta.settings.data, meta.settings.predictionType],
      [0.05, 0.999, ["a.nii.gz"], "epsilon"],
    );
    ok(!("steps" in meta.settings), JSON.stringify(meta.settings));

    // Another learning rate, or other data, is refused with each change named; nothing is trained.
    const refused = await train(model, sched, data, { ...opts, steps: 4, lr: 0.01 }).catch((e) => e);
    ok(refused instanceof ResumeMismatchError, String(refused));
    deepStrictEqual(refused.changes, [{ name: "lr", checkpoint: 0.05, now: 0.01 }]);
    ok(/lr: 0\.05 in the checkpoint, 0\.01 now/.test(refused.message), refused.message);
    ok(refused.message.includes(`delete ${dir}/checkpoint`), refused.message);
    await rejects(
      () => train(model, sched, data, { ...opts, steps: 4, emaDecay: 0.9, settings: { data: ["b.nii.gz"] } }),
      /emaDecay: 0\.999 in the checkpoint, 0\.9 now\n {2}data: \["a\.nii\.gz"\] in the checkpoint, \["b\.nii\.gz"\] now\n {2}size: 4 in the checkpoint, unset now/,
    );
    // Fewer steps than the checkpoint's would return its weights as if they were the shorter run's.
    await rejects(() => train(model, sched, data, { ...opts, steps: 1 }), /is at step 2, past steps 1/);

    // The same settings with more steps continue the run.
    const steps: number[] = [];
    await train(model, sched, data, { ...opts, steps: 4, onStep: (s) => steps.push(s.step) });
    deepStrictEqual(steps, [3, 4]);

    // A checkpoint from before settings were recorded resumes, with one warning, and records them from then on.
    const old = JSON.parse(await Deno.readTextFile(`${dir}/checkpoint/meta.json`));
    delete old.settings;
    await Deno.writeTextFile(`${dir}/checkpoint/meta.json`, JSON.stringify(old));
    const warned = await captureErrors(() => train(model, sched, data, { ...opts, steps: 6 }));
    deepStrictEqual(warned.match(/warning: .*predates recorded settings/g)?.length, 1, warned);
    ok(JSON.parse(await Deno.readTextFile(`${dir}/checkpoint/meta.json`)).settings, "settings recorded");
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "progress off a terminal: plain lines on the first and the last step, no carriage returns",
  async () => {
    const dir = await Deno.makeTempDir();
    const model = new Affine();
    // progressEvery of an hour: only the first and the last of the 3 steps print (the format is tested in
    // tests/cli/progress.test.ts with a fake clock).
    const printed = await captureErrors(() =>
      train(model, new DDPMScheduler(), data, { steps: 3, outDir: dir, progress: "log", progressEvery: 3600 })
    );
    const lines = printed.trim().split("\n");
    deepStrictEqual(lines.map((l) => l.match(/^step (\d)\/3 /)?.[1]), ["1", "3"], printed);
    ok(lines.every((l) => / loss \d\.\d{4} \(avg \d\.\d{4}\), .* ETA /.test(l)), printed);
    ok(!printed.includes("\r"), JSON.stringify(printed));
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
);

Deno.test("runs record files relative to the working directory; absolute paths of older checkpoints still match", async () => {
  const cwd = Deno.cwd();
  const file = await Deno.makeTempFile({ dir: cwd, suffix: ".nii.gz" });
  try {
    const name = file.slice(file.lastIndexOf("/") + 1);
    deepStrictEqual(await portablePath(file), name);
    deepStrictEqual(await portablePath(`./${name}`), name);
    // A checkpoint written with absolute paths resumes with the same files given relatively …
    deepStrictEqual(
      changedSettings({ data: [`${cwd}/${name}`], init: null }, { data: [name], init: null }),
      [],
    );
    deepStrictEqual(changedSettings({ data: `${cwd}/../x/a.nii` }, { data: "../x/a.nii" }), []);
    // … and other files are still a change.
    deepStrictEqual(changedSettings({ data: [`${cwd}/other.nii`] }, { data: [name] }), [
      { name: "data", checkpoint: [`${cwd}/other.nii`], now: [name] },
    ]);
  } finally {
    await Deno.remove(file);
  }
});
