/**
 * AutoencoderKL against MONAI's own AutoencoderKL: the fixtures (tests/fixtures/
 * make_monai_autoencoder_fixtures.py) hold a MONAI state dict with random weights, an image x, a latent z,
 * and MONAI's encode(x), decode(z) and reconstruct(x). Also the GenerativeModels converter, the
 * reparameterisation, and the transposed convolution against a float64 reference with its gradient.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import {
  add,
  grad,
  mean,
  memory,
  mul,
  noGrad,
  randn,
  scope,
  square,
  sub,
  sum,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { resetPeak } from "../../engine/pool.ts";
import { assertClose } from "../helpers/check.ts";
import {
  AutoencoderKL,
  autoencoderOptionsFromMonai,
  convertGenerativeAutoencoderStateDict,
} from "../../models/autoencoder.ts";
import { ConvTranspose } from "../../nn/autoencoder_blocks.ts";
import type { RefTensor } from "../../engine/reference/tensor.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { disposeModelFixture, loadModelFixture, relError } from "../helpers/model_fixtures.ts";

// Tolerance as max |error| / RMS(output) against MONAI's float64 answer for the float32 data, as in the U-Net
// test: float32 rounding through ~20–30 layers stays near 1e-6; 2e-5 leaves room for other summation orders
// while a wrong name, layout or formula moves the outputs by far more (scaling one weight tensor by 1.1 does).
const TOLERANCE = 2e-5;

async function check(name: string, t: Tensor, expected: Float32Array, tolerance = TOLERANCE): Promise<void> {
  const err = relError(await t.toArray(), expected);
  ok(err <= tolerance, `${name}: max error ${err.toExponential(2)} of the RMS > ${tolerance}`);
}

for (const name of ["3d_attn_nonlocal", "3d_convtranspose", "2d_mixed_clamp"]) {
  gpuTest(`AutoencoderKL matches MONAI: ${name} (encode, decode, reconstruct)`, async () => {
    const f = await loadModelFixture(`monai_autoencoder_${name}`);
    const model = new AutoencoderKL(autoencoderOptionsFromMonai(f.config)).eval();
    deepStrictEqual([...model.stateDict().keys()].sort(), [...f.state.keys()].sort());
    model.loadStateDict(f.state);
    const x = f.inputs.get("x")!;
    const { mu, sigma } = noGrad(() => model.encode(x));
    await check(`${name} mu`, mu, f.values.get("mu")!);
    await check(`${name} sigma`, sigma, f.values.get("sigma")!);
    const decoded = noGrad(() => model.decode(f.inputs.get("z")!));
    await check(`${name} decode`, decoded, f.values.get("decoded")!);
    const recon = noGrad(() => model.reconstruct(x));
    await check(`${name} reconstruct`, recon, f.values.get("reconstruction")!);
    disposeAll(mu, sigma, decoded, recon);
    model.dispose();
    disposeModelFixture(f);
  });
}

gpuTest("AutoencoderKL: log σ² is clamped to [−30, 20] like MONAI's", async () => {
  const f = await loadModelFixture("monai_autoencoder_2d_mixed_clamp"); // bias 45 and −55 on channels 0, 1
  const model = new AutoencoderKL(autoencoderOptionsFromMonai(f.config)).eval();
  model.loadStateDict(f.state);
  const { mu, sigma } = noGrad(() => model.encode(f.inputs.get("x")!));
  const s = await sigma.toArray();
  const plane = s.length / (2 * 3);
  ok(s.subarray(0, plane).every((v) => Math.abs(v - Math.exp(10)) <= Math.exp(10) * 1e-6), "σ = e^10 above");
  ok(s.subarray(plane, 2 * plane).every((v) => Math.abs(v - Math.exp(-15)) <= Math.exp(-15) * 1e-6), "below");
  disposeAll(mu, sigma);
  model.dispose();
  disposeModelFixture(f);
});

gpuTest(
  "AutoencoderKL: GenerativeModels state dict converts (unused proj_attn dropped) and matches",
  async () => {
    const f = await loadModelFixture("monai_autoencoder_generative");
    deepStrictEqual(f.format, "generative");
    for (const includeFc of [false, true]) {
      const opts = { ...autoencoderOptionsFromMonai(f.config, { generative: true }), includeFc };
      const model = new AutoencoderKL(opts).eval();
      const { state, dropped, created } = convertGenerativeAutoencoderStateDict(f.state, model);
      ok(dropped.length === 8 && dropped.every((k) => /\.proj_attn\.(weight|bias)$/.test(k)), dropped.join());
      deepStrictEqual(created.length, includeFc ? 8 : 0);
      model.loadStateDict(state);
      disposeAll(created);
      const recon = noGrad(() => model.reconstruct(f.inputs.get("x")!));
      await check(`generative includeFc ${includeFc}`, recon, f.values.get("reconstruction")!);
      const decoded = noGrad(() => model.decode(f.inputs.get("z")!));
      await check(`generative decode`, decoded, f.values.get("decoded")!);
      disposeAll(recon, decoded);
      model.dispose();
    }
    disposeModelFixture(f);
  },
);

gpuTest("AutoencoderKL: GenerativeModels' transposed-convolution upsampler is refused by name", () => {
  const model = new AutoencoderKL({
    spatialDims: 2,
    channels: [2, 2],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 1,
    withEncoderNonlocalAttn: false,
    withDecoderNonlocalAttn: false,
    useConvtranspose: true,
  });
  const old = scope(() =>
    new Map([["decoder.blocks.2.conv.conv.weight", tensor(new Float32Array(36), [2, 2, 3, 3])]])
  );
  throws(() => convertGenerativeAutoencoderStateDict(old, model), /transposed convolution.*kernel 2/);
  disposeAll([...old.values()]);
  model.dispose();
});

gpuTest(
  "AutoencoderKL: sampling is mu + sigma·ξ, seeded; stage-2 helpers; bad inputs name the problem",
  async () => {
    const model = new AutoencoderKL({
      spatialDims: 3,
      channels: [2, 4],
      attentionLevels: [false, false],
      numResBlocks: 1,
      normNumGroups: 2,
      latentChannels: 2,
      withEncoderNonlocalAttn: false,
      withDecoderNonlocalAttn: false,
    }).eval();
    const mu = tensor(Float32Array.from({ length: 16 }, (_, i) => i / 4 - 2), [1, 2, 2, 2, 2]);
    const zeroSigma = tensor(new Float32Array(16), [1, 2, 2, 2, 2]);
    const sigma = tensor(new Float32Array(16).fill(3), [1, 2, 2, 2, 2]);
    const a = noGrad(() => model.sampling(mu, zeroSigma, { seed: 1 }));
    deepStrictEqual(await a.toArray(), await mu.toArray());
    const b = noGrad(() => model.sampling(mu, sigma, { seed: 1 }));
    const c = noGrad(() => model.sampling(mu, sigma, { seed: 1 }));
    const d = noGrad(() => model.sampling(mu, sigma, { seed: 2 }));
    deepStrictEqual(await b.toArray(), await c.toArray());
    const bv = await b.toArray();
    const dv = await d.toArray();
    ok(bv.some((v, i) => v !== dv[i]), "another seed draws other noise");
    const xi = bv.map((v, i) => (v - (i / 4 - 2)) / 3); // ξ = (z − mu) / σ
    ok(xi.some((v) => Math.abs(v) > 0.1) && xi.every((v) => Math.abs(v) < 6), `ξ ${xi.join()}`);
    deepStrictEqual(model.latentShape([8, 4, 6]), [2, 4, 2, 3]);
    throws(() => model.latentShape([8, 5, 6]), /multiple of 2/);
    const x = tensor(new Float32Array(2 * 4 * 4 * 4), [1, 2, 4, 4, 4]);
    throws(() => model.encode(x), /\[B, 1, D, H, W\]/);
    throws(
      () => new AutoencoderKL({ spatialDims: 3, channels: [4, 6], normNumGroups: 4 }),
      /multiple of normNumGroups/,
    );
    throws(
      () => autoencoderOptionsFromMonai({ spatial_dims: 3, num_channels: [4] }),
      /unknown.*num_channels/,
    );
    const img = tensor(new Float32Array(64).fill(0.5), [1, 1, 4, 4, 4]);
    const z = noGrad(() => model.encodeStage2Inputs(img, { seed: 3 }));
    deepStrictEqual(z.shape, [1, 2, 2, 2, 2]);
    const y = noGrad(() => model.decodeStage2Outputs(z));
    deepStrictEqual(y.shape, [1, 1, 4, 4, 4]);
    disposeAll(mu, zeroSigma, sigma, a, b, c, d, x, img, z, y);
    model.dispose();
  },
);

/** PyTorch's ConvTranspose with kernel = stride = k, in float64: y[o, k·i + a] += Σ_c x[c, i] W[c, o, a]. */
function convTransposeRef(x: RefTensor, w: RefTensor, bias: RefTensor, k: number): RefTensor {
  const [b, cin, ...n] = x.shape;
  const cout = w.shape[1];
  const sd = n.length;
  const outN = n.map((v) => v * k);
  const outSize = outN.reduce((p, v) => p * v, 1);
  const inSize = n.reduce((p, v) => p * v, 1);
  const taps = k ** sd;
  const data = new Float64Array(b * cout * outSize);
  for (let bi = 0; bi < b; bi++) {
    for (let o = 0; o < cout; o++) {
      for (let i = 0; i < inSize; i++) {
        const idx: number[] = [];
        let r = i;
        for (let d = sd - 1; d >= 0; d--) {
          idx[d] = r % n[d];
          r = Math.floor(r / n[d]);
        }
        for (let t = 0; t < taps; t++) {
          const tap: number[] = [];
          let q = t;
          for (let d = sd - 1; d >= 0; d--) {
            tap[d] = q % k;
            q = Math.floor(q / k);
          }
          let s = 0;
          for (let c = 0; c < cin; c++) {
            s += x.data[(bi * cin + c) * inSize + i] * w.data[(c * cout + o) * taps + t];
          }
          let flat = 0;
          for (let d = 0; d < sd; d++) flat = flat * outN[d] + idx[d] * k + tap[d];
          data[(bi * cout + o) * outSize + flat] = s + bias.data[o];
        }
      }
    }
  }
  return { shape: [b, cout, ...outN], data };
}

