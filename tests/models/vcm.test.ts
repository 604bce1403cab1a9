/**
 * VCM (Ahn et al.): identity at initialisation, the release's head norm, ε/v/x0 conversions against float64,
 * encoder level arithmetic, several conditions with modality latent dropout, and the parameter count of the
 * paper's configuration.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import { noGrad, randn, type Tensor, tensor } from "../../mod.ts";
import {
  encoderDownsamplings,
  epsFromPrediction,
  modulate,
  predictionFromEps,
  VCM,
  type VCMOptions,
} from "../../models/vcm.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

/**
 * Replaces the zero-initialised output convolution of the time U-Net with random weights: at initialisation
 * it outputs zero, which would make γ and β independent of the inputs.
 */
function wakeTimeUNet(vcm: VCM): void {
  const name = "time_unet.out.2.conv.weight";
  const shape = vcm.stateDict().get(name)!.shape;
  const w = randn(shape, { seed: 11 });
  vcm.loadStateDict(new Map([[name, w]]), { strict: false });
  w.dispose();
}

/** A tiny VCM: 1-channel model grid 4³, conditions on an 8³ grid (one halving). */
const TINY: VCMOptions = {
  modelChannels: 1,
  conditionChannels: [1],
  downsamplings: 1,
  encoderChannels: [4, 8],
  encoderResBlocks: 1,
  encoderGroups: 4,
  unet: {
    channels: [8, 16],
    numResBlocks: 1,
    attentionLevels: [false, true],
    numHeadChannels: [0, 8],
    normNumGroups: 4,
  },
  hiddenChannels: 8,
  headChannels: 8,
};

gpuTest("VCM: at initialisation γ = β = 0 and ε' = ε bit for bit", async () => {
  const vcm = new VCM({ ...TINY, seed: 3 });
  const zt = randn([2, 1, 4, 4, 4], { seed: 1 });
  const eps = randn([2, 1, 4, 4, 4], { seed: 2 });
  const cond = randn([2, 1, 8, 8, 8], { seed: 3 });
  const m = noGrad(() => vcm.forward(zt, eps, [cond], [10, 700]));
  ok((await m.gamma.toArray()).every((v) => v === 0));
  ok((await m.beta.toArray()).every((v) => v === 0));
  const out = noGrad(() => modulate(eps, m));
  deepStrictEqual(await out.toArray(), await eps.toArray());
  disposeAll(zt, eps, cond, m.gamma, m.beta, out);
  vcm.dispose();
});

gpuTest(
  "VCM: the release's head (PyTorch init + InstanceNorm) is not the identity: γ has zero mean, unit std",
  async () => {
    const vcm = new VCM({ ...TINY, headNorm: "instance", zeroHead: false });
    wakeTimeUNet(vcm);
    const zt = randn([1, 1, 4, 4, 4], { seed: 1 });
    const eps = randn([1, 1, 4, 4, 4], { seed: 2 });
    const cond = randn([1, 1, 8, 8, 8], { seed: 3 });
    const m = noGrad(() => vcm.forward(zt, eps, [cond], 500));
    for (const t of [m.gamma, m.beta]) {
      const v = await t.toArray();
      const mean = v.reduce((a, b) => a + b, 0) / v.length;
      const variance = v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length;
      ok(Math.abs(mean) < 1e-5, `mean ${mean}`);
      // InstanceNorm's biased variance with eps 1e-5 is σ²/(σ² + 1e-5): 1 within 1e-3 for σ² > 0.01.
      ok(Math.abs(variance - 1) < 1e-3, `variance ${variance}`);
    }
    disposeAll(zt, eps, cond, m.gamma, m.beta);
    vcm.dispose();
  },
);

