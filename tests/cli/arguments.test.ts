/**
 * `finetune`, `sample --adapter` and `info --adapter` refuse bad arguments with errors that say what is wrong.
 *
 * @module
 */

import { deepStrictEqual, rejects, throws } from "node:assert";
import { main as finetune } from "../../cli/finetune.ts";
import { main as info } from "../../cli/info.ts";
import { main as sample, parseAdapterSpec } from "../../cli/sample.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { capture, makeTinyModel, setup } from "./helpers.ts";

gpuTest("finetune, sample and info refuse bad arguments with clear errors", async () => {
  const { dir, base, data } = await setup();
  const out = `${dir}/a.safetensors`;
  const need = ["--data", data, "--out", out];
  await rejects(() => finetune(["--adapter", "locon", ...need]), /--base is required/);
  await rejects(
    () => finetune(["--base", base, "--adapter", "lora", ...need]),
    /--adapter: "lora" is not one of locon, loha, lokr, tenvoo-l, tenvoo-q, quanta, full/,
  );
  await rejects(() => finetune(["--base", base, ...need]), /--adapter is required/);
  await rejects(
    () => finetune(["--base", base, "--adapter", "locon", "--rank", "0", ...need]),
    /--rank: "0" is not an integer in 1\.\.4096/,
  );
  await rejects(
    () => finetune(["--base", base, "--adapter", "full", "--rank", "4", ...need]),
    /--adapter full trains every parameter; --rank applies only to adapters/,
  );
  await rejects(
    () => finetune(["--base", `${dir}/nothing.safetensors`, "--adapter", "locon", ...need]),
    /--base: no such file/,
  );
  await rejects(
    () => finetune(["--base", base, "--adapter", "locon", "--data", data, "--out", `${dir}/a.bin`]),
    /--out: ".*a\.bin" must end in \.safetensors/,
  );
  await rejects(
    () => finetune(["--base", base, "--adapter", "full", "--data", data, "--out", base]),
    /is the base model itself/,
  );
  await rejects(() => finetune(["--base", base, "--adapter", "locon", "--out", out]), /--data is required/);

  // sample --adapter: FILE[:WEIGHT] parsing, missing files, and an adapter of another base model.
  deepStrictEqual(parseAdapterSpec("a.safetensors"), { path: "a.safetensors", weight: 1 });
  deepStrictEqual(parseAdapterSpec("dir:x/a.safetensors:-0.5"), {
    path: "dir:x/a.safetensors",
    weight: -0.5,
  });
  deepStrictEqual(parseAdapterSpec("a:1e-1"), { path: "a", weight: 0.1 });
  throws(() => parseAdapterSpec("a.safetensors:"), /ends in ":"/);
  await rejects(
    () => sample(["--model", base, "--adapter", `${dir}/missing.safetensors:0.5`]),
    /--adapter: no such file .*missing\.safetensors\./,
  );
  const adapter = `${dir}/b.safetensors`;
  await capture(() =>
    finetune([
      "--base",
      base,
      "--adapter",
      "loha",
      "--data",
      data,
      "--out",
      adapter,
      "--steps",
      "1",
      "--ema",
      "0",
    ])
  );
  const other = `${dir}/other.safetensors`;
  await makeTinyModel(other, { seed: 2 });
  await rejects(
    () => sample(["--model", other, "--adapter", adapter, "--steps", "1", "--out", `${dir}/x.nii`]),
    /was trained on another base model/,
  );

  // info --adapter: a model file is not an adapter, a missing file is named.
  await rejects(() => info(["--adapter", base]), /not a voxgen adapter/);
  await rejects(() => info(["--adapter", `${dir}/missing.safetensors`]), /--adapter: no such file/);
  await Deno.remove(dir, { recursive: true });
});
