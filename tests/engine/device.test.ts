import * as V from "../../mod.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { foldGrid } from "../../engine/runtime.ts";
import { vendorName } from "../../engine/device.ts";
import { deepStrictEqual } from "node:assert";

gpuTest("ready() requests the adapter's maximum limits and deviceInfo() reports them", async () => {
  const info = await V.ready();
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error("no adapter");
  for (const key of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize"]) {
    const wanted = (adapter.limits as unknown as Record<string, number>)[key];
    if (info.limits[key] !== wanted) throw new Error(`${key}: device ${info.limits[key]}, adapter ${wanted}`);
  }
  if (!info.adapter) throw new Error("adapter name missing");
  deepStrictEqual(V.deviceInfo(), info);
});

Deno.test("vendorName: numeric vendor ids become names, names and unknown ids pass through", () => {
  deepStrictEqual(
    ["65541", "4318", "32902", "nvidia", "12345", ""].map(vendorName),
    ["mesa (0x10005)", "nvidia (0x10de)", "intel (0x8086)", "nvidia", "12345", ""],
  );
});

Deno.test("grids over 65535 workgroups fold into more dimensions and cover every workgroup", () => {
  for (const n of [1, 65535, 65536, 1_000_003, 65535 * 65535 + 7]) {
    const [x, y, z] = foldGrid(n);
    if (x > 65535 || y > 65535 || z > 65535) throw new Error(`fold(${n}) = ${[x, y, z]} exceeds the limit`);
    if (x * y * z < n) throw new Error(`fold(${n}) = ${[x, y, z]} covers fewer workgroups`);
  }
});

gpuTest("constructors: zeros, ones, full, arange", async () => {
  const tensors = [V.zeros([2, 2]), V.ones([3]), V.full([2], 7.5), V.arange(5), V.arange(1, 2, 0.25)];
  const values = await Promise.all(tensors.map((t) => t.toArray()));
  deepStrictEqual(values.map((v) => [...v]), [[0, 0, 0, 0], [1, 1, 1], [7.5, 7.5], [0, 1, 2, 3, 4], [
    1,
    1.25,
    1.5,
    1.75,
  ]]);
  const t = V.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  deepStrictEqual([t.shape, t.size, t.dtype, t.requiresGrad], [[2, 3], 6, "float32", false]);
  deepStrictEqual(
    await t.item().catch((e: Error) => e.message),
    "item(): tensor has shape [2, 3], not one element.",
  );
  for (const x of [...tensors, t]) x.dispose();
});
