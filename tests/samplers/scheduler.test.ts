import * as V from "../../mod.ts";
import { makeSchedule, type ScheduleName } from "../../samplers/schedule.ts";
import {
  DDIMScheduler,
  DDPMScheduler,
  EulerAncestralScheduler,
  type PredictionType,
  type Scheduler,
} from "../../samplers/scheduler.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, throws } from "node:assert";

interface Case {
  kind: "ddpm" | "ddim";
  schedule: ScheduleName;
  prediction: PredictionType;
  clip: boolean;
  steps: number;
  timesteps: number[];
  t: number;
  eta: number;
  sample: number[];
  model_output: number[];
  noise: number[] | null;
  prev_sample: number[];
  pred_original_sample: number[];
}
interface Fixture {
  shape: number[];
  T: number;
  schedules: Record<
    string,
    { args: { beta_start?: number; beta_end?: number }; alphas_cumprod: number[]; betas: number[] }
  >;
  cases: Case[];
  inversion: {
    t: number;
    steps: number;
    sample: number[];
    model_output: number[];
    post_sample: number[];
    pred_original_sample: number[];
  };
  forward: { timesteps: number[]; x0: number[]; noise: number[]; noisy: number[]; velocity: number[] };
}

const fixture: Fixture = JSON.parse(
  await Deno.readTextFile(new URL("../fixtures/monai_schedulers.json", import.meta.url)),
);

function scheduleArgs(name: string) {
  const a = fixture.schedules[name].args;
  return { schedule: name as ScheduleName, betaStart: a.beta_start, betaEnd: a.beta_end };
}

Deno.test("β schedules and ᾱ match MONAI's float32 values", () => {
  for (const [name, s] of Object.entries(fixture.schedules)) {
    const ours = makeSchedule({ numTrainTimesteps: fixture.T, ...scheduleArgs(name) });
    // MONAI computes in float32; we emulate its roundings. 2e-6 relative allows a last-bit difference
    // in torch's float32 linspace/cos to accumulate through the 1000-term cumulative product.
    // β = 1 − ᾱ_t/ᾱ_{t−1} cancels for the cosine schedule: a 1-ulp difference in torch's f32 cos shows
    // as up to 3e-7 absolute (2.5 ulp of 1.0), so betas get an absolute tolerance of 3.6e-7 (3 ulp).
    assertClose(ours.betas, s.betas, { rtol: 2e-6, atol: 3.6e-7, name: `${name} betas` });
    assertClose(ours.alphasCumprod, s.alphas_cumprod, {
      rtol: 2e-5,
      atol: 1e-8,
      name: `${name} alphas_cumprod`,
    });
  }
});

gpuTest("DDPM and DDIM steps match MONAI for every schedule, prediction type, clipping and η", async () => {
  const shape = fixture.shape;
  for (const c of fixture.cases) {
    const opts = {
      numTrainTimesteps: fixture.T,
      ...scheduleArgs(c.schedule),
      predictionType: c.prediction,
      clipSample: c.clip,
    };
    const s: Scheduler = c.kind === "ddpm" ? new DDPMScheduler(opts) : new DDIMScheduler(opts);
    s.setTimesteps(c.steps);
    deepStrictEqual(s.timesteps.slice(0, 5), c.timesteps, `${c.kind} timesteps`);
    const x = V.tensor(c.sample, shape);
    const out = V.tensor(c.model_output, shape);
    const noise = c.noise ? V.tensor(c.noise, shape) : undefined;
    const { prevSample, predOriginalSample } = s.step(out, c.t, x, { eta: c.eta, noise });
    const name = `${c.kind} ${c.schedule} ${c.prediction} clip=${c.clip} t=${c.t} eta=${c.eta}`;
    // f32 arithmetic on both sides; coefficients like 1/√ᾱ at t = 999 (≈ 160) amplify rounding, so the
    // tolerance is relative 1e-4 with an absolute floor scaled to the values (|x| ≲ 200).
    assertClose(await predOriginalSample.toArray(), c.pred_original_sample, {
      rtol: 1e-4,
      atol: 1e-4,
      name: `${name} x0`,
    });
    assertClose(await prevSample.toArray(), c.prev_sample, { rtol: 1e-4, atol: 1e-4, name: `${name} prev` });
    disposeAll(x, out, noise, prevSample, predOriginalSample);
  }
});

