/**
 * DiffusionModelUNet against MONAI's own DiffusionModelUNet: the fixtures (tests/fixtures/
 * make_monai_unet_fixtures.py) hold a MONAI state dict with random weights, inputs and MONAI's output.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import {
  abs,
  AdamW,
  concat,
  grad,
  mean,
  memory,
  mseLoss,
  noGrad,
  randn,
  reshape,
  scope,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { loadSafetensors, parseSafetensors } from "../../io/safetensors.ts";
import {
  convertGenerativeStateDict,
  DiffusionModelUNet,
  type DiffusionModelUNetOptions,
  unetOptionsFromMonai,
} from "../../models/unet.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

interface Fixture {
  config: Record<string, unknown>;
  format: string;
  state: Map<string, Tensor>;
  x: Tensor;
  timesteps: Tensor;
  context?: Tensor;
  classLabels?: Tensor;
  output: Float32Array;
  /** The other `fixture.*` tensors (ControlNet residuals). */
  extras: Map<string, Tensor>;
  /** The other `fixture.*` tensors' values. */
  extraValues: Map<string, Float32Array>;
}

async function loadFixture(name: string): Promise<Fixture> {
  const bytes = await Deno.readFile(new URL(`../fixtures/monai_unet_${name}.safetensors`, import.meta.url));
  const { metadata, tensors: raw } = parseSafetensors(bytes, name);
  const all = await loadSafetensors(bytes);
  const state = new Map([...all].filter(([k]) => !k.startsWith("fixture.")));
  const take = (k: string) => {
    const t = all.get(`fixture.${k}`);
    all.delete(`fixture.${k}`);
    return t;
  };
  const output = raw.get("fixture.output")!.data as Float32Array;
  take("output")!.dispose();
  const fixed = {
    config: JSON.parse(metadata.config),
    format: metadata.format,
    state,
    x: take("x")!,
    timesteps: take("timesteps")!,
    context: take("context"),
    classLabels: take("class_labels"),
    output,
  };
  const extras = new Map(
    [...all].filter(([k]) => k.startsWith("fixture.")).map(([k, t]) => [k.slice("fixture.".length), t]),
  );
  const extraValues = new Map(
    [...extras.keys()].map((k) => [k, raw.get(`fixture.${k}`)!.data as Float32Array]),
  );
  return { ...fixed, extras, extraValues };
}

function disposeFixture(f: Fixture): void {
  disposeAll([...f.state.values()], [...f.extras.values()], f.x, f.timesteps, f.context, f.classLabels);
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

// Tolerance, as max |error| / RMS(output): the fixtures' outputs are exact (float64) answers for their
// float32 inputs and weights. PyTorch's own float32 forward misses them by 1.2e-6…3.3e-6 (printed by the
// fixture script) and voxgen's by 1.0e-6…3.3e-6: f32 rounding through 20–40 layers whose sums have up to a
// few hundred terms. 2e-5 leaves 6× headroom for other summation orders (kernel tiling), while scaling any
// single parameter tensor of the fixtures by 1.1 moves the output by at least 8e-5 of its RMS (above 1e-3
// for all but 19 of ~1900; key biases excepted, which softmax ignores): a wrong name, layout or formula
// cannot hide below it.
const TOLERANCE = 2e-5;

const MONAI_FIXTURES = [
  "3d_attn_deep",
  "3d_updown_multi",
  "2d_res2",
  "2d_cross",
  "3d_cross_class",
  "2d_combined_nofc",
  "2d_cross_combined",
];

for (const name of MONAI_FIXTURES) {
  gpuTest(`DiffusionModelUNet matches MONAI: ${name}`, async () => {
    const f = await loadFixture(name);
    const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config)).eval();
    const report = model.loadStateDict(f.state);
    deepStrictEqual(report.loaded.length, f.state.size);
    const y = noGrad(() =>
      model.forward(f.x, f.timesteps, { context: f.context, classLabels: f.classLabels })
    );
    const err = relError(await y.toArray(), f.output);
    ok(err <= TOLERANCE, `${name}: max error ${err.toExponential(2)} of the output RMS > ${TOLERANCE}`);
    disposeAll(y);
    model.dispose();
    disposeFixture(f);
  });
}

