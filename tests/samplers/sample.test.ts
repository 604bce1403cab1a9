import * as V from "../../mod.ts";
import { type Conditioning, type Denoiser, sample, sampleSettings } from "../../samplers/sample.ts";
import { DDIMScheduler, DDPMScheduler, EulerAncestralScheduler } from "../../samplers/scheduler.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, notDeepStrictEqual, rejects } from "node:assert";

/** A toy denoiser: ε̂ = 0.1·x + k, where k is the context's single value (0 when unconditional). */
function toy(kOf: (c: Conditioning) => number): Denoiser {
  return (x, _t, c) => V.add(V.mul(x, 0.1), kOf(c));
}
const shape = [1, 1, 4, 4, 4];

gpuTest("the same seed gives the same sample, another seed another one (DDPM, DDIM η>0, Euler)", async () => {
  const model = toy(() => 0);
  for (
    const make of [() => new DDPMScheduler(), () => new DDIMScheduler(), () => new EulerAncestralScheduler()]
  ) {
    const run = async (seed: number) => {
      const x = await sample(model, make(), { shape, steps: 8, seed, eta: 0.5 });
      const v = await x.toArray();
      x.dispose();
      return [...v];
    };
    const a = await run(1);
    deepStrictEqual(await run(1), a);
    notDeepStrictEqual(await run(2), a);
    if (!a.every(Number.isFinite)) throw new Error("non-finite sample");
  }
});

gpuTest(
  "classifier-free and composable guidance: ε(∅) + Σ wᵢ(ε(cᵢ) − ε(∅)) from one batched forward",
  async () => {
    const ctx = (k: number) => V.tensor([k], [1, 1, 1]);
    const c1 = ctx(0.5);
    const c2 = ctx(0.3);
    const u = ctx(0.1);
    // ε̂ = 0.1·x + k, with k read from each batch item's context: the passes arrive stacked along the batch.
    let calls = 0;
    const model: Denoiser = (x, _t, c) => {
      calls++;
      return V.add(V.mul(x, 0.1), V.reshape(c.context!, [c.context!.shape[0], 1, 1, 1, 1]));
    };
    const opts = { shape, steps: 6, seed: 4 };
    const guided = (conditions: Array<{ context: V.Tensor; weight: number }>) =>
      sample(model, new DDIMScheduler({ clipSample: false }), {
        ...opts,
        guidance: { unconditional: { context: u }, conditions },
      });
    const plain = (k: number) => sample(toy(() => k), new DDIMScheduler({ clipSample: false }), opts);
    // CFG with scale 3: 0.1 + 3·(0.5 − 0.1) = 1.3. Composable 2·c1 − 1·c2: 0.1 + 2·0.4 − 0.2 = 0.7.
    for (
      const [conditions, k] of [[[{ context: c1, weight: 3 }], 1.3], [[{ context: c1, weight: 2 }, {
        context: c2,
        weight: -1,
      }], 0.7]] as const
    ) {
      calls = 0;
      const a = await guided([...conditions]);
      deepStrictEqual(calls, opts.steps, "one forward per step, whatever the number of conditions");
      const b = await plain(k);
      // Both run the same f32 kernels on values that differ only by rounding of the combined constant.
      assertClose(await a.toArray(), await b.toArray(), {
        rtol: 1e-5,
        atol: 1e-5,
        name: `guidance → ε const ${k}`,
      });
      disposeAll(a, b);
    }
    disposeAll(c1, c2, u);
  },
);

gpuTest("inpainting keeps the known region exactly and generates the rest", async () => {
  const n = 64;
  const knownValues = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.5);
  const maskValues = Float32Array.from({ length: n }, (_, i) => (i % 2 === 0 ? 1 : 0));
  const known = V.tensor(knownValues, shape);
  const mask = V.tensor(maskValues, shape);
  for (const scheduler of [new DDPMScheduler(), new EulerAncestralScheduler()]) {
    const x = await sample(toy(() => 0), scheduler, { shape, steps: 10, seed: 5, known, mask });
    const v = await x.toArray();
    for (let i = 0; i < n; i++) {
      if (maskValues[i] === 1 && v[i] !== knownValues[i]) {
        throw new Error(`voxel ${i}: ${v[i]} ≠ known ${knownValues[i]}`);
      }
    }
    if (v.filter((_, i) => maskValues[i] === 0).every((val, i) => val === knownValues[2 * i + 1])) {
      throw new Error("the unknown region was not generated");
    }
    x.dispose();
  }
  disposeAll(known, mask);
});

gpuTest("memory after every sampling step equals memory after the first", async () => {
  const live: number[] = [];
  const x = await sample(toy(() => 0.2), new DDPMScheduler(), {
    shape,
    steps: 30,
    onProgress: (p) => {
      live.push(V.memory().liveBytes);
      if (p.step > p.total) throw new Error("progress past the end");
    },
  });
  deepStrictEqual(live.length, 30);
  if (live.some((b) => b !== live[0])) throw new Error(`live bytes changed across steps: ${live.join(", ")}`);
  await x.toArray();
  x.dispose();
});

gpuTest(
  "steps recorded ahead: same sample, progress in order once finished, cancellation within the lag",
  async () => {
    const run = async (stepsAhead: number) => {
      sampleSettings.stepsAhead = stepsAhead;
      try {
        const steps: number[] = [];
        let recorded = 0;
        const model: Denoiser = (x) => {
          recorded++;
          return V.mul(x, 0.1);
        };
        const x = await sample(model, new DDIMScheduler(), {
          shape,
          steps: 6,
          seed: 3,
          onProgress: (p) => {
            steps.push(p.step);
            // A reported step has been recorded, and at most `stepsAhead` more.
            if (recorded < p.step || recorded > p.step + stepsAhead) {
              throw new Error(`step ${p.step} reported with ${recorded} recorded (ahead ${stepsAhead})`);
            }
          },
        });
        const v = [...await x.toArray()];
        x.dispose();
        deepStrictEqual(steps, [1, 2, 3, 4, 5, 6]);
        // Cancelled when step 2 is reported: nothing past step 2 + stepsAhead is recorded.
        const controller = new AbortController();
        recorded = 0;
        await rejects(
          sample(model, new DDIMScheduler(), {
            shape,
            steps: 6,
            signal: controller.signal,
            onProgress: (p) => p.step === 2 && controller.abort(),
          }),
          /cancelled/,
        );
        if (recorded > 2 + stepsAhead) throw new Error(`${recorded} steps recorded after cancelling at 2`);
        return v;
      } finally {
        sampleSettings.stepsAhead = 1;
      }
    };
    const waiting = await run(0);
    deepStrictEqual(await run(1), waiting);
    deepStrictEqual(await run(3), waiting);
  },
);