gpuTest("VCM: v and x0 predictions are modulated in ε space, exactly (against float64)", async () => {
  const shape = [2, 1, 3, 3, 3];
  const n = 54;
  const out = randn(shape, { seed: 4 });
  const x = randn(shape, { seed: 5 });
  const gamma = randn(shape, { seed: 6 });
  const beta = randn(shape, { seed: 7 });
  const alphaBar = [0.93, 0.021];
  const [o, xv, g, b] = await Promise.all([out, x, gamma, beta].map((t) => t.toArray()));
  const f32 = (v: number) => Math.fround(v);
  for (const prediction of ["v_prediction", "sample", "epsilon"] as const) {
    const chain = noGrad(() => {
      const eps = epsFromPrediction(prediction, out, x, alphaBar);
      const mod = modulate(eps, { gamma, beta });
      const back = predictionFromEps(prediction, mod, x, alphaBar);
      const roundTrip = predictionFromEps(prediction, eps, x, alphaBar);
      eps.dispose();
      mod.dispose();
      return { back, roundTrip };
    });
    const [got, trip] = await Promise.all([chain.back.toArray(), chain.roundTrip.toArray()]);
    for (let i = 0; i < n; i++) {
      const ab = alphaBar[Math.floor(i / 27)];
      const sa = f32(Math.sqrt(ab));
      const sb = f32(Math.sqrt(1 - ab));
      let eps: number;
      if (prediction === "v_prediction") eps = sa * o[i] + sb * xv[i];
      else if (prediction === "sample") eps = (xv[i] - sa * o[i]) / sb;
      else eps = o[i];
      const mod = eps * (1 + g[i]) + b[i];
      let want: number;
      if (prediction === "v_prediction") want = (mod - sb * xv[i]) / sa;
      else if (prediction === "sample") want = (xv[i] - sb * mod) / sa;
      else want = mod;
      // float32 rounding of a few operations on values of size |x|/√ᾱ and |x|/√(1−ᾱ) (≤ 7 here).
      const scale = (Math.abs(o[i]) + Math.abs(xv[i]) + Math.abs(mod)) / Math.min(sa, sb);
      ok(Math.abs(got[i] - want) <= 4e-7 * scale, `${prediction} ${i}: ${got[i]} vs ${want}`);
      ok(Math.abs(trip[i] - o[i]) <= 4e-7 * scale, `${prediction} round trip ${i}: ${trip[i]} vs ${o[i]}`);
    }
    disposeAll(chain.back, chain.roundTrip);
  }
  disposeAll(out, x, gamma, beta);
});

gpuTest("VCM: encoder levels follow the grid ratio; the paper's encoder brings 16³ to 2³ (×8)", () => {
  deepStrictEqual(encoderDownsamplings([160, 224, 160], [20, 28, 20]), 3);
  deepStrictEqual(encoderDownsamplings([32, 32, 32], [32, 32, 32]), 0);
  deepStrictEqual(encoderDownsamplings([64, 64, 64], [16, 16, 16]), 2);
  throws(() => encoderDownsamplings([64, 64, 32], [32, 32, 32]), /same power of two along every axis/);
  throws(() => encoderDownsamplings([48, 48, 48], [32, 32, 32]), /same power of two/);
  throws(() => encoderDownsamplings([16, 16, 16], [32, 32, 32]), /same power of two/);
  const vcm = new VCM({
    modelChannels: 3,
    conditionChannels: [1],
    downsamplings: 3,
    unet: { channels: [32, 64], attentionLevels: [false, false], numResBlocks: 1 },
    hiddenChannels: 8,
    headChannels: 8,
  });
  const y = randn([1, 1, 16, 16, 16], { seed: 1 });
  const h = noGrad(() => vcm.encoders[0].forward(y));
  deepStrictEqual(h.shape, [1, 48, 2, 2, 2]);
  disposeAll(y, h);
  vcm.dispose();
});

