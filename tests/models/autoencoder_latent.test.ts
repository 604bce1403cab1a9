/**
 * Latent diffusion: the scale factor against a float64 reference (torch.std's unbiased estimate), the latent
 * model file round trip (both networks, scale factor, geometry; also through `loadModelFile`), decode(z / s),
 * `deno task train --autoencoder` and `deno task sample` on a tiny latent model.
 */

import { deepStrictEqual, equal, ok, throws } from "node:assert";
import { mul, noGrad, randn, ready, scope, tensor } from "../../mod.ts";
import { readNifti } from "../../io/nifti.ts";
import { AutoencoderKL, type AutoencoderKLOptions } from "../../models/autoencoder.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../../models/unet.ts";
import {
  latentBatches,
  posteriorSeed,
  prepareLatentTraining,
  scaleFactorOf,
} from "../../pipelines/latent.ts";
import {
  decodeLatents,
  loadLatentModelFile,
  saveAutoencoderFile,
  saveLatentModelFile,
} from "../../pipelines/latent_modelfile.ts";
import { disposeModel, loadModelFile } from "../../pipelines/modelfile.ts";
import { unetGenerator } from "../../pipelines/generators.ts";
import { main as sampleCli } from "../../cli/sample.ts";
import { main as trainCli } from "../../cli/train.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { startServer, submit, waitForJob } from "../server/helpers.ts";

const AE: AutoencoderKLOptions = {
  spatialDims: 3,
  channels: [2, 4],
  attentionLevels: [false, false],
  numResBlocks: 1,
  normNumGroups: 2,
  latentChannels: 2,
  withEncoderNonlocalAttn: false,
  withDecoderNonlocalAttn: false,
  seed: 4,
};
const UNET: DiffusionModelUNetOptions = {
  spatialDims: 3,
  inChannels: 2,
  outChannels: 2,
  channels: [4, 4],
  attentionLevels: [false, false],
  numResBlocks: 1,
  normNumGroups: 2,
  numHeadChannels: 4,
  seed: 5,
};
const AFFINE = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]];

Deno.test("scaleFactorOf: 1 / the unbiased (n − 1) standard deviation, like torch.std", () => {
  // [1, 2, 3, 4]: mean 2.5, Σ(x − m)² = 5, unbiased variance 5/3.
  ok(Math.abs(scaleFactorOf([1, 2, 3, 4]) - 1 / Math.sqrt(5 / 3)) < 1e-15);
  const values = Float32Array.from({ length: 1000 }, (_, i) => 3 * Math.sin(i * 12.9898) + 0.5);
  let m = 0;
  for (const v of values) m += v / values.length;
  let sq = 0;
  for (const v of values) sq += (v - m) ** 2;
  ok(Math.abs(scaleFactorOf(values) - 1 / Math.sqrt(sq / 999)) < 1e-12);
  throws(() => scaleFactorOf([2, 2, 2]), /degenerate/);
  throws(() => scaleFactorOf([1]), /at least 2/);
  // The posterior noise has its own stream: never the diffusion noise the trainer draws from the run seed.
  ok([0, 1, 9, 2 ** 31].every((seed) => posteriorSeed(seed) !== seed));
});

