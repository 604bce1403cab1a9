/**
 * The seed-004 3-D DDPM U-Net (Basile et al.: channels [128, 128, 256], attention at the deepest level with
 * 256 head channels, 2 res blocks per level, MONAI's defaults otherwise; 47.5 M parameters): one denoising
 * forward (noGrad, eval) on a [1, 1, S, S, S] volume, and the GPU memory it needs.
 *
 * With `--torch`, the same forward of MONAI's own DiffusionModelUNet on PyTorch CPU is timed in the same run
 * (needs Debian's /usr/bin/python3 with torch and a MONAI tree at $MONAI_SRC, default /tmp/monai; see
 * tests/fixtures/make_monai_unet_fixtures.py), alternating with voxgen's so that both see the same load.
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/unet.ts [--size 32] [--reps 2] [--torch]`
 *
 * @module
 */

import * as V from "../mod.ts";
import { DiffusionModelUNet } from "../models/unet.ts";

function arg(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
}
const size = arg("--size", 32);
const reps = arg("--reps", 2);
const withTorch = Deno.args.includes("--torch");

await V.ready();
console.log(`adapter: ${V.deviceInfo().adapter}`);

const t0 = performance.now();
const unet = new DiffusionModelUNet({
  spatialDims: 3,
  inChannels: 1,
  outChannels: 1,
  channels: [128, 128, 256],
  attentionLevels: [false, false, true],
  numHeadChannels: [0, 0, 256],
  numResBlocks: 2,
  seed: 1,
}).eval();
console.log(
  `built in ${((performance.now() - t0) / 1000).toFixed(2)} s: ${
    unet.numParameters().toLocaleString("en")
  } ` +
    "parameters",
);

const x = V.randn([1, 1, size, size, size], { seed: 7 });
const before = V.memory();

async function voxgenForward(): Promise<number> {
  const start = performance.now();
  const y = V.noGrad(() => unet.forward(x, 500));
  await y.toArray(); // the readback waits for the whole forward
  y.dispose();
  return (performance.now() - start) / 1000;
}

// The fixture script installs an einops stand-in when einops is missing (MONAI's attention needs it).
const FIXTURES_DIR = new URL("../tests/fixtures/", import.meta.url).pathname;
const TORCH_SCRIPT = `
import sys, time, torch
sys.path.insert(0, ${JSON.stringify(FIXTURES_DIR)})
import make_monai_unet_fixtures  # noqa: F401 (einops stand-in)
from monai.networks.nets import DiffusionModelUNet
net = DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(128, 128, 256),
    attention_levels=(False, False, True), num_head_channels=(0, 0, 256), num_res_blocks=2).eval()
x = torch.randn(1, 1, ${size}, ${size}, ${size})
with torch.no_grad():
    net(x, torch.tensor([500]))  # warm-up
    for line in sys.stdin:
        t0 = time.time(); net(x, torch.tensor([500])); print(time.time() - t0, flush=True)
`;

// The warm-up call compiles the pipelines.
console.log(`warm-up forward at ${size}³: ${(await voxgenForward()).toFixed(2)} s`);
const peak = V.memory().peakBytes;

let torch: Deno.ChildProcess | null = null;
let torchLines: AsyncIterator<string> | null = null;
let torchIn: WritableStreamDefaultWriter<Uint8Array> | null = null;
if (withTorch) {
  const monai = Deno.env.get("MONAI_SRC") ?? "/tmp/monai";
  torch = new Deno.Command("/usr/bin/python3", {
    args: ["-c", TORCH_SCRIPT],
    env: { PYTHONPATH: monai },
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  torchLines = torch.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())
    [Symbol.asyncIterator]();
  torchIn = torch.stdin.getWriter();
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, ctl) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const p of parts) if (p.trim()) ctl.enqueue(p.trim());
    },
  });
}

const ours: number[] = [];
const theirs: number[] = [];
for (let i = 0; i < reps; i++) {
  ours.push(await voxgenForward());
  if (torchIn && torchLines) {
    await torchIn.write(new TextEncoder().encode("go\n"));
    theirs.push(Number((await torchLines.next()).value));
  }
}
const best = (xs: number[]) => Math.min(...xs);
console.log(
  `voxgen forward at ${size}³: ${ours.map((s) => s.toFixed(2)).join(", ")} s (best ${best(ours).toFixed(2)})`,
);
if (theirs.length) {
  console.log(
    `MONAI on torch CPU:   ${theirs.map((s) => s.toFixed(2)).join(", ")} s (best ${
      best(theirs).toFixed(2)
    }); ` +
      `voxgen / torch = ${(best(ours) / best(theirs)).toFixed(2)}`,
  );
}
console.log(
  `memory: parameters + input ${(before.liveBytes / 2 ** 20).toFixed(0)} MiB, peak during forward ` +
    `${(peak / 2 ** 20).toFixed(0)} MiB, live after ${(V.memory().liveBytes / 2 ** 20).toFixed(0)} MiB`,
);

if (torchIn && torch) {
  await torchIn.close();
  await torch.status;
}
x.dispose();
unet.dispose();
