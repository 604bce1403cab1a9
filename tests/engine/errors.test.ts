import * as V from "../../mod.ts";
import { dispatch, sync } from "../../engine/runtime.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { rejects, throws } from "node:assert";

gpuTest("shape mismatches name the op, the shapes and what is accepted", () => {
  const a = V.zeros([2, 3]);
  const b = V.zeros([4]);
  throws(() => V.add(a, b), /add: shapes \[2, 3\] and \[4\] do not broadcast .*must match or be 1/);
  throws(() => V.matmul(a, a), /matmul: shapes \[2, 3\] and \[2, 3\] are not aligned/);
  throws(() => V.reshape(a, [4, 2]), /reshape: cannot reshape \[2, 3\] \(6 elements\) into \[4, 2\]/);
  throws(() => V.concat([a, b]), /concat: shapes \[2, 3\], \[4\] differ/);
  throws(() => V.sum(a, 2), /sum: axis 2 is out of range for a tensor of rank 2; accepted: -2..1/);
  throws(() => V.permute(a, [0, 0]), /permute: \[0,0\] is not a permutation/);
  V.scope(() =>
    throws(() => V.mseLoss(a, V.zeros([3, 2])), /mseLoss: shapes \[2, 3\] and \[3, 2\] must be equal/)
  );
  disposeAll(a, b);
});

gpuTest("wrong data length and invalid shapes are refused", () => {
  throws(() => V.tensor([1, 2, 3], [2, 2]), /data has 3 values but shape \[2, 2\] needs 4/);
  throws(() => V.tensor([1], [-1]), /shape \[-1\] is invalid/);
  V.scope(() => throws(() => V.clamp(V.zeros([1]), 1, 0), /clamp: bounds \[1, 0\] are invalid/));
});

gpuTest("using a disposed tensor says so", async () => {
  const a = V.ones([2]);
  a.dispose();
  throws(() => V.exp(a), /exp: tensor \[2\] \(id \d+\) was already disposed/);
  await rejects(() => a.toArray(), /toArray: tensor \[2\] .* was already disposed/);
  a.dispose(); // disposing twice is harmless
});

gpuTest("grad of a non-scalar names the shape and the fix", () => {
  const x = V.ones([3], { requiresGrad: true });
  const y = V.mul(x, 2);
  throws(
    () => V.grad(y, [x]),
    /grad\(y, wrt\): y must be a scalar \(one element\) but has shape \[3\]; reduce it first/,
  );
  disposeAll(x, y);
});

gpuTest("a WGSL compile error surfaces with the failing line", async () => {
  const kernel = {
    key: "test:broken",
    family: "test:broken",
    code:
      "@group(0) @binding(0) var<uniform> P: vec4<u32>;\n@compute @workgroup_size(1)\nfn main() {\n  let x: u32 = 1.5;\n}\n",
    bindings: [],
  };
  dispatch(kernel, new Uint32Array(4), [], 1);
  await rejects(() => sync(), (e: Error) =>
    /WGSL kernel "test:broken" failed to compile/.test(e.message) &&
    /line 4/.test(e.message) && /let x: u32 = 1.5;/.test(e.message));
});
