/**
 * PatchDiscriminator and PatchAdversarialLoss against MONAI's own (fixtures from
 * tests/fixtures/make_monai_autoencoder_fixtures.py), and the autoencoder losses (KL, L1/L2, generator and
 * discriminator losses, warm-up) against float64 references, with their gradients.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import { grad, noGrad, tensor } from "../../mod.ts";
import { discriminatorOptionsFromMonai, leakyRelu, PatchDiscriminator } from "../../models/discriminator.ts";
import {
  adversarialActive,
  discriminatorLoss,
  generatorLoss,
  klLoss,
  patchAdversarialLoss,
  reconstructionLoss,
  resolveLossWeights,
} from "../../pipelines/autoencoder_losses.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { disposeModelFixture, loadModelFixture, relError } from "../helpers/model_fixtures.ts";

// Same reasoning as the autoencoder fixtures: float64 truth for float32 data, a few conv layers deep.
const TOLERANCE = 2e-5;

for (const name of ["3d_instance", "2d_instance"]) {
  gpuTest(`PatchDiscriminator matches MONAI: ${name} (every intermediate; adversarial losses)`, async () => {
    const f = await loadModelFixture(`monai_discriminator_${name}`);
    const model = new PatchDiscriminator(discriminatorOptionsFromMonai(f.config)).eval();
    deepStrictEqual([...model.stateDict().keys()].sort(), [...f.state.keys()].sort());
    model.loadStateDict(f.state);
    const outs = noGrad(() => model.forward(f.inputs.get("x")!));
    deepStrictEqual(outs.length, f.config.num_layers_d as number + 2);
    for (const [i, o] of outs.entries()) {
      const err = relError(await o.toArray(), f.values.get(`out.${i}`)!);
      ok(err <= TOLERANCE, `${name} output ${i}: ${err.toExponential(2)}`);
    }
    const logits = outs[outs.length - 1];
    const cases = [
      ["loss_real", { targetIsReal: true, forDiscriminator: true }],
      ["loss_fake", { targetIsReal: false, forDiscriminator: true }],
      ["loss_generator", { targetIsReal: false, forDiscriminator: false }], // MONAI forces "real" here too
    ] as const;
    for (const [key, opts] of cases) {
      const loss = noGrad(() => patchAdversarialLoss(logits, opts));
      const [got] = await loss.toArray();
      const want = f.values.get(key)![0];
      ok(Math.abs(got - want) <= 1e-5 * Math.abs(want), `${name} ${key}: ${got} vs MONAI ${want}`);
      loss.dispose();
    }
    disposeAll(outs);
    model.dispose();
    disposeModelFixture(f);
  });
}

gpuTest("PatchDiscriminator: MONAI's init (N(0, 0.02) weights, zero biases) and clear errors", async () => {
  const d = new PatchDiscriminator({ spatialDims: 3, channels: 8, inChannels: 1, numLayersD: 2, seed: 3 });
  const w = await d.stateDict().get("0.conv.weight")!.toArray();
  const m = w.reduce((a, v) => a + v, 0) / w.length;
  const sd = Math.sqrt(w.reduce((a, v) => a + (v - m) ** 2, 0) / w.length);
  ok(Math.abs(m) < 0.002 && Math.abs(sd - 0.02) < 0.002, `mean ${m}, std ${sd} (n = ${w.length})`);
  deepStrictEqual([...await d.stateDict().get("initial_conv.conv.bias")!.toArray()], new Array(8).fill(0));
  ok(!d.stateDict().has("0.conv.bias"), "middle layers have no bias by default");
  throws(
    () => new PatchDiscriminator({ spatialDims: 3, channels: 8, inChannels: 1, norm: "BATCH" }),
    /running/,
  );
  const x = tensor(new Float32Array(2 * 8 * 8), [1, 2, 8, 8]);
  throws(() => d.forward(x), /3 spatial axes and 1 channels/);
  x.dispose();
  deepStrictEqual([16, 15, 8].map((n) => d.outputSize(n)), [2, 1, 0]); // 16 → 8 → 4 → 3 → 2
  const small = tensor(new Float32Array(8 ** 3), [1, 1, 8, 8, 8]);
  throws(() => d.forward(small), /too small for 2 layers: every spatial axis needs at least 12 voxels/);
  small.dispose();
  d.dispose();
});

/** Float64 KL as MONAI's tutorial: ½ Σ (μ² + σ² − ln σ² − 1) / B. */
function klRef(mu: Float64Array, sigma: Float64Array, batch: number): number {
  let s = 0;
  for (let i = 0; i < mu.length; i++) s += mu[i] ** 2 + sigma[i] ** 2 - Math.log(sigma[i] ** 2) - 1;
  return 0.5 * s / batch;
}