gpuTest(
  "ConvTranspose (kernel = stride) matches a float64 reference, and its gradients the numeric ones",
  async () => {
    for (const [sd, n] of [[3, [2, 3, 2]], [2, [3, 2]]] as const) {
      const layer = new ConvTranspose(sd, 3, 2, 2, { seed: 5 });
      const shape = [2, 3, ...n];
      const xs = Float32Array.from({ length: shape.reduce((p, v) => p * v, 1) }, (_, i) => Math.sin(i * 1.7));
      const x = tensor(xs, shape, { requiresGrad: true });
      const y = layer.forward(x);
      const g = Float32Array.from({ length: y.size }, (_, i) => Math.cos(i * 0.37));
      const gt = tensor(g, y.shape);
      const product = mul(y, gt);
      const weighted = sum(product);
      const [dx, dw, db] = grad(weighted, [x, layer.weight, layer.bias]);
      const wRef = { shape: [...layer.weight.shape], data: Float64Array.from(await layer.weight.toArray()) };
      const bRef = { shape: [...layer.bias.shape], data: Float64Array.from(await layer.bias.toArray()) };
      const xRef = { shape, data: Float64Array.from(xs) };
      const gRef = { shape: [...y.shape], data: Float64Array.from(g) };
      const ref = convTransposeRef(xRef, wRef, bRef, 2);
      deepStrictEqual(y.shape, ref.shape);
      await check(`convT ${sd}d forward`, y, Float32Array.from(ref.data), 1e-6);
      const f = ([a, w, bb]: RefTensor[]) => convTransposeRef(a, w, bb, 2);
      const inputs = [xRef, wRef, bRef];
      for (const [i, got] of [dx, dw, db].entries()) {
        const want = numericGrad(f, inputs, i, gRef, 1e-2);
        await check(`convT ${sd}d grad ${i}`, got, Float32Array.from(want.data), 1e-5);
      }
      disposeAll(x, y, gt, product, weighted, dx, dw, db);
      layer.dispose();
    }
  },
);

