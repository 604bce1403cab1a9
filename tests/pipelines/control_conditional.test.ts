/**
 * Control on conditional bases: prompts (with guidance and textual-inversion embeddings) and class labels
 * reach the frozen U-Net under a control module as they do without one, so a zero-initialised VCM or
 * ControlNet gives exactly the uncontrolled sample of the same request, and a woken one changes it. Models
 * whose input carries condition channels are refused with what control modules accept. A module trains on a
 * conditional base under the base's null condition (empty prompt, null class).
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { noGrad, randn, type Tensor } from "../../mod.ts";
import { copyInto, map } from "../../engine/ops/map.ts";
import { modelHash } from "../../adapters/hash.ts";
import {
  type ControlKind,
  controlledGenerator,
  controlTrainingNetwork,
  createControl,
  nullConditioning,
  saveControlFile,
} from "../../pipelines/control.ts";
import { train } from "../../pipelines/train.ts";
import { readNifti, writeNifti } from "../../io/nifti.ts";
import { main as sample } from "../../cli/sample.ts";
import { capture } from "../cli/helpers.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { generate, type GenerationRequest } from "../../pipelines/generate.ts";
import { loadGenerator, loadModelWithEmbeddings } from "../../pipelines/generators.ts";
import { disposeModel, loadModelFile } from "../../pipelines/modelfile.ts";
import { sphereMask } from "../../pipelines/inpaint.ts";
import { makeTinyEmbedding, makeTinyModel, makeTinyTokenModel } from "../server/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

const TINY_VCM = {
  encoderChannels: [4],
  encoderGroups: 4,
  unet: { channels: [8, 8], attentionLevels: [false, false], numResBlocks: 1, normNumGroups: 4 },
  hiddenChannels: 8,
  headChannels: 8,
};

/** A zero-initialised control file and the same module with its output layers redrawn ("woke"). */
async function controlFiles(kind: ControlKind, modelPath: string, dir: string): Promise<[string, string]> {
  const model = await loadModelFile(modelPath);
  const control = await createControl(kind, model.unet, {
    conditions: ["mask"],
    conditionChannels: [1],
    vcm: TINY_VCM,
  });
  await saveControlFile(`${dir}/${kind}-zero.safetensors`, control);
  noGrad(() => {
    for (const [name, t] of control.module.namedParameters()) {
      if (!/^(mlp_gamma|mlp_beta|controlnet_down_blocks|controlnet_mid_block)\./.test(name)) continue;
      const w = randn(t.shape, { seed: t.size });
      copyInto(t, w);
      w.dispose();
    }
  });
  await saveControlFile(`${dir}/${kind}-woke.safetensors`, control);
  control.module.dispose();
  disposeModel(model);
  return [`${dir}/${kind}-zero.safetensors`, `${dir}/${kind}-woke.safetensors`];
}

const CONDITION = { data: sphereMask([8, 8, 8], [3.5, 3.5, 3.5], 2.6), shape: [8, 8, 8], source: "ball" };

/** The uncontrolled volumes of `request`, then checks the zero control reproduces them and the woke one not. */
async function checkIdentity(
  modelPath: string,
  files: [string, string],
  request: GenerationRequest,
  embeddings: string[] = [],
): Promise<void> {
  const plain = await loadGenerator(modelPath, { embeddings });
  const expected = await generate(plain, request);
  plain.dispose();
  for (const [file, same] of [[files[0], true], [files[1], false]] as const) {
    const { model, vectors } = await loadModelWithEmbeddings(modelPath, { embeddings });
    const controlled = await controlledGenerator(model, { file, conditions: [CONDITION] }, vectors);
    const got = await generate(controlled, request);
    controlled.dispose();
    if (same) deepStrictEqual(got.volumes, expected.volumes, `${file}: not the uncontrolled sample`);
    else {ok(
        got.volumes[0].some((v, i) => v !== expected.volumes[0][i]),
        `${file}: the control changed nothing`,
      );}
  }
}

for (const kind of ["vcm", "controlnet"] as ControlKind[]) {
  gpuTest(
    `${kind} on a prompt-conditioned model: a guided prompt with an embedding passes through`,
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
      const modelPath = `${dir}/tokens.safetensors`;
      await makeTinyTokenModel(modelPath);
      await makeTinyEmbedding(modelPath, `${dir}/new.ti.safetensors`, "<new>", 1);
      const files = await controlFiles(kind, modelPath, dir);
      await checkIdentity(
        modelPath,
        files,
        { sampler: "ddim", steps: 3, seed: 4, prompt: "<t1>:0.5 AND <new>:0.5", guidanceScale: 2 },
        [`${dir}/new.ti.safetensors`],
      );
      await Deno.remove(dir, { recursive: true });
    },
  );

  gpuTest(`${kind} on a class-conditional model: the class label passes through`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
    const modelPath = `${dir}/classes.safetensors`;
    await makeTinyModel(modelPath, { numClassEmbeds: 3 });
    const files = await controlFiles(kind, modelPath, dir);
    await checkIdentity(modelPath, files, { sampler: "ddim", steps: 3, seed: 4, classLabel: 1 });
    await Deno.remove(dir, { recursive: true });
  });
}

