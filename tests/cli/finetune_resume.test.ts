/**
 * `finetune`: resuming from the run folder's checkpoint, joint and full fine-tuning.
 *
 * @module
 */

import { deepStrictEqual, notDeepStrictEqual, ok, rejects } from "node:assert";
import { modelHash, readAdapterInfo } from "../../adapters/mod.ts";
import { main as finetune } from "../../cli/finetune.ts";
import { loadSafetensors } from "../../io/safetensors.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { capture, QUICK, setup } from "./helpers.ts";

gpuTest("finetune resumes from the run folder's checkpoint; joint and full fine-tuning", async () => {
  const { dir, base, data } = await setup();
  // Warm-up 0 and a constant learning rate: 2 steps then 2 more follow the same path as 4 at once.
  const args = (out: string, steps: number, ...more: string[]) => [
    ...["--base", base, "--adapter", "locon", "--rank", "2", "--data", data, "--out", out],
    ...["--steps", String(steps), "--checkpoint-every", "2", ...QUICK, ...more],
  ];
  await capture(() => finetune(args(`${dir}/straight.safetensors`, 4)));
  await capture(() => finetune(args(`${dir}/resumed.safetensors`, 2)));
  const { stderr } = await capture(() => finetune(args(`${dir}/resumed.safetensors`, 4)));
  ok(stderr.includes("resuming from step 2"), stderr);
  deepStrictEqual(
    (await Deno.readTextFile(`${dir}/resumed.run/loss.csv`)).trim().split("\n").map((l) => l.split(",")[0]),
    ["step", "1", "2", "3", "4"],
  );
  const straight = await loadSafetensors(`${dir}/straight.safetensors`);
  const resumed = await loadSafetensors(`${dir}/resumed.safetensors`);
  deepStrictEqual([...resumed.keys()], [...straight.keys()]);
  for (const [name, t] of straight) {
    // The same kernels on the same inputs in the same order: equal up to f32 rounding.
    assertClose(await resumed.get(name)!.toArray(), await t.toArray(), { rtol: 1e-5, atol: 1e-7, name });
  }
  for (const t of [...straight.values(), ...resumed.values()]) t.dispose();

  // Another rank, or a learning rate, on the same run folder is refused, naming what changed; the finished
  // run is left as it was.
  const finished = await Deno.readTextFile(`${dir}/resumed.run/checkpoint/meta.json`);
  await rejects(
    () => finetune([...args(`${dir}/resumed.safetensors`, 4), "--rank", "3"]),
    /other settings:\n {2}--rank: 2 in the checkpoint, 3 now\nRerun with the checkpoint's settings/,
  );
  await rejects(
    () => finetune([...args(`${dir}/resumed.safetensors`, 4), "--lr", "0.02", "--ema", "0.9"]),
    new RegExp(
      "^Error: the checkpoint in .*/resumed\\.run/checkpoint was made with other settings:\\n" +
        " {2}--lr: 0\\.01 in the checkpoint, 0\\.02 now\\n {2}--ema: 0\\.995 in the checkpoint, 0\\.9 now\\n" +
        "Rerun with the checkpoint's settings to continue that run \\(only the number of steps may change\\), " +
        "or start a new run in another --run-dir \\(or --out\\) \\(or delete .*/resumed\\.run/checkpoint\\)\\.$",
    ),
  );
  deepStrictEqual(await Deno.readTextFile(`${dir}/resumed.run/checkpoint/meta.json`), finished);

  // Joint fine-tuning: the layers without adapters train along and are stored in the adapter file.
  const joint = `${dir}/joint.safetensors`;
  await capture(() => finetune([...args(joint, 1), "--joint", "--ema", "0"]));
  const jointInfo = await readAdapterInfo(joint);
  deepStrictEqual(jointInfo.jointModules, true);
  ok(
    jointInfo.trainedBase.some((p) => p.name === "out.2.conv.weight"),
    JSON.stringify(jointInfo.trainedBase),
  );

  // Full fine-tuning writes a model file: same description of the volumes, new weights.
  const tuned = `${dir}/tuned.safetensors`;
  await capture(() =>
    finetune([
      ...["--base", base, "--adapter", "full", "--data", data, "--out", tuned, "--steps", "2", "--ema", "0"],
      ...QUICK,
    ])
  );
  const before = await loadModelFile(base);
  const after = await loadModelFile(tuned);
  deepStrictEqual(after.info.volume, before.info.volume);
  ok(after.info.description?.includes("fine-tuned by voxgen"), after.info.description);
  notDeepStrictEqual(await modelHash(after.unet), await modelHash(before.unet));
  before.unet.dispose();
  after.unet.dispose();
  await Deno.remove(dir, { recursive: true });
});
