/**
 * Latent diffusion cost: peak GPU memory (`memory().peakBytes` above what was live before) and time of
 *
 * - one autoencoder training step at S³ (encode, posterior sample, decode, L1 + KL, backward to every
 *   parameter; the discriminator's step with `--discriminator`);
 * - latent sampling of one volume: `--steps` U-Net forwards on the latent (S/f)³ and the final decode;
 * - pixel-space sampling with the same U-Net on the image S³ (`--pixel`), measured in the same run.
 *
 * Networks are randomly initialised (cost does not depend on the weights). The first call of each kind
 * compiles its pipelines and is reported separately.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/autoencoder.ts [--size 64] [--ae-channels 8,16,16]
 *   [--unet-channels 32,64,64] [--steps 5] [--pixel] [--discriminator] [--only train|sample]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as V from "../mod.ts";
import { resetPeak } from "../engine/pool.ts";
import { AutoencoderKL } from "../models/autoencoder.ts";
import { PatchDiscriminator } from "../models/discriminator.ts";
import { DiffusionModelUNet } from "../models/unet.ts";
import { discriminatorLoss, generatorLoss, resolveLossWeights } from "../pipelines/autoencoder_losses.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "64" },
    "ae-channels": { type: "string", default: "8,16,16" },
    "unet-channels": { type: "string", default: "32,64,64" },
    steps: { type: "string", default: "5" },
    pixel: { type: "boolean" },
    discriminator: { type: "boolean" },
    only: { type: "string" },
  },
});
const size = Number(values.size);
const aeChannels = values["ae-channels"]!.split(",").map(Number);
const unetChannels = values["unet-channels"]!.split(",").map(Number);
const steps = Number(values.steps);
const mib = (b: number) => (b / 2 ** 20).toFixed(0);

await V.ready();
console.log(`adapter: ${V.deviceInfo().adapter}; image ${size}³`);
const ae = new AutoencoderKL({
  spatialDims: 3,
  channels: aeChannels,
  attentionLevels: aeChannels.map(() => false),
  numResBlocks: 1,
  normNumGroups: 4,
  latentChannels: 3,
  withEncoderNonlocalAttn: false,
  withDecoderNonlocalAttn: false,
});
const latent = ae.latentShape([size, size, size]);
console.log(
  `AutoencoderKL ${aeChannels.join(",")}: ${ae.numParameters().toLocaleString("en")} parameters; latent ${
    latent.join("×")
  }`,
);

/** Runs `fn` (which awaits its result), returning seconds and the peak bytes above the live bytes before. */
async function measure(fn: () => Promise<void>): Promise<{ seconds: number; peak: number }> {
  const before = V.memory().liveBytes;
  resetPeak();
  const start = performance.now();
  await fn();
  return { seconds: (performance.now() - start) / 1000, peak: V.memory().peakBytes - before };
}

if (values.only !== "sample") {
  const x = V.randn([1, 1, size, size, size], { seed: 1 });
  const params = ae.parameters();
  const weights = resolveLossWeights({});
  const disc = values.discriminator
    ? new PatchDiscriminator({ spatialDims: 3, channels: 16, inChannels: 1, numLayersD: 3 })
    : null;
  const step = async () => {
    const grads = V.scope(() => {
      const { mu, sigma } = ae.encode(x);
      const reconstruction = ae.decode(ae.sampling(mu, sigma, { seed: 2 }));
      const fakeLogits = disc ? disc.logits(reconstruction) : undefined;
      const loss = generatorLoss({ reconstruction, target: x, mu, sigma, fakeLogits }, weights);
      const g = V.grad(loss.total, params);
      if (!disc) return g;
      const fake = V.noGrad(() => V.mul(reconstruction, 1));
      const d = discriminatorLoss(disc.logits(fake), disc.logits(x), 0.01);
      return [...g, ...V.grad(d, disc.parameters())];
    });
    await grads[0].toArray();
    for (const g of grads) g.dispose();
  };
  const first = await measure(step);
  const second = await measure(step);
  console.log(
    `autoencoder training step${disc ? " (+ discriminator)" : ""}: first ${first.seconds.toFixed(1)} s ` +
      `(compiles), then ${second.seconds.toFixed(1)} s; peak ${
        mib(second.peak)
      } MiB above parameters and input`,
  );
  x.dispose();
  disc?.dispose();
}

if (values.only !== "train") {
  const unetFor = (channels: number) =>
    new DiffusionModelUNet({
      spatialDims: 3,
      inChannels: channels,
      outChannels: channels,
      channels: unetChannels,
      attentionLevels: unetChannels.map((_, i) => i === unetChannels.length - 1),
      numResBlocks: 1,
      normNumGroups: 8,
      numHeadChannels: 16,
    }).eval();
  const run = async (unet: DiffusionModelUNet, shape: number[], decode: boolean) => {
    const noise = V.randn(shape, { seed: 3 });
    const r = await measure(async () => {
      let z = noise;
      for (let i = 0; i < steps; i++) {
        const next = V.noGrad(() => unet.forward(z, 999 - i * 20));
        if (z !== noise) z.dispose();
        z = next;
      }
      const out = decode ? V.noGrad(() => ae.decode(z)) : z;
      await out.toArray();
      if (out !== z) out.dispose();
      if (z !== noise) z.dispose();
    });
    noise.dispose();
    return r;
  };
  const latentUnet = unetFor(3);
  console.log(
    `U-Net ${unetChannels.join(",")}: ${latentUnet.numParameters().toLocaleString("en")} parameters`,
  );
  await run(latentUnet, [1, ...latent], true); // compiles
  const l = await run(latentUnet, [1, ...latent], true);
  console.log(
    `latent sampling, ${steps} U-Net steps on ${latent.join("×")} + decode: ${
      l.seconds.toFixed(1)
    } s; peak ` +
      `${mib(l.peak)} MiB above the parameters`,
  );
  latentUnet.dispose();
  if (values.pixel) {
    const pixelUnet = unetFor(1);
    await run(pixelUnet, [1, 1, size, size, size], false);
    const p = await run(pixelUnet, [1, 1, size, size, size], false);
    console.log(
      `pixel-space sampling, ${steps} steps of the same U-Net on 1×${size}³: ${
        p.seconds.toFixed(1)
      } s; peak ` +
        `${mib(p.peak)} MiB above the parameters`,
    );
    pixelUnet.dispose();
  }
}
ae.dispose();