/** One image-grid pair per step: a random 0/1 mask and the volume it determines. */
function tinyPairs(): (step: number) => { x0: Tensor; control: { conditions: Tensor[] } } {
  return (step) =>
    noGrad(() => {
      const noise = randn([2, 1, 8, 8, 8], { seed: 100 + step });
      const mask = map("step", "select(0.0, 1.0, a > 0.0)", [noise]);
      noise.dispose();
      return { x0: map("scale", "1.6 * a - 0.8", [mask]), control: { conditions: [mask] } };
    });
}

for (
  const [what, make] of [
    ["a prompt-conditioned", makeTinyTokenModel],
    [
      "a class-conditional",
      (path: string) =>
        makeTinyModel(path, { numClassEmbeds: 3 }, { conditioning: { nullClass: 2, uncondProb: 0.1 } }),
    ],
  ] as const
) {
  for (const kind of ["vcm", "controlnet"] as ControlKind[]) {
    gpuTest(
      `train ${kind} on ${what} base under its null condition; the base stays bit-identical`,
      async () => {
        const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
        await make(`${dir}/base.safetensors`);
        const model = await loadModelFile(`${dir}/base.safetensors`);
        const before = await modelHash(model.unet);
        const control = await createControl(kind, model.unet, {
          conditions: ["mask"],
          conditionChannels: [1],
          vcm: TINY_VCM,
        });
        const scheduler = new DDPMScheduler(model.info.scheduler);
        const network = controlTrainingNetwork(model.unet, scheduler, control, {
          baseConditioning: nullConditioning(model),
        });
        const losses: number[] = [];
        control.module.train();
        await train(network, scheduler, tinyPairs(), {
          steps: 3,
          lr: 1e-3,
          warmupSteps: 1,
          emaDecay: 0,
          outDir: dir,
          progress: false,
          checkpointEvery: 1000,
          onStep: (s) => losses.push(s.loss),
        });
        ok(losses.length === 3 && losses.every(Number.isFinite), `losses ${losses}`);
        deepStrictEqual(await modelHash(model.unet), before);
        control.module.dispose();
        disposeModel(model);
        await Deno.remove(dir, { recursive: true });
      },
    );
  }
}

gpuTest("nullConditioning: the empty prompt, the null class; refused without a null class", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
  await makeTinyModel(`${dir}/plain.safetensors`);
  await makeTinyModel(`${dir}/classes.safetensors`, { numClassEmbeds: 3 });
  await makeTinyModel(`${dir}/null.safetensors`, { numClassEmbeds: 3 }, { conditioning: { nullClass: 2 } });
  const plain = await loadModelFile(`${dir}/plain.safetensors`);
  deepStrictEqual(nullConditioning(plain), undefined);
  const classes = await loadModelFile(`${dir}/classes.safetensors`);
  throws(() => nullConditioning(classes), /class-conditional \(3 classes\) but learned no null class/);
  const withNull = await loadModelFile(`${dir}/null.safetensors`);
  const labels = nullConditioning(withNull)!(2).classLabels!;
  deepStrictEqual(await labels.toArray(), Float32Array.from([2, 2]));
  labels.dispose();
  for (const m of [plain, classes, withNull]) disposeModel(m);
  await Deno.remove(dir, { recursive: true });
});

gpuTest(
  "sample --control-model with --embedding and a guided prompt: a zero VCM gives the plain sample",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
    const modelPath = `${dir}/tokens.safetensors`;
    await makeTinyTokenModel(modelPath);
    await makeTinyEmbedding(modelPath, `${dir}/new.ti.safetensors`, "<new>", 1);
    const [zero] = await controlFiles("vcm", modelPath, dir);
    await writeNifti(`${dir}/mask.nii.gz`, { data: CONDITION.data, shape: [8, 8, 8] });
    const common = [
      "--model",
      modelPath,
      "--steps",
      "2",
      "--embedding",
      `${dir}/new.ti.safetensors`,
      "--prompt",
      "<new>",
      "--cfg",
      "2",
    ];
    await capture(() => sample([...common, "--out", `${dir}/plain.nii.gz`]));
    const { stdout } = await capture(() =>
      sample([
        ...common,
        "--control-model",
        zero,
        "--control",
        `${dir}/mask.nii.gz`,
        "--out",
        `${dir}/c.nii.gz`,
      ])
    );
    ok(stdout.includes(`wrote ${dir}/c.nii.gz`), stdout);
    deepStrictEqual((await readNifti(`${dir}/c.nii.gz`)).data, (await readNifti(`${dir}/plain.nii.gz`)).data);
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest("control modules refuse models whose input carries condition channels", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-control-cond-" });
  const plainPath = `${dir}/plain.safetensors`;
  await makeTinyModel(plainPath);
  const [file] = await controlFiles("vcm", plainPath, dir);
  const modelPath = `${dir}/channels.safetensors`;
  await makeTinyModel(modelPath, { inChannels: 2 }, { conditioning: { conditionChannels: 1 } });
  await rejects(
    async () => controlledGenerator(await loadModelFile(modelPath), { file, conditions: [CONDITION] }),
    /control modules do not apply to models that take condition channels \(this one takes 1\)/,
  );
  await Deno.remove(dir, { recursive: true });
});
