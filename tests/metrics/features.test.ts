import assert from "node:assert/strict";
import { tensor } from "../../mod.ts";
import { med3dArchitecture, med3dParameterNames, Med3dResNet } from "../../metrics/features.ts";
import { parseSafetensors } from "../../io/safetensors.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { FIXTURES, imagePair, metricFixtures, num } from "./fixtures.ts";

gpuTest(
  "Med3D ResNet-10/50 (shortcut A and B) match the PyTorch MedicalNet layout on the fixtures",
  async () => {
    const fx = await metricFixtures();
    for (const c of fx.med3d) {
      const net = await Med3dResNet.load(new URL(c.file, FIXTURES).pathname);
      assert.deepEqual(net.architecture, {
        block: c.bottleneck ? "bottleneck" : "basic",
        layers: c.layers,
        width: c.width,
        shortcut: c.shortcut,
      });
      assert.match(
        net.name,
        new RegExp(`ResNet-${c.bottleneck ? 50 : 10} \\(width ${c.width}\\) \\(${c.file}\\)`),
      );
      assert.equal(net.featureCount, c.features_shape[1]);
      const x = tensor(imagePair(c.shape, c.seed, "correlated")[0], c.shape);
      const f = net.extract(x);
      assert.deepEqual(f.shape, c.features_shape);
      // float32 through 10–50 convolutions (sums of ≤ 343 products each) against the float64 forward of the
      // same float32 weights; features are O(1) and agree to 3e-6 (ResNet-50) — 2e-5 leaves room.
      assertClose(await f.toArray(), c.features.map(num), { rtol: 2e-5, atol: 2e-5, name: c.name });
      disposeAll(x, f);
      net.dispose();
    }
  },
);

gpuTest(
  "random-weight MedicalNet ResNets: full-width ResNet-10 builds; narrow ones give [N, 8w·expansion]",
  async () => {
    // The real layout (width 64, 14 M parameters) loads and folds; running it is left to benchmarks, as
    // conv3d re-packs every weight on each call (seconds for this network even on a tiny input).
    const full = Med3dResNet.random(med3dArchitecture(10), 1);
    assert.equal(full.featureCount, 512);
    assert.match(full.name, /random-weight ResNet-10 \(seed 1; not for reporting\)/);
    full.dispose();
    const x = tensor(imagePair([2, 1, 13, 12, 11], 9, "correlated")[0], [2, 1, 13, 12, 11]);
    const cases = [[med3dArchitecture(10, { width: 8 }), 64], [
      med3dArchitecture(50, { width: 4 }),
      128,
    ]] as const;
    for (const [arch, features] of cases) {
      const net = Med3dResNet.random(arch, 2);
      const f = net.extract(x);
      assert.deepEqual(f.shape, [2, features]);
      const values = await f.toArray();
      assert.ok(
        values.every(Number.isFinite) && values.some((v) => v > 0),
        "ReLU features, finite and not all zero",
      );
      f.dispose();
      net.dispose();
    }
    x.dispose();
  },
);

Deno.test("med3dParameterNames lists MedicalNet's state-dict names", () => {
  const names = med3dParameterNames(med3dArchitecture(50));
  // 1 stem + 16 bottlenecks × 3 convs + 4 downsample convs = 53 convs, each with a weight and 4 BN entries.
  assert.equal(names.length, 53 * 5);
  for (const n of ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias"]) {
    assert.ok(names.includes(n), n);
  }
  const a = med3dParameterNames(med3dArchitecture(10, { shortcut: "A" }));
  assert.ok(!a.some((n) => n.includes("downsample")));
});

gpuTest("Med3dResNet reports missing, unexpected and mis-shaped weights, and bad inputs", async () => {
  const fx = await metricFixtures();
  const file = parseSafetensors(await Deno.readFile(new URL(fx.med3d[0].file, FIXTURES)));
  const without = new Map(file.tensors);
  without.delete("module.layer3.0.bn2.running_var");
  without.set("module.head.weight", { dtype: "F32", shape: [1], data: new Float32Array(1) });
  assert.throws(
    () => Med3dResNet.fromStateDict(without),
    /missing: layer3\.0\.bn2\.running_var; unexpected: head\.weight/,
  );
  const reshaped = new Map(file.tensors);
  reshaped.set("module.layer1.0.conv2.weight", {
    dtype: "F32",
    shape: [4, 4, 3, 3, 1],
    data: new Float32Array(144),
  });
  assert.throws(
    () => Med3dResNet.fromStateDict(reshaped),
    /"layer1\.0\.conv2\.weight" has shape \[4, 4, 3, 3, 1\], expected \[4, 4, 3, 3, 3\]/,
  );
  assert.throws(() => Med3dResNet.fromStateDict(new Map()), /no "conv1\.weight"/);
  const net = Med3dResNet.fromStateDict(file.tensors);
  const x = tensor(new Float32Array(2 * 8 * 8 * 8), [1, 2, 8, 8, 8]);
  assert.throws(
    () => net.extract(x),
    /x must be \[N, 1, D, H, W\] \(single-channel volumes\), got \[1, 2, 8, 8, 8\]/,
  );
  x.dispose();
  net.dispose();
});