gpuTest("DiffusionModelUNet: timesteps as numbers, one shared number, and labels as numbers", async () => {
  const f = await loadFixture("2d_combined_nofc"); // batch 2, timesteps [77, 5], labels [3, 1]
  const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config)).eval();
  model.loadStateDict(f.state);
  const y = noGrad(() => model.forward(f.x, [77, 5], { classLabels: [3, 1] }));
  const err = relError(await y.toArray(), f.output);
  ok(err <= TOLERANCE, `numbers: max error ${err.toExponential(2)} of the RMS`);
  // One number for the whole batch equals the list with that number repeated.
  const a = noGrad(() => model.forward(f.x, 77, { classLabels: [3, 1] }));
  const b = noGrad(() => model.forward(f.x, [77, 77], { classLabels: [3, 1] }));
  deepStrictEqual(await a.toArray(), await b.toArray());
  disposeAll(y, a, b);
  model.dispose();
  disposeFixture(f);
});

gpuTest("DiffusionModelUNet: ControlNet residuals (skips and middle block) match MONAI", async () => {
  const f = await loadFixture("2d_cross_combined");
  const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config)).eval();
  model.loadStateDict(f.state);
  const down = [0, 1, 2, 3].map((i) => f.extras.get(`down_residual.${i}`)!);
  const y = noGrad(() =>
    model.forward(f.x, f.timesteps, {
      context: f.context,
      downBlockAdditionalResiduals: down,
      midBlockAdditionalResidual: f.extras.get("mid_residual"),
    })
  );
  const err = relError(await y.toArray(), f.extraValues.get("output_controlnet")!);
  ok(err <= TOLERANCE, `ControlNet: max error ${err.toExponential(2)} of the output RMS`);
  throws(
    () =>
      model.forward(f.x, f.timesteps, { context: f.context, downBlockAdditionalResiduals: down.slice(1) }),
    /downBlockAdditionalResiduals has 3 tensors; the skips are 4/,
  );
  disposeAll(y);
  model.dispose();
  disposeFixture(f);
});

gpuTest(
  "convertGenerativeStateDict: old MONAI Generative checkpoints load and match the old model",
  async () => {
    for (const name of ["generative_attn", "generative_cross"]) {
      const f = await loadFixture(name);
      deepStrictEqual(f.format, "generative");
      // The old config (num_channels, no include_fc): generative mode picks includeFc = !withConditioning,
      // which reproduces the old model (its self-attention never applied proj_attn).
      const options = unetOptionsFromMonai(f.config, { generative: true });
      deepStrictEqual(options.includeFc, name === "generative_cross");
      const model = new DiffusionModelUNet(options).eval();
      throws(() => model.loadStateDict(f.state), /missing keys/);
      const { state, dropped } = convertGenerativeStateDict(f.state, model);
      ok(
        dropped.every((k) => k.endsWith("proj_attn.weight") || k.endsWith("proj_attn.bias")),
        dropped.join(),
      );
      if (name === "generative_attn") ok(dropped.length > 0, "the old attention blocks have proj_attn");
      model.loadStateDict(state);
      const y = noGrad(() => model.forward(f.x, f.timesteps, { context: f.context }));
      const err = relError(await y.toArray(), f.output);
      ok(err <= TOLERANCE, `${name}: max error ${err.toExponential(2)} of the output RMS`);
      disposeAll(y);
      model.dispose();
      disposeFixture(f);
    }
  },
);

gpuTest("loadStateDict (strict) names the missing, unexpected and mis-shaped keys together", async () => {
  const f = await loadFixture("3d_attn_deep");
  const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config));
  const state = new Map(f.state);
  const removed = "down_blocks.1.attentions.0.attn.to_k.weight";
  const extra = tensor(new Float32Array(3), [3]);
  const wrong = tensor(new Float32Array(4 * 8), [4, 8]);
  state.delete(removed);
  state.set("down_blocks.1.attentions.0.proj_attn.weight", extra);
  const reshaped = "middle_block.resnet_1.time_emb_proj.weight"; // [8, 16] in the model
  state.set(reshaped, wrong);
  throws(() => model.loadStateDict(state), (e: Error) => {
    ok(e.message.includes(`missing keys (1): ${removed}`), e.message);
    ok(e.message.includes("unexpected keys (1): down_blocks.1.attentions.0.proj_attn.weight"), e.message);
    ok(e.message.includes(`${reshaped}: [4, 8] in the state dict vs [8, 16] in the model`), e.message);
    return true;
  });
  disposeAll(extra, wrong);
  model.dispose();
  disposeFixture(f);
});

/** A squared-error loss of the model's output against a fixed target, and the gradients of all parameters. */
function lossAndGrads(model: DiffusionModelUNet, f: Fixture): { loss: Tensor; grads: Tensor[] } {
  const params = model.trainableParameters();
  return scope(() => {
    const y = model.forward(f.x, f.timesteps, { context: f.context, classLabels: f.classLabels });
    const target = randn(y.shape, { seed: 5 });
    const loss = mseLoss(y, target);
    return { loss, grads: grad(loss, params) };
  });
}

