/**
 * `deno task cli`: routing to every command, the usage listing, unknown commands and exit codes; the
 * `euler-a` sampler name; and `info FILE` on a NIfTI image, a model file, an adapter file and plain
 * safetensors files, read without the GPU.
 *
 * @module
 */

import { deepStrictEqual, match, ok, rejects, strictEqual, throws } from "node:assert";
import { describeFile } from "../../cli/info.ts";
import { COMMANDS, run } from "../../cli/main.ts";
import { encodeSafetensors } from "../../io/safetensors.ts";
import { readNifti } from "../../io/nifti.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { makeScheduler } from "../../samplers/registry.ts";
import { DDIMScheduler, DDPMScheduler, EulerAncestralScheduler } from "../../samplers/scheduler.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { makeTinyAdapter, TINY_AFFINE } from "../server/helpers.ts";
import { capture, makeTinyModel } from "./helpers.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;

/** Runs the router in-process; returns its exit code and what it printed. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let code = -1;
  const out = await capture(async () => void (code = await run(args)));
  return { code, ...out };
}

/** A line of `text` that starts (after indentation) with `name` and then has `value` in the value column. */
function fieldValue(text: string, name: string): string | undefined {
  const line = text.split("\n").find((l) => l.trimStart().startsWith(`${name} `));
  return line?.trimStart().slice(name.length).trim();
}

Deno.test("cli: --help and help list one line per command; no command is a usage error", async () => {
  const help = await cli("--help");
  strictEqual(help.code, 0);
  for (const [name, command] of Object.entries(COMMANDS)) {
    match(help.stdout, new RegExp(`^  ${name} +${command.summary.replace(/[()+.*?|[\]\\]/g, "\\$&")}$`, "m"));
  }
  deepStrictEqual(Object.keys(COMMANDS), [
    "sample",
    "train",
    "finetune",
    "invert",
    "eval",
    "info",
    "import",
    "serve",
  ]);
  strictEqual((await cli("help")).stdout, help.stdout);
  strictEqual((await cli("-h")).stdout, help.stdout);

  const none = await cli();
  strictEqual(none.code, 2);
  match(none.stderr, /Usage: deno task cli <command>/);
  match(none.stderr, /voxgen: no command given/);
  strictEqual(none.stdout, "");
});

Deno.test("cli: every command is routed to its module (its own --help)", async () => {
  const heads: Record<string, RegExp> = {
    sample: /^Usage: deno task sample/,
    train: /^Usage: deno task train/,
    finetune: /^Usage: deno task finetune/,
    invert: /^Usage: deno task invert/,
    eval: /^voxgen eval: metrics of generated volumes/,
    info: /^Usage: deno task info/,
    serve: /^Usage: deno task serve/,
  };
  for (const [name, head] of Object.entries(heads)) {
    const r = await cli(name, "--help");
    strictEqual(r.code, 0, `${name} --help: ${r.stderr}`);
    match(r.stdout, head);
    // `help <command>` is the same as `<command> --help`.
    strictEqual((await cli("help", name)).stdout, r.stdout);
  }
});

Deno.test("cli: unknown commands and bad arguments give prefixed errors and exit codes 2 / 1", async () => {
  const typo = await cli("smaple", "--steps", "2");
  strictEqual(typo.code, 2);
  match(
    typo.stderr,
    /^voxgen: unknown command "smaple" \(did you mean "sample"\?\); commands: sample, train,/,
  );
  const unknown = await cli("frobnicate");
  strictEqual(unknown.code, 2);
  ok(!unknown.stderr.includes("did you mean"), unknown.stderr);
  // Object keys are not commands.
  strictEqual((await cli("constructor")).code, 2);

  // Usage errors: an unknown option, a bad option value, a missing required option.
  const option = await cli("info", "--bogus");
  strictEqual(option.code, 2);
  match(option.stderr, /^info: Unknown option '--bogus'/);
  const sampler = await cli("sample", "--sampler", "heun");
  strictEqual(sampler.code, 2);
  strictEqual(sampler.stderr, 'sample: --sampler: "heun" is not one of ddim, ddpm, euler-a.\n');
  strictEqual(
    (await cli("train", "--out", "x")).stderr,
    "train: --data is required (NIfTI files, folders or globs).\n",
  );
  // eval names itself in its messages: not prefixed twice.
  const evalError = await cli("eval");
  strictEqual(evalError.code, 2);
  match(evalError.stderr, /^eval: give both --real and --fake/);

  // Failures that are not about the arguments: exit code 1.
  const missing = await cli("info", "no/such/file.nii");
  strictEqual(missing.code, 1);
  strictEqual(missing.stderr, "info: no such file no/such/file.nii.\n");
  const notData = await cli("info", CONFIG);
  strictEqual(notData.code, 1);
  match(
    notData.stderr,
    /^info: .*deno\.json is neither a NIfTI image \(\.nii, \.nii\.gz\) nor a safetensors file/,
  );
});