gpuTest("DDIM inversion, addNoise and getVelocity match MONAI", async () => {
  const shape = fixture.shape;
  const inv = fixture.inversion;
  const s = new DDIMScheduler({
    numTrainTimesteps: fixture.T,
    ...scheduleArgs("scaled_linear_beta"),
    clipSample: false,
  });
  s.setTimesteps(inv.steps);
  const x = V.tensor(inv.sample, shape);
  const out = V.tensor(inv.model_output, shape);
  const r = s.reversedStep(out, inv.t, x);
  assertClose(await r.prevSample.toArray(), inv.post_sample, {
    rtol: 1e-4,
    atol: 1e-5,
    name: "reversed step",
  });
  const f = fixture.forward;
  const x0 = V.tensor(f.x0, shape);
  const noise = V.tensor(f.noise, shape);
  const noisy = s.addNoise(x0, noise, f.timesteps);
  const v = s.getVelocity(x0, noise, f.timesteps);
  assertClose(await noisy.toArray(), f.noisy, { rtol: 1e-5, atol: 1e-6, name: "addNoise" });
  assertClose(await v.toArray(), f.velocity, { rtol: 1e-5, atol: 1e-6, name: "getVelocity" });
  disposeAll(x, out, r.prevSample, r.predOriginalSample, x0, noise, noisy, v);
});

Deno.test("respaced DDPM: the posterior keeps every marginal of the forward process, for any number of steps", () => {
  // If x_t ~ N(√ᾱ_t·x0, 1−ᾱ_t), the step x_prev = cx0·x0 + cxt·x_t + √variance·z must give
  // x_prev ~ N(√ᾱ_prev·x0, 1−ᾱ_prev): cx0 + cxt·√ᾱ_t = √ᾱ_prev and cxt²(1−ᾱ_t) + variance = 1−ᾱ_prev.
  // MONAI's t−1 step violates this as soon as the chain skips timesteps.
  for (const schedule of ["linear_beta", "scaled_linear_beta", "cosine"] as const) {
    for (const steps of [1000, 50, 7]) {
      const s = new DDPMScheduler({ schedule });
      s.setTimesteps(steps);
      for (const t of s.timesteps) {
        const { prev, cx0, cxt, variance } = s.posterior(t);
        const aT = s.alphaBar(t);
        const aPrev = s.alphaBar(prev);
        const mean = cx0 + cxt * Math.sqrt(aT);
        const v = cxt * cxt * (1 - aT) + (prev >= 0 ? variance : 0);
        // Skipping steps, the coefficients come from ᾱ alone and the identities hold to float64 rounding.
        // Consecutive steps use MONAI's stored f32 β_t, which differs from 1 − ᾱ_t/ᾱ_{t−1} (f32 cumulative
        // product) by up to ~2e-4 relative at small t (β ≈ 1e-4 against ulp(1) ≈ 1.2e-7); the identities then hold to that level.
        const tol = prev === t - 1 ? 2e-4 : 1e-9;
        assertClose([mean, v], [Math.sqrt(aPrev), 1 - aPrev], {
          rtol: tol,
          atol: tol,
          name: `${schedule} ${steps} steps t=${t}`,
        });
      }
    }
  }
});

gpuTest("Euler ancestral: decreasing σ schedule from σ_max to 0, and the last step returns x̂0", async () => {
  const s = new EulerAncestralScheduler({
    schedule: "scaled_linear_beta",
    betaStart: 0.0005,
    betaEnd: 0.0195,
  });
  s.setTimesteps(10);
  deepStrictEqual(s.timesteps.length, 10);
  deepStrictEqual(s.sigmas[10], 0);
  for (let i = 1; i < s.sigmas.length; i++) {
    if (!(s.sigmas[i] < s.sigmas[i - 1])) throw new Error("σ must decrease along the chain");
  }
  const sigmaMax = Math.sqrt((1 - s.schedule.alphasCumprod[999]) / s.schedule.alphasCumprod[999]);
  assertClose([s.sigmas[0]], [sigmaMax], { rtol: 1e-12, name: "σ_max" });
  // The last step goes to σ = 0 with no noise: the result is x̂0 = x − σ·ε.
  const last = s.timesteps[9];
  const x = V.tensor([1, 2], [2]);
  const eps = V.tensor([0.5, -0.5], [2]);
  const { prevSample, predOriginalSample } = s.step(eps, last, x, { seed: 3 });
  const sigma = s.sigmas[9];
  assertClose(await prevSample.toArray(), [1 - sigma * 0.5, 2 + sigma * 0.5], {
    rtol: 1e-6,
    name: "final Euler step",
  });
  disposeAll(x, eps, prevSample, predOriginalSample);
});

Deno.test("bad scheduler options give clear errors", () => {
  throws(
    () => new DDPMScheduler({ schedule: "quadratic" as ScheduleName }),
    /Unknown schedule "quadratic"; accepted: /,
  );
  throws(
    () => new DDPMScheduler({ predictionType: "x" as PredictionType }),
    /predictionType "x" is not supported/,
  );
  throws(
    () => new DDPMScheduler().setTimesteps(0),
    /setTimesteps\(0\): the number of steps must be an integer in 1..1000/,
  );
  throws(
    () => new DDIMScheduler({ stepsOffset: 30 }).setTimesteps(50),
    /stepsOffset 30 must be below T \/\/ steps = 20/,
  );
  deepStrictEqual(new DDIMScheduler({ stepsOffset: 1 }).timesteps[0], 999);
});