gpuTest(
  "klLoss: sum over channels and voxels, mean over the batch (float64 reference), and its gradients",
  async () => {
    const shape = [2, 3, 2, 2, 2];
    const n = 48;
    const muV = Float64Array.from({ length: n }, (_, i) => Math.fround(Math.sin(i * 0.9) * 1.5));
    const sigV = Float64Array.from({ length: n }, (_, i) => Math.fround(Math.exp(Math.cos(i * 1.3))));
    const mu = tensor(Float32Array.from(muV), shape, { requiresGrad: true });
    const sigma = tensor(Float32Array.from(sigV), shape, { requiresGrad: true });
    const kl = klLoss(mu, sigma);
    const [got] = await kl.toArray();
    const want = klRef(muV, sigV, 2);
    ok(Math.abs(got - want) <= 1e-5 * want, `KL ${got} vs ${want}`);
    // A sum over voxels: the gradient per element is 1/B, not 1/(B·voxels).
    const [dmu, dsig] = grad(kl, [mu, sigma]);
    const gm = await dmu.toArray();
    const gs = await dsig.toArray();
    for (let i = 0; i < n; i++) {
      // ∂/∂μ = μ / B; ∂/∂σ = (σ − 1/σ) / B.
      ok(Math.abs(gm[i] - muV[i] / 2) <= 1e-6 + 1e-5 * Math.abs(muV[i]), `dμ[${i}]`);
      const e = (sigV[i] - 1 / sigV[i]) / 2;
      ok(Math.abs(gs[i] - e) <= 1e-6 + 1e-5 * Math.abs(e), `dσ[${i}] ${gs[i]} vs ${e}`);
    }
    disposeAll(mu, sigma, kl, dmu, dsig);
  },
);

gpuTest(
  "reconstruction, adversarial, generator and discriminator losses against float64; warm-up",
  async () => {
    const n = 32;
    const a = Float64Array.from({ length: n }, (_, i) => Math.fround(Math.sin(i)));
    const b = Float64Array.from({ length: n }, (_, i) => Math.fround(Math.cos(i * 0.7)));
    const x = tensor(Float32Array.from(a), [1, 2, 4, 4]);
    const y = tensor(Float32Array.from(b), [1, 2, 4, 4]);
    const l1 = a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / n;
    const l2 = a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / n;
    const close = async (t: ReturnType<typeof tensor>, want: number, what: string) => {
      const [got] = await t.toArray();
      ok(Math.abs(got - want) <= 1e-6 * Math.max(1, Math.abs(want)), `${what}: ${got} vs ${want}`);
      t.dispose();
    };
    await close(reconstructionLoss(x, y), l1, "L1");
    await close(reconstructionLoss(x, y, "l2"), l2, "L2");
    const leaky = (v: number) => (v >= 0 ? v : 0.05 * v);
    const lsq = (t: number) => a.reduce((s, v) => s + (leaky(v) - t) ** 2, 0) / n;
    await close(patchAdversarialLoss(x, { targetIsReal: true, forDiscriminator: true }), lsq(1), "real");
    await close(patchAdversarialLoss(x, { targetIsReal: false, forDiscriminator: true }), lsq(0), "fake");
    await close(
      patchAdversarialLoss(x, { targetIsReal: false, forDiscriminator: false }),
      lsq(1),
      "generator",
    );
    await close(
      discriminatorLoss(x, y, 0.01),
      0.01 * 0.5 * (lsq(0) + b.reduce((s, v) => s + (leaky(v) - 1) ** 2, 0) / n),
      "D",
    );
    const lr = leakyRelu(x, 0.2);
    const lv = await lr.toArray();
    ok(lv.every((v, i) => Math.abs(v - (a[i] >= 0 ? a[i] : 0.2 * a[i])) < 1e-7), "leakyRelu");
    lr.dispose();
    // Generator loss: L1 + w_kl·KL + w_adv·G (perceptual through the hook).
    const w = resolveLossWeights({ kl: 0.5, adversarial: 0.1, perceptual: 2 });
    const mu = tensor(Float32Array.from(b.slice(0, 8)), [1, 1, 2, 4]);
    const sigma = tensor(new Float32Array(8).fill(0.5), [1, 1, 2, 4]);
    const kl = klRef(b.slice(0, 8), new Float64Array(8).fill(0.5), 1);
    const perc = (r: ReturnType<typeof tensor>, t: ReturnType<typeof tensor>) =>
      reconstructionLoss(r, t, "l2");
    const parts = generatorLoss({ reconstruction: x, target: y, mu, sigma, fakeLogits: x }, w, perc);
    await close(parts.total, l1 + 0.5 * kl + 2 * l2 + 0.1 * lsq(1), "generator total");
    disposeAll(parts.reconstruction, parts.kl, parts.perceptual, parts.adversarial);
    const noAdv = generatorLoss({ reconstruction: x, target: y, mu, sigma }, w);
    ok(noAdv.adversarial === undefined && noAdv.perceptual === undefined, "no adversarial before warm-up");
    await close(noAdv.total, l1 + 0.5 * kl, "generator, warm-up");
    disposeAll(noAdv.reconstruction, noAdv.kl);
    ok(!adversarialActive(4, 5, 0.01) && adversarialActive(5, 5, 0.01) && !adversarialActive(9, 5, 0));
    throws(() => resolveLossWeights({ kl: -1 }), /kl must be a finite number ≥ 0/);
    throws(() => reconstructionLoss(x, mu), /must be equal/);
    disposeAll(x, y, mu, sigma);
  },
);