gpuTest("DiffusionModelUNet: every parameter gets a finite, substantial gradient", async () => {
  // Cross-attention + classes + two transformer layers; self-attention with biases, ResnetBlock up/down and
  // per-level res blocks; combined qkv without out_proj + classes.
  for (const name of ["3d_cross_class", "3d_updown_multi", "2d_combined_nofc"]) {
    const f = await loadFixture(name);
    const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config));
    model.loadStateDict(f.state);
    const { loss, grads } = lossAndGrads(model, f);
    const names = model.namedParameters().map(([n]) => n);
    // mean |g| per parameter, in one readback (NaN/∞ if any entry is not finite).
    const norms = scope(() => concat(grads.map((g) => reshape(mean(abs(g)), [1])), 0));
    const values = await norms.toArray();
    const median = [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    // Softmax ignores a bias added to every key (it shifts each row's scores by a constant): the gradient of
    // to_k.bias is zero up to rounding. Every other parameter's is at least ~5% of the median in these
    // fixtures; rounding noise is ~1e-7 of it, so 1e-3 separates real gradients from noise.
    const keyBias = (n: string) => n.endsWith("to_k.bias");
    const weak = names.filter((n, i) =>
      !keyBias(n) && !(Number.isFinite(values[i]) && values[i] > 1e-3 * median)
    );
    deepStrictEqual(weak, [], `${name}: parameters without a usable gradient: ${weak.join(", ")}`);
    const leaky = names.filter((n, i) => keyBias(n) && !(values[i] < 1e-5 * median));
    deepStrictEqual(leaky, [], `${name}: key biases with a gradient: ${leaky.join(", ")}`);
    ok(Number.isFinite(await loss.item()));
    disposeAll(loss, grads, norms);
    model.dispose();
    disposeFixture(f);
  }
});

gpuTest(
  "DiffusionModelUNet: a fresh (MONAI-initialised) model trains: AdamW steps lower the loss",
  async () => {
    const model = new DiffusionModelUNet({
      spatialDims: 2,
      inChannels: 1,
      outChannels: 1,
      channels: [8, 8],
      attentionLevels: [false, true],
      numResBlocks: 1,
      normNumGroups: 4,
      numHeadChannels: 4,
      seed: 3,
    });
    const x = randn([2, 1, 8, 8], { seed: 1 });
    const target = randn([2, 1, 8, 8], { seed: 2 });
    const params = model.trainableParameters();
    const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
    const losses: number[] = [];
    for (let step = 0; step < 6; step++) {
      const loss = scope(() => {
        const l = mseLoss(model.forward(x, [10, 900]), target);
        opt.step(grad(l, params));
        return l;
      });
      losses.push(await loss.item());
      loss.dispose();
    }
    ok(losses[5] < 0.9 * losses[0], `loss ${losses.map((l) => l.toFixed(4)).join(" → ")}`);
    disposeAll(x, target);
    opt.dispose();
    model.dispose();
  },
);

gpuTest("DiffusionModelUNet: memory stays flat across forward calls under noGrad", async () => {
  const f = await loadFixture("2d_cross");
  const model = new DiffusionModelUNet(unetOptionsFromMonai(f.config)).eval();
  model.loadStateDict(f.state);
  const run = () => noGrad(() => model.forward(f.x, f.timesteps, { context: f.context }));
  const first = run();
  first.dispose();
  const after1 = memory();
  for (let i = 0; i < 3; i++) run().dispose();
  const after4 = memory();
  deepStrictEqual(after4.liveTensors, after1.liveTensors);
  deepStrictEqual(after4.liveBytes, after1.liveBytes);
  model.dispose();
  disposeFixture(f);
});

const BASE: DiffusionModelUNetOptions = {
  spatialDims: 3,
  inChannels: 1,
  outChannels: 1,
  channels: [8, 16],
  attentionLevels: [false, true],
  numResBlocks: 1,
  normNumGroups: 4,
  numHeadChannels: 8,
};

