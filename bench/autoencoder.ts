/**
 * Latent diffusion cost: peak GPU memory (`memory().peakBytes` above what was live before) and time of
 *
 * - one autoencoder training step at S³ (encode, posterior sample, decode, L1 + KL, backward to every
 *   parameter; the discriminator's step with `--discriminator`);
 * - latent sampling of one volume: `--steps` U-Net forwards on the latent (S/f)³ and the final decode;
 * - pixel-space sampling with the same U-Net on the image S³ (`--pixel`), measured in the same run;
 * - with `--checkpointing`, the training step also with gradient checkpointing of the residual blocks
 *   (`ae.gradientCheckpointing()`), the two alternating (`--reps` rounds).
 *
 * Besides the peak of live bytes, each line gives the process CPU time, the pool's peak of held bytes (live +
 * cached + awaiting reuse) and the process's peak RSS (on lavapipe GPU buffers live in host memory).
 *
 * Networks are randomly initialised (cost does not depend on the weights). The first call of each kind
 * compiles its pipelines and is reported separately.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/autoencoder.ts [--size 64] [--ae-channels 8,16,16]
 *   [--unet-channels 32,64,64] [--steps 5] [--pixel] [--discriminator] [--only train|sample]
 *   [--checkpointing] [--reps 1]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as V from "../mod.ts";
import process from "node:process";
import { poolStats, resetPeak } from "../engine/pool.ts";
import { hostMemory, resetPeakRss } from "./host_memory.ts";
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
    checkpointing: { type: "boolean" },
    reps: { type: "string", default: "1" },
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

/** What {@linkcode measure} reports. */
interface Cost {
  /** Wall seconds. */
  seconds: number;
  /** Process CPU seconds. */
  cpu: number;
  /** Peak live bytes above the live bytes before. */
  peak: number;
  /** Peak of the pool's held bytes (live + cached + awaiting reuse). */
  held: number;
  /** Peak resident set of the process. */
  rss: number;
}

/** Runs `fn` (which awaits its result), returning its {@linkcode Cost}. */
async function measure(fn: () => Promise<void>): Promise<Cost> {
  const before = V.memory().liveBytes;
  resetPeak();
  resetPeakRss();
  const c0 = process.cpuUsage();
  const start = performance.now();
  await fn();
  const c = process.cpuUsage(c0);
  return {
    seconds: (performance.now() - start) / 1000,
    cpu: (c.user + c.system) / 1e6,
    peak: V.memory().peakBytes - before,
    held: poolStats().peakHeldBytes,
    rss: hostMemory().peakRss,
  };
}

/** " 12.3 s wall, 4.5 s CPU; peak 67 MiB above …; pool peak 89 MiB, RSS peak 1011 MiB". */
const costText = (c: Cost, above: string) =>
  `${c.seconds.toFixed(1)} s wall, ${c.cpu.toFixed(1)} s CPU; peak ${mib(c.peak)} MiB above ${above}; pool ` +
  `peak ${mib(c.held)} MiB, process RSS peak ${mib(c.rss)} MiB`;

if (values.only !== "sample") {
  const x = V.randn([1, 1, size, size, size], { seed: 1 });
  const params = ae.parameters();
  const weights = resolveLossWeights({});
  const disc = values.discriminator
    ? new PatchDiscriminator({ spatialDims: 3, channels: 16, inChannels: 1, numLayersD: 3 })
    : null;
  // Bytes live between the generator's forward and its backward, above those before the step: what the
  // backward keeps (activations, or only block inputs when checkpointed).
  let kept = 0;
  const step = async () => {
    const before = V.memory().liveBytes;
    const grads = V.scope(() => {
      const { mu, sigma } = ae.encode(x);
      const reconstruction = ae.decode(ae.sampling(mu, sigma, { seed: 2 }));
      const fakeLogits = disc ? disc.logits(reconstruction) : undefined;
      const loss = generatorLoss({ reconstruction, target: x, mu, sigma, fakeLogits }, weights);
      kept = V.memory().liveBytes - before;
      const g = V.grad(loss.total, params);
      if (!disc) return g;
      const fake = V.noGrad(() => V.mul(reconstruction, 1));
      const d = discriminatorLoss(disc.logits(fake), disc.logits(x), 0.01);
      return [...g, ...V.grad(d, disc.parameters())];
    });
    await grads[0].toArray();
    for (const g of grads) g.dispose();
  };
  const variants = values.checkpointing ? [false, true] : [false];
  const what = (ckpt: boolean) =>
    `autoencoder training step${disc ? " (+ discriminator)" : ""}${ckpt ? ", checkpointed" : ""}`;
  for (const ckpt of variants) {
    ae.gradientCheckpointing(ckpt);
    const first = await measure(step);
    console.log(
      `${what(ckpt)}, first (compiles): ${costText(first, "parameters and input")}; kept for backward ` +
        `${mib(kept)} MiB`,
    );
  }
  for (let r = 0; r < Number(values.reps); r++) {
    for (const ckpt of variants) {
      ae.gradientCheckpointing(ckpt);
      const cost = await measure(step);
      console.log(
        `${what(ckpt)}: ${costText(cost, "parameters and input")}; kept for backward ${mib(kept)} MiB`,
      );
    }
  }
  ae.gradientCheckpointing(false);
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
    `latent sampling, ${steps} U-Net steps on ${latent.join("×")} + decode: ${costText(l, "the parameters")}`,
  );
  latentUnet.dispose();
  if (values.pixel) {
    const pixelUnet = unetFor(1);
    await run(pixelUnet, [1, 1, size, size, size], false);
    const p = await run(pixelUnet, [1, 1, size, size, size], false);
    console.log(
      `pixel-space sampling, ${steps} steps of the same U-Net on 1×${size}³: ${
        costText(p, "the parameters")
      }`,
    );
    pixelUnet.dispose();
  }
}
ae.dispose();