gpuTest("prepareLatentTraining: s from the first batch's sampled latents; batches are s·z", async () => {
  const ae = new AutoencoderKL(AE).eval();
  const images = (step: number) => ({
    x0: tensor(Float32Array.from({ length: 1024 }, (_, i) => Math.sin(i * 0.1 + step)), [2, 1, 8, 8, 8]),
  });
  const raw = await latentBatches(ae, images, { seed: 9 })(0, 0);
  const want = scaleFactorOf(await raw.x0.toArray());
  const prepared = await prepareLatentTraining(ae, images, { seed: 9 });
  deepStrictEqual(prepared.scaleFactor, want);
  deepStrictEqual(prepared.latentShape, [2, 4, 4, 4]);
  const scaled = await prepared.data(0, 0);
  const a = await scaled.x0.toArray();
  const b = await raw.x0.toArray();
  ok(a.every((v, i) => Math.abs(v - b[i] * want) <= 1e-6 * Math.abs(v) + 1e-7), "first batch · s");
  // Cached posteriors (no augmentation) give the same latents for the same volumes, seed and step.
  const sources = [0, 1].map((k) => tensor(new Float32Array(512).fill(k * 0.3), [1, 1, 8, 8, 8]));
  const fixed = (step: number, micro: number) => ({
    x0: tensor(new Float32Array(512).fill(((step + micro) % 2) * 0.3), [1, 1, 8, 8, 8]),
  });
  const cached = await prepareLatentTraining(ae, fixed, { seed: 2, sources, batch: 1, pick: (s) => s });
  const plain = await prepareLatentTraining(ae, fixed, { seed: 2 });
  deepStrictEqual(cached.scaleFactor, plain.scaleFactor);
  for (const step of [0, 1]) {
    const [c, p] = [await cached.data(step, 0), await plain.data(step, 0)];
    const [cv, pv] = [await c.x0.toArray(), await p.x0.toArray()];
    ok(cv.every((v, i) => Math.abs(v - pv[i]) <= 1e-5 * (1 + Math.abs(v))), `step ${step}`);
    disposeAll(c.x0, p.x0);
  }
  cached.dispose();
  disposeAll(raw.x0, scaled.x0, sources);
  ae.dispose();
});

