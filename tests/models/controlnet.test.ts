/**
 * ControlNet against MONAI's own ControlNet: the fixtures (tests/fixtures/make_monai_controlnet_fixtures.py)
 * hold a ControlNet and a U-Net with random (non-zero) weights, the inputs, MONAI's residuals and the U-Net's
 * output with them (end to end).
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import { noGrad, type Tensor, tensor } from "../../mod.ts";
import { loadSafetensors, parseSafetensors } from "../../io/safetensors.ts";
import { ControlNet, controlNetOptionsFromMonai } from "../../models/controlnet.ts";
import { DiffusionModelUNet, unetOptionsFromMonai } from "../../models/unet.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

interface Fixture {
  config: Record<string, unknown>;
  scale: number;
  controlnet: Map<string, Tensor>;
  unet: Map<string, Tensor>;
  inputs: Map<string, Tensor>;
  values: Map<string, Float32Array>;
}

async function loadFixture(name: string): Promise<Fixture> {
  const bytes = await Deno.readFile(
    new URL(`../fixtures/monai_controlnet_${name}.safetensors`, import.meta.url),
  );
  const { metadata, tensors: raw } = parseSafetensors(bytes, name);
  const all = await loadSafetensors(bytes);
  const part = (prefix: string) =>
    new Map([...all].filter(([k]) => k.startsWith(prefix)).map(([k, t]) => [k.slice(prefix.length), t]));
  return {
    config: JSON.parse(metadata.config),
    scale: Number(metadata.conditioning_scale),
    controlnet: part("controlnet."),
    unet: part("unet."),
    inputs: part("fixture."),
    values: new Map(
      [...raw].filter(([k]) => k.startsWith("fixture.")).map((
        [k, v],
      ) => [k.slice(8), v.data as Float32Array]),
    ),
  };
}

function disposeFixture(f: Fixture): void {
  disposeAll([...f.controlnet.values()], [...f.unet.values()], [...f.inputs.values()]);
}

/** max |a − e| / RMS(e). */
function relError(actual: Float32Array, expected: Float32Array): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs ${expected.length}`);
  let worst = 0;
  let sq = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    sq += expected[i] * expected[i];
  }
  return worst / Math.sqrt(sq / expected.length);
}

// Same tolerance and reasoning as the U-Net's fixtures (tests/models/unet.test.ts): the stored outputs are
// float64 answers for the stored float32 weights; float32 rounding through ~30 layers stays a few 1e-6 of the
// RMS, while a wrong name, layout or formula moves the output by far more.
const TOLERANCE = 2e-5;

function unetFor(f: Fixture): DiffusionModelUNet {
  const { conditioning_embedding_in_channels: _a, conditioning_embedding_num_channels: _b, ...rest } =
    f.config;
  const unet = new DiffusionModelUNet(unetOptionsFromMonai({ ...rest, out_channels: 1 })).eval();
  unet.loadStateDict(f.unet);
  return unet;
}

for (const name of ["3d_attn", "2d_cross_updown"]) {
  gpuTest(`ControlNet matches MONAI end to end (ControlNet → U-Net): ${name}`, async () => {
    const f = await loadFixture(name);
    const controlnet = new ControlNet(controlNetOptionsFromMonai(f.config)).eval();
    const report = controlnet.loadStateDict(f.controlnet);
    deepStrictEqual(report.loaded.length, f.controlnet.size);
    const unet = unetFor(f);
    const x = f.inputs.get("x")!;
    const t = f.inputs.get("timesteps")!;
    const cond = { context: f.inputs.get("context"), classLabels: f.inputs.get("class_labels") };
    const residuals = noGrad(() =>
      controlnet.forward(x, t, f.inputs.get("cond")!, { conditioningScale: f.scale, ...cond })
    );
    const down = residuals.downBlockAdditionalResiduals;
    deepStrictEqual(down.length, [...f.values.keys()].filter((k) => k.startsWith("down_residual.")).length);
    for (const [i, r] of down.entries()) {
      const err = relError(await r.toArray(), f.values.get(`down_residual.${i}`)!);
      ok(err <= TOLERANCE, `${name}: residual ${i} max error ${err.toExponential(2)} of its RMS`);
    }
    const midErr = relError(
      await residuals.midBlockAdditionalResidual.toArray(),
      f.values.get("mid_residual")!,
    );
    ok(midErr <= TOLERANCE, `${name}: mid residual max error ${midErr.toExponential(2)}`);
    const y = noGrad(() => unet.forward(x, t, { ...cond, ...residuals }));
    const err = relError(await y.toArray(), f.values.get("output")!);
    ok(err <= TOLERANCE, `${name}: U-Net + ControlNet output max error ${err.toExponential(2)} of its RMS`);
    disposeAll(y, down, residuals.midBlockAdditionalResidual);
    controlnet.dispose();
    unet.dispose();
    disposeFixture(f);
  });
}

gpuTest(
  "ControlNet.fromUNet copies the encoder and starts as the identity; conditioningScale scales",
  async () => {
    const f = await loadFixture("3d_attn");
    const unet = unetFor(f);
    const controlnet = ControlNet.fromUNet(unet, {
      conditioningEmbeddingInChannels: 2,
      conditioningEmbeddingNumChannels: [4, 8],
    });
    // Every shared key is copied; only the condition embedding and the zero convolutions are new.
    const unetState = unet.stateDict();
    for (const [k, p] of controlnet.stateDict()) {
      if (unetState.has(k)) deepStrictEqual(await p.toArray(), await unetState.get(k)!.toArray(), k);
      else ok(/^(controlnet_cond_embedding|controlnet_down_blocks|controlnet_mid_block)\./.test(k), k);
    }
    const x = f.inputs.get("x")!;
    const t = f.inputs.get("timesteps")!;
    const condVolume = f.inputs.get("cond")!;
    const plain = noGrad(() => unet.forward(x, t));
    const residuals = noGrad(() => controlnet.forward(x, t, condVolume));
    const controlled = noGrad(() => unet.forward(x, t, residuals));
    // Zero residuals: bit-identical output.
    deepStrictEqual(await controlled.toArray(), await plain.toArray());
    // Scale: with the fixture's (non-zero) weights, residuals at scale s are s × those at scale 1.
    controlnet.loadStateDict(f.controlnet);
    const one = noGrad(() => controlnet.forward(x, t, condVolume));
    const half = noGrad(() => controlnet.forward(x, t, condVolume, { conditioningScale: 0.5 }));
    const a = await one.midBlockAdditionalResidual.toArray();
    const b = await half.midBlockAdditionalResidual.toArray();
    ok(a.some((v) => v !== 0));
    a.forEach((v, i) => ok(Math.abs(b[i] - 0.5 * v) <= 1e-6 * Math.abs(v) + 1e-12, `scale at ${i}`));
    disposeAll(
      plain,
      controlled,
      residuals.downBlockAdditionalResiduals,
      residuals.midBlockAdditionalResidual,
      one.downBlockAdditionalResiduals,
      one.midBlockAdditionalResidual,
      half.downBlockAdditionalResiduals,
      half.midBlockAdditionalResidual,
    );
    controlnet.dispose();
    unet.dispose();
    disposeFixture(f);
  },
);

gpuTest("ControlNet: a condition on the wrong grid is refused, naming the shape it needs", async () => {
  const f = await loadFixture("3d_attn");
  const controlnet = new ControlNet(controlNetOptionsFromMonai(f.config));
  const x = f.inputs.get("x")!; // [2, 1, 4, 4, 4]; the condition must be [2, 2, 8, 8, 8]
  const wrong = tensor(new Float32Array(2 * 2 * 4 * 4 * 4), [2, 2, 4, 4, 4]);
  throws(
    () => controlnet.forward(x, [1, 2], wrong),
    /the condition \[2, 2, 4, 4, 4\] must be \[2, 2, 8, 8, 8\]/,
  );
  disposeAll(wrong);
  controlnet.dispose();
  disposeFixture(f);
});