gpuTest("DiffusionModelUNet: options are validated like MONAI's, with clear errors", () => {
  const bad = (patch: Record<string, unknown>, re: RegExp) =>
    throws(() => new DiffusionModelUNet({ ...BASE, ...patch } as DiffusionModelUNetOptions), re);
  bad({ channels: [8, 18] }, /every entry of channels \[8,18\] must be a multiple of normNumGroups 4/);
  bad({ attentionLevels: [true] }, /attentionLevels \[true\] must have one entry per level/);
  bad({ numHeadChannels: [8, 8, 8] }, /numHeadChannels \[8,8,8\] must be one number or one per level \(2\)/);
  bad({ numResBlocks: [1, 1, 1] }, /numResBlocks \[1,1,1\] must be a positive integer or one per level/);
  bad({ withConditioning: true }, /withConditioning needs crossAttentionDim/);
  bad({ crossAttentionDim: 4 }, /crossAttentionDim needs withConditioning: true/);
  bad({ dropoutCattn: 1.5 }, /dropoutCattn must be in \[0, 1\]/);
  bad({ numHeadChannels: 6 }, /channels\[1\] = 16 must be divisible by numHeadChannels\[1\] = 6/);
  bad({ spatialDims: 1 }, /spatialDims must be 2 or 3/);
  throws(
    () => unetOptionsFromMonai({ spatial_dims: 2, num_heads: 3 }),
    /unknown DiffusionModelUNet argument "num_heads"/,
  );
});

gpuTest("DiffusionModelUNet: forward inputs are checked", () => {
  const model = new DiffusionModelUNet({ ...BASE, numClassEmbeds: 3 });
  const x = tensor(new Float32Array(2 * 8 * 8 * 8), [2, 1, 8, 8, 8]);
  const odd = tensor(new Float32Array(2 * 7 * 8 * 8), [2, 1, 7, 8, 8]);
  const ctx = tensor(new Float32Array(2 * 4), [2, 1, 4]);
  throws(
    () => model.forward(odd, 1, { classLabels: [0, 1] }),
    /spatial size \[7, 8, 8\] of x must be divisible by 2/,
  );
  throws(() => model.forward(x, [1, 2, 3], { classLabels: [0, 1] }), /timesteps must be one number or 2/);
  throws(() => model.forward(x, 1), /classLabels are required: the model has 3 class embeddings/);
  throws(() => model.forward(x, 1, { classLabels: [0, 1], context: ctx }), /withConditioning: false/);
  throws(() => model.forward(x, 1, { classLabels: [0, 3] }), /indices \[0,3\] must be integers in \[0, 3\)/);
  disposeAll(x, odd, ctx);
  model.dispose();
});

gpuTest(
  "DiffusionModelUNet: Basile et al.'s 3-D DDPM (channels 128/128/256, attention at the deepest level)",
  async () => {
    // Basile et al.: 3-D, 1 → 1 channels, channels [128, 128, 256], attention at the deepest level with 256
    // head channels, 2 residual blocks per level (MONAI's defaults otherwise: 32 groups, eps 1e-6).
    const model = new DiffusionModelUNet({
      spatialDims: 3,
      inChannels: 1,
      outChannels: 1,
      channels: [128, 128, 256],
      attentionLevels: [false, false, true],
      numHeadChannels: [0, 0, 256],
      numResBlocks: 2,
    });
    // MONAI's DiffusionModelUNet with the same arguments has 47,475,969 parameters.
    deepStrictEqual(model.numParameters(), 47_475_969);
    const names = new Set(model.namedParameters().map(([n]) => n));
    for (
      const key of [
        "conv_in.conv.weight",
        "time_embed.2.weight",
        "down_blocks.2.attentions.1.attn.out_proj.weight",
        "down_blocks.0.downsampler.op.conv.weight",
        "middle_block.attention.attn.to_q.bias",
        "up_blocks.0.resnets.2.skip_connection.conv.weight",
        "up_blocks.1.upsampler.postconv.conv.weight",
        "out.2.conv.bias",
      ]
    ) ok(names.has(key), key);
    // One forward at 8³ (the smallest size its two downsamplings allow; 32³ takes minutes on lavapipe, see
    // bench/unet.ts). MONAI starts the output convolution at zero, so give it weights to see a real output.
    const head = new Map([["out.2.conv.weight", randn([1, 128, 3, 3, 3], { seed: 3 })]]);
    const report = model.loadStateDict(head, { strict: false });
    deepStrictEqual(report.loaded, ["out.2.conv.weight"]);
    const x = randn([1, 1, 8, 8, 8], { seed: 4 });
    const y = noGrad(() => model.eval().forward(x, 500));
    deepStrictEqual(y.shape, [1, 1, 8, 8, 8]);
    const v = await y.toArray();
    ok(v.every(Number.isFinite) && v.some((e) => e !== 0));
    disposeAll(x, y, [...head.values()]);
    model.dispose();
  },
);