gpuTest(
  "VCM: parameter count of the paper's configuration (BrainLDM latent 3 channels, 8-class condition)",
  () => {
    // modality encoder [16, 32, 48] × 2 res blocks, 3 halvings; time U-Net [64, 128, 256], attention at the
    // last level (one head of 256) with its output projection (the release's checkpoint holds proj_attn);
    // head 64 → 128 → 3 + 3. ../shared/design/ldm-vcm.md §3.2 counts 45,220,134 (paper: 45.19 M).
    const paper = new VCM({ modelChannels: 3, conditionChannels: [8], downsamplings: 3 });
    deepStrictEqual(paper.numParameters(), 45_220_134);
    const lv = new VCM({ modelChannels: 3, conditionChannels: [1], downsamplings: 3 });
    // The single-mask (lateral ventricle) model: conv_in has 7 × 16 × 27 fewer weights.
    deepStrictEqual(lv.numParameters(), 45_220_134 - 7 * 16 * 27);
    paper.dispose();
    lv.dispose();
  },
);

gpuTest(
  "VCM: several conditions, one encoder each; a dropped latent equals an absent condition",
  async () => {
    const vcm = new VCM({ ...TINY, conditionChannels: [1, 3], zeroHead: false, seed: 5 });
    wakeTimeUNet(vcm);
    ok(vcm.stateDict().has("modality_encoders.1.conv_in.conv.weight"));
    const zt = randn([2, 1, 4, 4, 4], { seed: 1 });
    const eps = randn([2, 1, 4, 4, 4], { seed: 2 });
    const a = randn([2, 1, 8, 8, 8], { seed: 3 });
    const b = randn([2, 3, 8, 8, 8], { seed: 4 });
    const dropped = noGrad(() => vcm.forward(zt, eps, [a, b], [5, 600], { keep: [[1, 1], [0, 0]] }));
    const absent = noGrad(() => vcm.forward(zt, eps, [a, null], [5, 600]));
    const both = noGrad(() => vcm.forward(zt, eps, [a, b], [5, 600]));
    deepStrictEqual(await dropped.gamma.toArray(), await absent.gamma.toArray());
    const g1 = await both.gamma.toArray();
    const g0 = await absent.gamma.toArray();
    ok(g1.some((v, i) => v !== g0[i]), "the second condition changes γ");
    throws(() => vcm.forward(zt, eps, [a], 5), /1 condition\(s\) given; the module has 2 encoder\(s\)/);
    const wrong = tensor(new Float32Array(2 * 3 * 4 * 4 * 4), [2, 3, 4, 4, 4]);
    throws(
      () => vcm.forward(zt, eps, [a, wrong], 5),
      /condition 1 \[2, 3, 4, 4, 4\] must be \[2, 3, 8, 8, 8\]/,
    );
    disposeAll(zt, eps, a, b, wrong, [dropped, absent, both].flatMap((m) => [m.gamma, m.beta]) as Tensor[]);
    vcm.dispose();
  },
);

gpuTest("VCM resize ablation: no encoder, the condition resized trilinearly to the model grid", async () => {
  const vcm = new VCM({ ...TINY, encoder: "resize", zeroHead: false });
  ok(![...vcm.stateDict().keys()].some((k) => k.startsWith("modality_encoder")));
  // time U-Net input: z_t, ε and the 1-channel resized condition.
  deepStrictEqual(vcm.stateDict().get("time_unet.conv_in.conv.weight")!.shape, [8, 3, 3, 3, 3]);
  wakeTimeUNet(vcm);
  const zt = randn([1, 1, 4, 4, 4], { seed: 1 });
  const eps = randn([1, 1, 4, 4, 4], { seed: 2 });
  const cond = randn([1, 1, 8, 8, 8], { seed: 3 });
  const m = noGrad(() => vcm.forward(zt, eps, [cond], 300));
  deepStrictEqual(m.gamma.shape, [1, 1, 4, 4, 4]);
  ok((await m.gamma.toArray()).some((v) => v !== 0));
  disposeAll(zt, eps, cond, m.gamma, m.beta);
  vcm.dispose();
});
