/**
 * Slice models end to end, in-process on 8³ volumes: `train --slots` writes a slice-model file (resuming
 * from its checkpoint), and `sample` builds whole volumes of the requested depth from it, stage by stage.
 */

import { deepStrictEqual, ok, rejects } from "node:assert";
import { main as sample } from "../../cli/sample.ts";
import { main as train } from "../../cli/train.ts";
import { readNifti } from "../../io/nifti.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import {
  generateSliceVolumes,
  isSliceModelFile,
  type LoadedSliceModel,
  loadSliceModelFile,
  stagedChain,
} from "../../pipelines/slice_model.ts";
import { SliceDiffusionUNet } from "../../models/slice_unet.ts";
import { DDIMScheduler } from "../../samplers/scheduler.ts";
import { loadRandom } from "../models/slice_helpers.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

const MODEL = [
  "--size",
  "8",
  "--channels",
  "8,16",
  "--attention",
  "0,1",
  "--groups",
  "4",
  "--head-channels",
  "8",
];

gpuTest(
  "train --slots writes a slice model; sample builds volumes of the requested depth from it",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-slices-" });
    await Deno.mkdir(`${dir}/data`);
    await writeTinyVolumes(`${dir}/data`);
    const run = `${dir}/run`;
    const common = ["--data", `${dir}/data`, "--out", run, ...MODEL, "--batch", "2", "--previews", "0"];
    const args = [...common, "--slots", "4"];
    await capture(() => train([...args, "--steps", "2", "--prediction", "v_prediction"]));
    // Resuming continues the run (the slot count is one of its recorded settings).
    const resumed = await capture(() => train([...args, "--steps", "3", "--prediction", "v_prediction"]));
    ok(resumed.stderr.includes("resuming from step 2"), resumed.stderr);
    deepStrictEqual((await Deno.readTextFile(`${run}/loss.csv`)).trim().split("\n").length, 4);
    const changed = capture(() =>
      train([...common, "--slots", "6", "--steps", "3", "--prediction", "v_prediction"])
    );
    await rejects(changed, /slots: 4 in the checkpoint, 6 now/);

    const modelPath = `${run}/model.safetensors`;
    ok(await isSliceModelFile(modelPath));
    await rejects(loadModelFile(modelPath), /is a slice model \(cDPM\); load it with loadSliceModelFile/);
    const model = await loadSliceModelFile(modelPath);
    deepStrictEqual([model.info.slots, model.info.volume.shape, model.info.scheduler.predictionType], [
      4,
      [8, 8, 8],
      "v_prediction",
    ]);
    model.net.dispose();

    const out = `${dir}/sample.nii`;
    const printed = await capture(() =>
      sample(["--model", modelPath, "--depth", "11", "--steps", "2", "--batch", "2", "--out", out])
    );
    // 11 slices with 4 slots: stages of 2 slices, the last of 1; progress names the stage.
    ok(printed.stderr.includes("stage 6/6"), printed.stderr);
    for (const name of [`${dir}/sample_0.nii`, `${dir}/sample_1.nii`]) {
      const volume = await readNifti(name);
      deepStrictEqual(volume.shape.slice(0, 3), [8, 8, 11]);
      ok(volume.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1));
    }
    await rejects(
      capture(() => sample(["--depth", "4", "--out", `${dir}/x.nii`])),
      /a depth was given, but .* is not a slice model/,
    );
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "train --independent-slices writes a slice model without slice attention; sample makes each volume in one stage",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-independent-" });
    await Deno.mkdir(`${dir}/data`);
    await writeTinyVolumes(`${dir}/data`);
    const run = `${dir}/run`;
    const args = ["--data", `${dir}/data`, "--out", run, ...MODEL, "--batch", "2", "--previews", "0"];
    await rejects(
      capture(() => train([...args, "--independent-slices", "3", "--slots", "4", "--steps", "1"])),
      /--slots and --independent-slices are two kinds of slice model/,
    );
    await capture(() => train([...args, "--independent-slices", "3", "--steps", "2"]));
    const changed = capture(() => train([...args, "--slots", "4", "--steps", "3"]));
    await rejects(changed, /independent-slices: 3 in the checkpoint, unset now/);
    const modelPath = `${run}/model.safetensors`;
    const model = await loadSliceModelFile(modelPath);
    deepStrictEqual([model.net.config.sliceAttention, model.info.slots], [false, 1]);
    ok(!model.net.namedParameters().some(([n]) => n.includes("slice_attention")));
    model.net.dispose();
    const out = `${dir}/sample.nii`;
    const printed = await capture(() =>
      sample(["--model", modelPath, "--depth", "8", "--steps", "2", "--batch", "2", "--out", out])
    );
    // One stage: the 2 steps are all there is (no "stage i/n" in the progress).
    ok(printed.stderr.includes(" 2/2 (100%)") && !printed.stderr.includes("stage"), printed.stderr);
    const volume = await readNifti(`${dir}/sample_1.nii`);
    deepStrictEqual(volume.shape.slice(0, 3), [8, 8, 8]);
    ok(volume.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1));
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest(
  "stagedChain (sample's signature, for the generation pipeline) is generateSliceVolumes, progress over all stages",
  async () => {
    const net = new SliceDiffusionUNet({
      channels: [8, 16],
      attentionLevels: [false, true],
      numHeadChannels: 8,
      normNumGroups: 4,
    });
    loadRandom(net, 4, 0.3);
    net.eval();
    const model: LoadedSliceModel = {
      net,
      info: {
        network: net.config,
        slots: 4,
        scheduler: {},
        volume: {
          shape: [8, 4, 6],
          affine: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
          range: [-1, 1],
        },
      },
    };
    const steps: string[] = [];
    const chain = stagedChain(model);
    const unused = () => {
      throw new Error("the slice chain must not call the generic denoiser");
    };
    const a = await chain(unused, new DDIMScheduler(), {
      shape: [2, 1, 5, 4, 8],
      steps: 2,
      seed: 9,
      onProgress: (p) => steps.push(`${p.step}/${p.total}`),
    });
    const b = await generateSliceVolumes(model, new DDIMScheduler(), {
      volumes: 2,
      depth: 5,
      steps: 2,
      seed: 9,
    });
    deepStrictEqual(a.shape, [2, 1, 5, 4, 8]);
    deepStrictEqual(await a.toArray(), await b.toArray());
    // 5 slices with 4 slots: stages of 2, 2, 1 slices.
    deepStrictEqual(steps, ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]);
    a.dispose();
    b.dispose();
    await rejects(
      chain(unused, new DDIMScheduler(), { shape: [1, 1, 5, 8, 8], steps: 1 }),
      /generates \[B, 1, depth, 4, 8\], not \[1, 1, 5, 8, 8\]/,
    );
    net.dispose();
  },
);
