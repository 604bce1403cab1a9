/**
 * Autoencoder training: an interrupted and resumed run ends bit-identical to an uninterrupted one (autoencoder,
 * discriminator and both optimizers restored), a changed setting is refused, and `deno task
 * train-autoencoder` writes its files (autoencoder file, previews, validation scores).
 */

import { deepStrictEqual, ok, rejects } from "node:assert";
import { tensor } from "../../mod.ts";
import { loadSafetensors } from "../../io/safetensors.ts";
import { AutoencoderKL, type AutoencoderKLOptions } from "../../models/autoencoder.ts";
import { PatchDiscriminator } from "../../models/discriminator.ts";
import { loadAutoencoderFile } from "../../pipelines/latent_modelfile.ts";
import { ResumeMismatchError } from "../../pipelines/train.ts";
import { type AutoencoderTrainOptions, trainAutoencoder } from "../../pipelines/train_autoencoder.ts";
import { main as trainAutoencoderCli } from "../../cli/train_autoencoder.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

const AE: AutoencoderKLOptions = {
  spatialDims: 3,
  channels: [2, 4],
  attentionLevels: [false, false],
  numResBlocks: 1,
  normNumGroups: 2,
  latentChannels: 2,
  withEncoderNonlocalAttn: false,
  withDecoderNonlocalAttn: false,
  seed: 1,
};

/** A deterministic batch for each step: [1, 1, 8, 8, 8]. */
const data = (step: number) =>
  tensor(Float32Array.from({ length: 512 }, (_, i) => Math.sin(i * 0.37 + step)), [1, 1, 8, 8, 8]);

async function run(dir: string, steps: number, extra: Partial<AutoencoderTrainOptions> = {}): Promise<void> {
  const ae = new AutoencoderKL(AE);
  const disc = new PatchDiscriminator({ spatialDims: 3, channels: 2, inChannels: 1, numLayersD: 1, seed: 2 });
  try {
    await trainAutoencoder(ae, data, {
      steps,
      lr: 1e-2,
      adversarialWarmup: 1,
      discriminator: disc,
      checkpointEvery: 2,
      outDir: dir,
      progress: false,
      seed: 3,
      ...extra,
    });
  } finally {
    ae.dispose();
    disc.dispose();
  }
}

async function values(path: string): Promise<Map<string, number[]>> {
  const state = await loadSafetensors(path);
  const out = new Map<string, number[]>();
  for (const [k, t] of state) {
    out.set(k, [...await t.toArray()]);
    t.dispose();
  }
  return out;
}

gpuTest(
  "trainAutoencoder: a resumed run is bit-identical to an uninterrupted one; changed settings refused",
  async () => {
    const root = await Deno.makeTempDir({ prefix: "voxgen-ae-" });
    try {
      await run(`${root}/a`, 4);
      await run(`${root}/b`, 2);
      await run(`${root}/b`, 4);
      for (const file of ["model.safetensors", "optimizer.safetensors", "discriminator/model.safetensors"]) {
        const [a, b] = [
          await values(`${root}/a/checkpoint/${file}`),
          await values(`${root}/b/checkpoint/${file}`),
        ];
        deepStrictEqual(b, a, file);
      }
      const rows = async (d: string) =>
        (await Deno.readTextFile(`${d}/loss.csv`)).trim().split("\n").map((r) =>
          r.split(",").toSpliced(3, 1).join()
        );
      deepStrictEqual(await rows(`${root}/b`), await rows(`${root}/a`));
      const log = await rows(`${root}/a`);
      ok(
        log[1].endsWith("NaN,NaN") && !log[2].endsWith("NaN"),
        `adversarial terms after the warm-up: ${log}`,
      );
      await rejects(() => run(`${root}/b`, 6, { weights: { kl: 1e-3 } }), (e: Error) => {
        ok(
          e instanceof ResumeMismatchError &&
            /klWeight: 0.000001 in the checkpoint, 0.001 now/.test(e.message),
        );
        return true;
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

gpuTest(
  "deno task train-autoencoder: autoencoder file, previews, loss plot and validation scores",
  async () => {
    const root = await Deno.makeTempDir({ prefix: "voxgen-ae-cli-" });
    try {
      await Deno.mkdir(`${root}/data`);
      await writeTinyVolumes(`${root}/data`, 1);
      const out = `${root}/run`;
      const { stdout, stderr } = await capture(() =>
        trainAutoencoderCli([
          "--data",
          `${root}/data`,
          "--out",
          out,
          "--size",
          "16",
          "--channels",
          "2,4",
          "--groups",
          "2",
          "--latent-channels",
          "2",
          "--steps",
          "2",
          "--checkpoint-every",
          "2",
          "--validation",
          "1",
          "--adversarial",
          "0",
          "--lr",
          "1e-3",
          "--gradient-checkpointing",
        ])
      );
      ok(stdout.includes("autoencoder.safetensors"), stdout);
      ok(/validation PSNR -?\d+\.\d+ dB, SSIM/.test(stderr), stderr);
      for (const f of ["loss.csv", "loss.png", "validation.csv", "preview_000002.png"]) {
        await Deno.stat(
          `${out}/${f}`,
        );
      }
      const { autoencoder, info } = await loadAutoencoderFile(`${out}/autoencoder.safetensors`);
      deepStrictEqual(info.volume.shape, [16, 16, 16]);
      ok(info.validation && info.validation.step === 2 && Number.isFinite(info.validation.psnr));
      deepStrictEqual(autoencoder.latentShape([16, 16, 16]), [2, 8, 8, 8]);
      autoencoder.dispose();
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
