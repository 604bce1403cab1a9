/**
 * `train-control` end to end on a tiny model: writes a control file for the base, resumes from its run folder
 * when rerun with more steps, refuses changed settings and bad arguments.
 */

import { deepStrictEqual, match, ok, rejects } from "node:assert";
import { main as trainControl } from "../../cli/train_control.ts";
import { loadControlFile } from "../../pipelines/control.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { capture, makeTinyModel } from "./helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

gpuTest("train-control writes a ControlNet for the base, resumes, and refuses changed settings", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-train-control-" });
  const base = `${dir}/base.safetensors`;
  await makeTinyModel(base);
  await Deno.writeTextFile(
    `${dir}/data.json`,
    JSON.stringify({ image: `${DATA}MNI152_2009_template.nii.gz`, labels: `${DATA}mni152_pveseg.nii.gz` }),
  );
  const args = (steps: number, extra: string[] = []) => [
    "--kind",
    "controlnet",
    "--base",
    base,
    "--data",
    `${dir}/data.json`,
    "--conditions",
    "tissue",
    "--pool",
    "2",
    "--steps",
    String(steps),
    "--batch",
    "1",
    "--lr",
    "1e-3",
    "--checkpoint-every",
    "1",
    "--out",
    `${dir}/cn.safetensors`,
    ...extra,
  ];
  const first = await capture(() => trainControl(args(2)));
  match(first.stdout, /wrote .*cn\.safetensors/);
  const model = await loadModelFile(base);
  const control = await loadControlFile(`${dir}/cn.safetensors`, model.unet);
  deepStrictEqual([control.info.kind, control.info.conditions, control.info.conditionChannels], [
    "controlnet",
    ["tissue"],
    [3],
  ]);
  control.module.dispose();
  model.unet.dispose();
  const again = await capture(() => trainControl(args(3)));
  ok(again.stderr.includes("resuming from step 2"), again.stderr);
  await rejects(
    () =>
      capture(() =>
        trainControl([...args(4).slice(0, -2), "--lr", "5e-4", "--out", `${dir}/cn.safetensors`])
      ),
    /--lr: 0\.001 in the checkpoint, 0\.0005 now/,
  );
  await rejects(
    () => trainControl(["--kind", "mcm", "--base", base, "--out", `${dir}/x.safetensors`]),
    /--kind is required: one of vcm, controlnet, not "mcm"/,
  );
  await rejects(() => trainControl([...args(1), "--conditions", "skull"]), /unknown condition "skull"/);
  await rejects(() => trainControl([...args(1), "--lambda", "2"]), /apply to --kind vcm only/);
  await Deno.remove(dir, { recursive: true });
});