gpuTest(
  "latent model file: round trip of both networks and the info; decode(z / s); loadModelFile",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-latent-" });
    const ae = new AutoencoderKL(AE).eval();
    const unet = new DiffusionModelUNet(UNET).eval();
    try {
      const info = {
        unet: UNET,
        scheduler: { clipSample: false },
        volume: {
          shape: [8, 8, 8] as [number, number, number],
          affine: AFFINE,
          range: [-1, 1] as [number, number],
        },
        autoencoder: AE,
        scaleFactor: 0.75,
        latentShape: [2, 4, 4, 4],
        description: "tiny",
      };
      const path = `${dir}/latent.safetensors`;
      await saveLatentModelFile(path, unet.stateDict(), ae.stateDict(), info);
      const loaded = await loadLatentModelFile(path);
      deepStrictEqual(loaded.info, info);
      for (const [a, b] of [[unet, loaded.unet], [ae, loaded.autoencoder]] as const) {
        const [sa, sb] = [a.stateDict(), b.stateDict()];
        deepStrictEqual([...sa.keys()], [...sb.keys()]);
        for (const [k, t] of sa) deepStrictEqual(await sb.get(k)!.toArray(), await t.toArray(), k);
      }
      const z = randn([1, 2, 4, 4, 4], { seed: 1 });
      const decoded = decodeLatents(loaded.autoencoder, z, 0.75);
      const direct = noGrad(() => scope(() => ae.decode(mul(z, 1 / 0.75))));
      deepStrictEqual(await decoded.toArray(), await direct.toArray());
      await loadModelFile(path).then(
        () => ok(false, "latent files need allowLatent"),
        (e: Error) =>
          ok(/is a latent diffusion model .* does not support latent models yet/.test(e.message), e.message),
      );
      const model = await loadModelFile(path, { allowLatent: true });
      ok(model.latent && model.latent.scaleFactor === 0.75, "loadModelFile reads latent files");
      const generator = unetGenerator(model);
      deepStrictEqual(generator.sampleShape, [2, 4, 4, 4]);
      const image = noGrad(() => generator.decode!(z));
      deepStrictEqual(await image.toArray(), await direct.toArray());
      image.dispose();
      disposeModel(model);
      disposeAll(z, decoded, direct);
      loaded.unet.dispose();
      loaded.autoencoder.dispose();
      await saveAutoencoderFile(`${dir}/ae.safetensors`, ae.stateDict(), {
        autoencoder: AE,
        volume: info.volume,
      });
      await loadLatentModelFile(`${dir}/ae.safetensors`).then(
        () => ok(false, "an autoencoder file is not a latent model"),
        (e: Error) => ok(/not a voxgen latent diffusion model file/.test(e.message), e.message),
      );
    } finally {
      ae.dispose();
      unet.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "deno task train --autoencoder, then deno task sample: a latent model makes image-sized volumes",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-ldm-cli-" });
    const ae = new AutoencoderKL(AE);
    try {
      await Deno.mkdir(`${dir}/data`);
      await writeTinyVolumes(`${dir}/data`, 1);
      await saveAutoencoderFile(`${dir}/ae.safetensors`, ae.stateDict(), {
        autoencoder: AE,
        volume: { shape: [16, 16, 16], affine: AFFINE, range: [-1, 1] },
      });
      const out = `${dir}/run`;
      const { stderr } = await capture(() =>
        trainCli([
          ...[
            "--data",
            `${dir}/data`,
            "--out",
            out,
            "--autoencoder",
            `${dir}/ae.safetensors`,
            "--size",
            "16",
          ],
          ...[
            "--channels",
            "4,4",
            "--attention",
            "0,0",
            "--groups",
            "2",
            "--head-channels",
            "4",
            "--steps",
            "2",
            "--previews",
            "0",
          ],
          ...["--batch", "1", "--no-augment"],
        ])
      );
      ok(/latent diffusion on 2×8×8×8 latents .* scale factor \d/.test(stderr), stderr);
      const model = await loadModelFile(`${out}/model.safetensors`, { allowLatent: true });
      ok(model.latent && model.latent.scaleFactor > 0 && model.info.scheduler.clipSample === false);
      deepStrictEqual(model.latent.latentShape, [2, 8, 8, 8]);
      disposeModel(model);
      const nii = `${dir}/sample.nii.gz`;
      await capture(() => sampleCli(["--model", `${out}/model.safetensors`, "--steps", "2", "--out", nii]));
      const volume = await readNifti(nii);
      deepStrictEqual(volume.shape, [16, 16, 16]);
      ok(volume.data.every(Number.isFinite) && volume.data.some((v) => v !== volume.data[0]));
    } finally {
      ae.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test({
  name: "the sampling server lists a latent model and returns image-sized volumes decoded from its latents",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-ldm-server-" });
    await ready();
    const ae = new AutoencoderKL(AE);
    const unet = new DiffusionModelUNet(UNET);
    await Deno.mkdir(`${dir}/models`);
    await saveLatentModelFile(`${dir}/models/latent.safetensors`, unet.stateDict(), ae.stateDict(), {
      unet: UNET,
      scheduler: { clipSample: false },
      volume: { shape: [8, 8, 8], affine: AFFINE, range: [-1, 1] },
      autoencoder: AE,
      scaleFactor: 0.5,
      latentShape: [2, 4, 4, 4],
    });
    ae.dispose();
    unet.dispose();
    const server = await startServer([
      "--data-dir",
      dir,
      "--default-model",
      `${dir}/models/latent.safetensors`,
    ]);
    try {
      const { models } = await (await fetch(`${server.url}/v1/models`)).json();
      const listed = models.find((m: { name: string }) => m.name === "latent");
      ok(listed && !listed.error && listed.shape.join() === "8,8,8", JSON.stringify(models));
      const post = await submit(server.url, { model: "latent", steps: 2, seed: 3 });
      equal(post.status, 202);
      const job = await waitForJob(server.url, post.body.id as string);
      equal(job.status, "done", JSON.stringify(job));
      const res = await fetch(`${server.url}/v1/jobs/${post.body.id}/result`);
      const volume = await readNifti(new Uint8Array(await res.arrayBuffer()));
      deepStrictEqual(volume.shape, [8, 8, 8]);
      ok(volume.data.some((v) => v !== volume.data[0]), "a decoded volume, not a constant");
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
