/**
 * Loading MONAI weights: build voxgen's DiffusionModelUNet from a MONAI `DiffusionModelUNet(**config)`
 * config, load the MONAI state dict (saved as safetensors, names unchanged), and run it. When the file also
 * holds an input and MONAI's output for it (as voxgen's test fixtures do), the output is compared.
 *
 *     deno run -A examples/load_monai_weights.ts [STATE_DICT.safetensors]
 *
 * The default is tests/fixtures/monai_unet_3d_attn_deep.safetensors. To export your own model from Python:
 *
 *     from safetensors.torch import save_file
 *     save_file(unet.state_dict(), "unet.safetensors", metadata={"config": json.dumps(config)})
 *
 * where `config` is the dict of arguments the MONAI model was built with.
 *
 * @module
 */

import { DiffusionModelUNet, noGrad, randn, ready, unetOptionsFromMonai } from "@voxgen/voxgen";
import { loadSafetensorsFile, pathOrUrl } from "@voxgen/voxgen/files";

const DEFAULT_FILE = pathOrUrl(
  new URL("../tests/fixtures/monai_unet_3d_attn_deep.safetensors", import.meta.url),
);

/**
 * Largest |voxgen − MONAI| over the RMS of MONAI's output that counts as a match: f32 rounding through a
 * few dozen layers gives ~3e-6 (PyTorch's own f32 forward misses the float64 answer by as much), while a
 * wrong weight name, layout or formula moves the output by far more (see tests/models/unet.test.ts).
 */
export const TOLERANCE = 2e-5;

/** What the run found: the relative error when the file holds MONAI's output for its input, else null. */
export interface MonaiCheck {
  /** Max |voxgen − MONAI| / RMS(MONAI), or null when the file holds no reference output. */
  relativeError: number | null;
  /** Shape of the output. */
  outputShape: number[];
}

/** Loads the state dict, runs the model once and, when possible, compares with MONAI's output. */
export async function main(args: string[]): Promise<MonaiCheck> {
  const path = args[0] ?? DEFAULT_FILE;
  await ready();
  const { tensors, metadata } = await loadSafetensorsFile(path);
  if (!metadata.config) {
    throw new Error(
      `${path} has no "config" metadata: save the MONAI constructor arguments with the weights.`,
    );
  }
  const config = JSON.parse(metadata.config);
  const unet = new DiffusionModelUNet(unetOptionsFromMonai(config)).eval();
  // The fixtures keep their test input and MONAI's output next to the weights as `fixture.*`.
  const report = unet.loadStateDict(tensors, { ignore: (name) => name.startsWith("fixture.") });
  console.log(
    `${path}: loaded ${report.loaded.length} tensors into a ${config.spatial_dims}-D U-Net with ` +
      `${unet.numParameters().toLocaleString("en-US")} parameters`,
  );

  // The inputs: the stored ones, or random ones of a small size the U-Net's levels can halve.
  const { inChannels, channels, withConditioning, crossAttentionDim, numClassEmbeds } = unet.config;
  const size = 2 ** channels.length;
  const x = tensors.get("fixture.x") ??
    randn([1, inChannels, ...Array(config.spatial_dims).fill(size)], { seed: 1 });
  const batch = x.shape[0];
  const timesteps = tensors.get("fixture.timesteps") ?? Array(batch).fill(500);
  const context = tensors.get("fixture.context") ??
    (withConditioning ? randn([batch, 4, crossAttentionDim!], { seed: 2 }) : undefined);
  const classLabels = tensors.get("fixture.class_labels") ??
    (numClassEmbeds ? Array(batch).fill(0) : undefined);
  const y = noGrad(() => unet.forward(x, timesteps, { context, classLabels }));
  const actual = await y.toArray();
  const outputShape = [...y.shape];
  const expected = tensors.get("fixture.output");
  const relativeError = expected ? relError(actual, await expected.toArray()) : null;

  for (const t of new Set([x, context, y, ...tensors.values()])) t?.dispose();
  unet.dispose();

  console.log(`output [${outputShape.join(", ")}]`);
  if (relativeError === null) {
    console.log("the file holds no reference output (fixture.output); nothing to compare with");
  } else {
    const verdict = relativeError <= TOLERANCE ? "matches MONAI" : "DOES NOT match MONAI";
    console.log(
      `max |voxgen − MONAI| / RMS(MONAI) = ${
        relativeError.toExponential(2)
      }: ${verdict} (tolerance ${TOLERANCE.toExponential()})`,
    );
  }
  return { relativeError, outputShape };
}

/** max |a − e| / RMS(e). */
function relError(actual: Float32Array, expected: Float32Array): number {
  let worst = 0;
  let squares = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    squares += expected[i] ** 2;
  }
  return worst / Math.sqrt(squares / expected.length);
}

if (import.meta.main) {
  const { relativeError } = await main(Deno.args);
  if (relativeError !== null && relativeError > TOLERANCE) Deno.exit(1);
}