Deno.test("cli: the process exits with the router's code", async () => {
  const exec = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", CONFIG, MAIN, ...args],
      env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  const [ok0, bad] = await Promise.all([exec(["info", fixture("nifti/le_int16.nii")]), exec(["nope"])]);
  strictEqual(ok0.code, 0, new TextDecoder().decode(ok0.stderr));
  match(new TextDecoder().decode(ok0.stdout), /le_int16\.nii: NIfTI-1 image, little-endian/);
  strictEqual(bad.code, 2);
  match(new TextDecoder().decode(bad.stderr), /unknown command "nope"/);
});

Deno.test("sample --sampler: euler-a is Euler ancestral, euler stays an alias", () => {
  ok(makeScheduler("euler-a", {}) instanceof EulerAncestralScheduler);
  ok(makeScheduler("euler", {}) instanceof EulerAncestralScheduler);
  ok(makeScheduler("ddim", {}) instanceof DDIMScheduler);
  ok(makeScheduler("ddpm", {}) instanceof DDPMScheduler);
  throws(() => makeScheduler("euler_a", {}), /sampler "euler_a" is not one of ddim, ddpm, euler-a\./);
});

gpuTest("cli sample --sampler euler-a writes a volume through the router", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-main-" });
  try {
    await makeTinyModel(`${dir}/tiny.safetensors`);
    const r = await cli(
      "sample",
      "--model",
      `${dir}/tiny.safetensors`,
      "--sampler",
      "euler-a",
      "--steps",
      "2",
      "--out",
      `${dir}/s.nii`,
    );
    strictEqual(r.code, 0, r.stderr);
    match(r.stderr, /sampling \(euler-a, seed 0\) 2\/2/);
    const volume = await readNifti(`${dir}/s.nii`);
    deepStrictEqual(volume.shape, [8, 8, 8]);
    deepStrictEqual(volume.affine, TINY_AFFINE);
    // An untrained model's x̂0 is mostly the scaled-up initial noise, clipped to the model's range [-1, 1].
    ok(volume.data.every((v) => v >= -1 && v <= 1), "values in [-1, 1]");
    ok(volume.data.some((v) => v < 0) && volume.data.some((v) => v > 0), "both signs");
    await Deno.stat(`${dir}/s.png`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("info FILE: a NIfTI header, checked against the fixture's known values", async () => {
  const text = await describeFile(fixture("nifti/le_int16.nii"));
  match(text, /le_int16\.nii: NIfTI-1 image, little-endian\n/);
  strictEqual(fieldValue(text, "shape"), "5 × 4 × 3 (60 voxels)");
  strictEqual(fieldValue(text, "datatype"), "int16");
  strictEqual(fieldValue(text, "spacing"), "1.5 × 2 × 2.5 (unknown unit)");
  strictEqual(fieldValue(text, "affine"), "from sform (sform_code 2; qform_code 0)");
  // The affine nibabel reports for the fixture (tests/fixtures/nifti/expected.json).
  const expected = JSON.parse(await Deno.readTextFile(fixture("nifti/expected.json")))["le_int16.nii"];
  const rows = text.split("\n").filter((l) => /^ +\[.*\]$/.test(l)).map((l) => l.trim().slice(1, -1).trim());
  deepStrictEqual(rows.map((r) => r.split(/ +/).map(Number)), expected.affine);
  strictEqual(fieldValue(text, "scaling"), "scl_slope 1, scl_inter 0 (identity)");
  strictEqual(fieldValue(text, "description"), "(none)");
  const values: number[] = expected.values;
  match(fieldValue(text, "values")!, new RegExp(`^${Math.min(...values)} … ${Math.max(...values)}, mean `));

  // The other header variants: big-endian, NIfTI-2, the transform the affine came from, scaling, 4-D.
  match(await describeFile(fixture("nifti/be_int16.nii")), /NIfTI-1 image, big-endian/);
  match(await describeFile(fixture("nifti/nifti2_float32.nii")), /NIfTI-2 image, little-endian/);
  match(
    await describeFile(fixture("nifti/qform_only.nii")),
    /affine +from qform \(qform_code \d+; no sform\)/,
  );
  match(await describeFile(fixture("nifti/no_transform.nii")), /affine +from pixdim/);
  const scaled = await describeFile(fixture("nifti/scaled_uint8.nii"));
  match(scaled, /scaling +scl_slope 0\.5, scl_inter -3 \(applied\)/);
  match(scaled, /values +[-\d.]+ … [-\d.]+, mean [-\d.]+ \(after scaling\)/);
  match(await describeFile(fixture("nifti/gz_int16.nii.gz")), /shape +5 × 4 × 3 \(/);
  match(await describeFile(fixture("nifti/four_d.nii")), /shape +5 × 4 × 3 × 2 \(120 voxels\)[^]*time step/);
});

gpuTest("info FILE: a model file's configuration and parameter count; an adapter file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-main-" });
  try {
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model, { attentionLevels: [false, true], numHeadChannels: 4 });
    const text = await describeFile(model);
    match(text, /tiny\.safetensors: voxgen model file \(voxgen-diffusion-unet\)\n/);
    // The count of the U-Net the file loads into, not just what the file says.
    const { unet } = await loadModelFile(model);
    const count = unet.numParameters();
    const tensors = unet.stateDict().size;
    unet.dispose();
    match(
      fieldValue(text, "parameters")!,
      new RegExp(`^${count.toLocaleString("en-US")} in ${tensors} tensors`),
    );
    strictEqual(fieldValue(text, "description"), "tiny random test model");
    strictEqual(fieldValue(text, "spatial dims"), "3");
    strictEqual(fieldValue(text, "channels"), "8, 8");
    strictEqual(fieldValue(text, "attention"), "no, yes");
    strictEqual(fieldValue(text, "head channels"), "4, 4");
    strictEqual(fieldValue(text, "norm groups"), "4 (eps 1e-6)");
    strictEqual(fieldValue(text, "timesteps"), "1000");
    strictEqual(fieldValue(text, "prediction"), "epsilon");
    strictEqual(fieldValue(text, "shape"), "8 × 8 × 8 (tensor [1, 1, 8, 8, 8])");
    strictEqual(fieldValue(text, "spacing"), "2 × 2 × 2 mm");
    strictEqual(fieldValue(text, "range"), "[-1, 1]");

    // An adapter file gives the same summary as `info --adapter FILE`.
    const adapter = `${dir}/adapter.safetensors`;
    await makeTinyAdapter(model, adapter);
    const viaFlag = await cli("info", "--adapter", adapter);
    strictEqual(viaFlag.code, 0, viaFlag.stderr);
    strictEqual(`${await describeFile(adapter)}\n`, viaFlag.stdout);
    match(viaFlag.stdout, /LoCon adapter: rank 2/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("info FILE: a plain safetensors file's tensors and total; corrupt files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-main-" });
  try {
    const path = `${dir}/plain.safetensors`;
    const tensors = new Map([
      ["encoder.weight", { shape: [3, 4], data: new Float32Array(12) }],
      ["encoder.bias", { shape: [3], data: new Float32Array(3) }],
      ["scale", { shape: [], data: new Float32Array(1) }],
    ]);
    await Deno.writeFile(path, encodeSafetensors(tensors, { note: "hello" }));
    const text = await describeFile(path);
    match(text, /plain\.safetensors: safetensors file, 3 tensors\n/);
    match(text, /^ +note +hello$/m);
    match(text, /^ +encoder\.weight +F32 +\[3, 4\]$/m);
    match(text, /^ +encoder\.bias +F32 +\[3\]$/m);
    match(text, /^ +scale +F32 +\[\]$/m);
    strictEqual(fieldValue(text, "parameters"), "16 (0.1 kB in the file)");

    // A MONAI state dict (not a voxgen model file) is listed tensor by tensor.
    const monai = await describeFile(fixture("monai_unet_3d_attn_deep.safetensors"));
    match(monai, /safetensors file, 147 tensors \(format "monai"\)/);
    match(monai, /^ +conv_in\.conv\.weight +F32 +\[4, 1, 3, 3, 3\]$/m);

    // Truncated: the safetensors parser's own error.
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(`${dir}/cut.safetensors`, bytes.subarray(0, bytes.length - 8));
    await rejects(
      () => describeFile(`${dir}/cut.safetensors`),
      /safetensors .*cut\.safetensors: .*truncated/,
    );
    // A model file whose U-Net options do not make a U-Net.
    await Deno.writeFile(
      `${dir}/bad_model.safetensors`,
      encodeSafetensors(tensors, {
        format: "voxgen-diffusion-unet",
        unet: JSON.stringify({ spatialDims: 4, inChannels: 1, outChannels: 1 }),
        scheduler: "{}",
        volume: "{}",
      }),
    );
    await rejects(
      () => describeFile(`${dir}/bad_model.safetensors`),
      /bad_model\.safetensors: the model file's "unet" metadata is invalid: DiffusionModelUNet: .*spatialDims/,
    );
    // A .nii that is not NIfTI: the NIfTI reader's error.
    await Deno.writeTextFile(`${dir}/fake.nii`, "hello");
    await rejects(() => describeFile(`${dir}/fake.nii`), /NIfTI .*fake\.nii: only 5 bytes: not a NIfTI file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("info FILE needs no GPU", async () => {
  // A process where WebGPU is unavailable describes a NIfTI image and a model file.
  const dir = await Deno.makeTempDir({ prefix: "voxgen-cli-main-" });
  try {
    const model = `${dir}/model.safetensors`;
    await makeTinyModel(model);
    const script = `Object.defineProperty(navigator, "gpu", { get() { throw new Error("no GPU here"); } });
      const { main } = await import(${JSON.stringify(MAIN.replace(/main\.ts$/, "info.ts"))});
      await main([${JSON.stringify(fixture("nifti/le_int16.nii"))}, ${JSON.stringify(model)}]);`;
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--config", CONFIG, script],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(r.stdout);
    strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
    match(stdout, /NIfTI-1 image/);
    match(stdout, /voxgen model file[^]*parameters +43,241 in \d+ tensors[^]*schedule +linear_beta/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
