/**
 * Every script in examples/ runs (in-process through its `main`, with tiny settings and temporary output
 * folders) and produces what it promises, so the examples never rot.
 *
 * @module
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert";
import { readNifti } from "../../io/nifti.ts";
import { encodeSafetensors, parseSafetensors } from "../../io/safetensors.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { main as loadMonaiWeights, TOLERANCE } from "../../examples/load_monai_weights.ts";
import { main as sampleFromModel } from "../../examples/sample_from_model.ts";
import { main as trainSmallModel } from "../../examples/train_small_model.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { makeTinyModel, TINY_AFFINE } from "../server/helpers.ts";

const EXAMPLES = new URL("../../examples/", import.meta.url).pathname;
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Runs `fn` with a fresh temporary folder, removed afterwards. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-examples-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("examples: each script is tested here, says how to run it, and runs main(Deno.args)", async () => {
  const scripts = [...Deno.readDirSync(EXAMPLES)].map((e) => e.name).filter((n) => n.endsWith(".ts")).sort();
  deepStrictEqual(scripts, ["load_monai_weights.ts", "sample_from_model.ts", "train_small_model.ts"]);
  for (const name of scripts) {
    const source = await Deno.readTextFile(`${EXAMPLES}${name}`);
    ok(source.startsWith("/**\n"), `${name} starts with a header comment`);
    ok(source.includes(`deno run -A examples/${name}`), `${name}'s header says how to run it`);
    match(source, /export async function main\(args: string\[\]\)/);
    match(source, /if \(import\.meta\.main\)[^]*main\(Deno\.args\)/);
    // Examples use the package as its users do: through its exports only.
    for (const [, specifier] of source.matchAll(/^import [^;]*? from "([^"]+)";/gm)) {
      ok(
        specifier.startsWith("node:") ||
          /^@voxgen\/voxgen(\/(engine|nn|models|samplers|adapters|metrics|io|files|pipelines|cli|server))?$/
            .test(specifier),
        `${name} imports ${specifier}, not one of the package's exports`,
      );
    }
  }
});

gpuTest("examples/sample_from_model.ts: a NIfTI volume and a PNG preview from a model file", async () => {
  await withTempDir(async (dir) => {
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model); // 8³ volumes, small random output weights so the sample is not trivial
    const { result, stdout } = await run(() => sampleFromModel([model, `${dir}/out`, "--steps", "3"]));
    deepStrictEqual(result, { nifti: `${dir}/out/sample.nii.gz`, png: `${dir}/out/sample.png` });
    match(stdout, /step 3\/3/);

    const volume = await readNifti(result.nifti);
    deepStrictEqual(volume.shape, [8, 8, 8]);
    deepStrictEqual(volume.affine, TINY_AFFINE);
    ok(volume.data.every((v) => v >= -1 && v <= 1), "clipped to the model's range [-1, 1]");
    ok(new Set(volume.data).size > 256, "a varied volume, not a constant");
    deepStrictEqual([...(await Deno.readFile(result.png)).subarray(0, 8)], PNG_SIGNATURE);
  });
});

gpuTest("examples/train_small_model.ts: trains a few steps and writes a model file that loads", async () => {
  await withTempDir(async (dir) => {
    const [volume] = await writeTinyVolumes(dir, 1); // 12³, resampled by the example to 16³
    const { result, stdout } = await run(() => trainSmallModel([volume, `${dir}/out`, "--steps", "2"]));
    strictEqual(result.model, `${dir}/out/model.safetensors`);
    ok(Number.isFinite(result.finalLoss) && result.finalLoss > 0, `final loss ${result.finalLoss}`);
    match(stdout, /step 2\/2: loss \d/);

    const { unet, info } = await loadModelFile(result.model);
    deepStrictEqual(unet.config.channels, [8, 8]);
    unet.dispose();
    deepStrictEqual(info.volume.shape, [16, 16, 16]);
    deepStrictEqual(info.volume.range, [-1, 1]);
    match(info.description ?? "", /2 steps on volume_0\.nii\.gz/);
    const losses = (await Deno.readTextFile(`${dir}/out/run/loss.csv`)).trim().split("\n");
    strictEqual(losses.length, 3, "a header and one row per step");
  });
});

gpuTest(
  "examples/load_monai_weights.ts: MONAI's output is reproduced within the stated tolerance",
  async () => {
    const { result, stdout } = await run(() => loadMonaiWeights([]));
    deepStrictEqual(result.outputShape, [2, 1, 8, 8, 8]);
    ok(result.relativeError !== null && result.relativeError <= TOLERANCE, `error ${result.relativeError}`);
    match(stdout, /loaded 144 tensors into a 3-D U-Net/);
    match(stdout, /max \|voxgen − MONAI\| \/ RMS\(MONAI\) = \S+: matches MONAI/);

    // A state dict without a stored input and output (as a user's export): a random input, conditioning
    // included (this fixture has cross-attention and class labels), and no comparison.
    await withTempDir(async (dir) => {
      const fixture = new URL("../fixtures/monai_unet_3d_cross_class.safetensors", import.meta.url);
      const file = parseSafetensors(await Deno.readFile(fixture));
      const weights = new Map(
        [...file.tensors].filter(([name]) => !name.startsWith("fixture."))
          .map(([name, t]) => [name, { shape: t.shape, data: t.data as Float32Array }]),
      );
      await Deno.writeFile(
        `${dir}/unet.safetensors`,
        encodeSafetensors(weights, { config: file.metadata.config }),
      );
      const plain = await run(() => loadMonaiWeights([`${dir}/unet.safetensors`]));
      strictEqual(plain.result.relativeError, null);
      deepStrictEqual(plain.result.outputShape, [1, 1, 4, 4, 4]);
      match(plain.stdout, /holds no reference output/);
    });
  },
);

/** Runs an example's `main` with its console output captured. */
async function run<T>(fn: () => Promise<T>): Promise<{ result: T; stdout: string }> {
  let result: T | undefined;
  const { stdout } = await capture(async () => void (result = await fn()));
  return { result: result!, stdout };
}
