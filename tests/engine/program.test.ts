import { deepStrictEqual, notStrictEqual, strictEqual, throws } from "node:assert";
import { defineKernel, kernelKey } from "../../kernels/program.ts";
import { paramsBlock } from "../../kernels/types.ts";
import { map } from "../../engine/ops/map.ts";
import { dispatch, runtimeStats, sync } from "../../engine/runtime.ts";
import { fromData } from "../../engine/tensor.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

/** A generator whose WGSL bakes `value` and `count` in: `out[i] = value` for i < count. */
const fillKernel = defineKernel("test:fill", (value: number, opts: { count: number; tag?: string }) => ({
  code: `
${paramsBlock(1)}
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1)
fn main() { for (var i = 0u; i < ${opts.count}u; i++) { out[i] = ${value.toFixed(1)}; } }
`,
  bindings: ["write"] as const,
}));

Deno.test("kernel keys: family plus the canonical JSON of the generator's arguments", () => {
  strictEqual(kernelKey("conv3d:pad", []), "conv3d:pad");
  strictEqual(kernelKey("map:add", ["add", "a + b", 2, 1]), 'map:add:["add","a + b",2,1]');
  // Object keys in any order give the same key.
  strictEqual(
    kernelKey("x:y", [{ b: 1, a: [2, { d: 3, c: 4 }] }]),
    kernelKey("x:y", [{ a: [2, { c: 4, d: 3 }], b: 1 }]),
  );
  throws(() => kernelKey("conv3d", []), /kernel family "conv3d" must be two fields without ':'/);
  throws(() => kernelKey("map:a:b", []), /must be two fields/);
  throws(() => kernelKey("x:y", [() => 1]), /kernel arguments must be JSON data/);
});

Deno.test("generators with different baked parameters never share a kernel; identical ones do", () => {
  const a = fillKernel(1, { count: 4 });
  const b = fillKernel(2, { count: 4 });
  const c = fillKernel(1, { count: 8 });
  notStrictEqual(a.key, b.key);
  notStrictEqual(a.key, c.key);
  notStrictEqual(a.code, b.code);
  strictEqual(fillKernel(1, { count: 4 }), a, "same arguments: the same kernel object");
  strictEqual(fillKernel(1, { tag: undefined, count: 4 }), a, "an undefined field is no argument");
  strictEqual(a.family, "test:fill");
  strictEqual(a.key.split(":").slice(0, 2).join(":"), a.family, "the profiler's family is the key's head");
  const other = defineKernel((tag: string) => `test:${tag}`, (tag: string) => ({ code: tag, bindings: [] }));
  strictEqual(other("one").family, "test:one");
});

gpuTest("map kernels of one name but different expressions run their own expression", async () => {
  // The map runner's cache used to be keyed by name, arity and rank only: the second expression silently
  // ran the first one's shader.
  const x = fromData(Float32Array.from([1, 2, 3, 4]), [4]);
  const y1 = map("test_same_name", "a + 1.0", [x]);
  const y2 = map("test_same_name", "a * 10.0", [x]);
  deepStrictEqual(Array.from(await y1.toArray()), [2, 3, 4, 5]);
  deepStrictEqual(Array.from(await y2.toArray()), [10, 20, 30, 40]);
  disposeAll(x, y1, y2);
});

gpuTest("one pipeline per key, and two different WGSL sources under one key are refused", async () => {
  const out = fromData(null, [8]);
  const buffer = out.storage("test").buffer;
  const kernel = fillKernel(3, { count: 8 });
  dispatch(kernel, new Uint32Array(4), [buffer], 1);
  const compiled = runtimeStats().pipelines;
  dispatch(fillKernel(3, { count: 8 }), new Uint32Array(4), [buffer], 1);
  strictEqual(runtimeStats().pipelines, compiled, "the same kernel compiles once");
  await sync();
  deepStrictEqual(Array.from(await out.toArray()), [3, 3, 3, 3, 3, 3, 3, 3]);
  const impostor = { ...kernel, code: fillKernel(4, { count: 8 }).code };
  throws(
    () => dispatch(impostor, new Uint32Array(4), [buffer], 1),
    /two different WGSL kernels share the key "test:fill:\[3,\{"count":8\}\]"/,
  );
  out.dispose();
});
