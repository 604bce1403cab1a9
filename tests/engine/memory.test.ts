import * as V from "../../mod.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { throws } from "node:assert";

gpuTest("200 training steps inside scope end with the live bytes of the first step", async () => {
  const x = V.tensor(Float32Array.from({ length: 64 * 32 }, (_, i) => Math.sin(i)), [64, 32]);
  const w = V.tensor(Float32Array.from({ length: 32 * 16 }, (_, i) => Math.cos(i) * 0.1), [32, 16], {
    requiresGrad: true,
  });
  let afterFirst = -1;
  let pooledAfterSecond = -1;
  let poolGrowth = 0;
  for (let step = 0; step < 200; step++) {
    V.scope(() => {
      const h = V.relu(V.matmul(x, w));
      const loss = V.mean(V.square(V.sub(V.softmax(h), 1 / 16)));
      const [g] = V.grad(loss, [w]);
      return V.mul(g, 0.1);
    }).dispose();
    const m = V.memory();
    if (step === 0) afterFirst = m.liveBytes;
    if (step === 1) pooledAfterSecond = m.liveBytes + m.pooledBytes;
    if (step > 1) poolGrowth = Math.max(poolGrowth, m.liveBytes + m.pooledBytes - pooledAfterSecond);
  }
  const end = V.memory();
  if (end.liveBytes !== afterFirst) {
    throw new Error(`live bytes after step 1: ${afterFirst}, after 200: ${end.liveBytes}`);
  }
  await V.sync();
  if (poolGrowth > 0) throw new Error(`the pool grew by ${poolGrowth} bytes over equal-shaped steps`);
  disposeAll(x, w);
});

gpuTest("a sampling-style loop (no grad) runs in constant memory", async () => {
  let x = V.tensor(Float32Array.from({ length: 4096 }, (_, i) => i / 4096), [16, 16, 16]);
  let first = -1;
  for (let step = 0; step < 200; step++) {
    const next = V.noGrad(() => V.scope(() => V.sub(x, V.mul(V.tanh(x), 0.01))));
    x.dispose();
    x = next;
    if (step === 0) first = V.memory().liveBytes;
  }
  if (V.memory().liveBytes !== first) {
    throw new Error(`live bytes grew from ${first} to ${V.memory().liveBytes}`);
  }
  const v = await x.toArray();
  if (!v.every(Number.isFinite)) throw new Error("non-finite values");
  x.dispose();
});

gpuTest("a released buffer is not reused before the submit that last read it", async () => {
  // y = a + 1 is recorded but not yet submitted; a is then freed and a new tensor of the same size is
  // uploaded. If the pool handed a's buffer out again, the upload would overwrite a before y is computed.
  const n = 1024;
  const a = V.tensor(new Float32Array(n).fill(1), [n]);
  const y = V.add(a, 1);
  a.dispose();
  const b = V.tensor(new Float32Array(n).fill(100), [n]);
  assertClose(await y.toArray(), new Float32Array(n).fill(2), { name: "y after reuse pressure" });
  disposeAll(b, y);
});

gpuTest("scope keeps returned tensors (nested structures) and frees the rest", async () => {
  const before = V.memory().liveTensors;
  const result = V.scope(() => {
    const a = V.ones([3]);
    const b = V.add(a, 1);
    V.mul(b, 2); // temporary: freed
    return { b, list: [V.neg(b)], inner: V.scope(() => V.exp(b)) };
  });
  if (V.memory().liveTensors !== before + 3) {
    throw new Error(`expected 3 live tensors, found ${V.memory().liveTensors - before}`);
  }
  assertClose(await result.list[0].toArray(), [-2, -2, -2], { name: "kept tensor" });
  const kept = V.scope(() => V.keep(V.ones([2])));
  disposeAll(result.b, result.list, result.inner, kept);
  throws(() => V.scope(() => Promise.resolve(1)), /returned a Promise/);
});

gpuTest("memory() reports a high-water mark", () => {
  const before = V.memory();
  const big = V.zeros([1 << 20]);
  const peak = V.memory().peakBytes;
  big.dispose();
  if (peak < before.liveBytes + 4 * (1 << 20)) throw new Error(`peak ${peak} below what was allocated`);
  if (V.memory().liveBytes !== before.liveBytes) throw new Error("zeros was not freed");
});