gpuTest("AutoencoderKL: gradient checkpointing gives the same gradients with less memory", async () => {
  // useCheckpoint (MONAI's option) turns it on; the same weights (seed) as the plain model.
  const options = {
    spatialDims: 3 as const,
    channels: [4, 8],
    attentionLevels: [false, false],
    numResBlocks: 2,
    normNumGroups: 4,
    latentChannels: 2,
    withEncoderNonlocalAttn: false,
    withDecoderNonlocalAttn: false,
    seed: 3,
  };
  const plain = new AutoencoderKL(options);
  const checkpointed = new AutoencoderKL({ ...options, useCheckpoint: true });
  const x = randn([1, 1, 16, 16, 16], { seed: 4 });
  const step = (model: AutoencoderKL) => {
    const params = model.parameters();
    const before = memory().liveBytes;
    resetPeak();
    const grads = scope(() => {
      const { reconstruction, mu, sigma } = model.forward(x, { seed: 5 });
      // Reconstruction error plus a function of the posterior (as the KL term), so every path has a gradient.
      const loss = add(mean(square(sub(reconstruction, x))), mul(mean(sub(square(mu), square(sigma))), 1e-3));
      return grad(loss, params);
    });
    return { grads, peak: memory().peakBytes - before };
  };
  try {
    const a = step(plain);
    const b = step(checkpointed);
    ok(b.peak < a.peak, `peak ${b.peak} bytes with checkpointing, ${a.peak} without`);
    for (const [i, g] of a.grads.entries()) {
      // Same kernels on the same values: only summation order may differ (f32 reassociation).
      assertClose(await b.grads[i].toArray(), await g.toArray(), {
        rtol: 1e-5,
        atol: 1e-7,
        name: `grad ${i}`,
      });
    }
    disposeAll(a.grads, b.grads);
  } finally {
    disposeAll(x);
    plain.dispose();
    checkpointed.dispose();
  }
});
