/**
 * The buffer pool's policy (engine/pool.ts): a request submits pending work to reuse a released buffer of its
 * size instead of creating one, and the cache of free buffers stays under its cap by dropping the least
 * recently released. Tiny tensors; the cap is set through `poolSettings`.
 */

import * as V from "../../mod.ts";
import { bucketSize, poolSettings, poolStats, trimPool } from "../../engine/pool.ts";
import { runtimeStats } from "../../engine/runtime.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

const KiB = 1024;

/** Runs `fn` with the pool's settings changed, restoring them after. */
async function withPool(settings: Partial<typeof poolSettings>, fn: () => Promise<void>): Promise<void> {
  const saved = { ...poolSettings };
  Object.assign(poolSettings, settings);
  try {
    await fn();
  } finally {
    Object.assign(poolSettings, saved);
  }
}

gpuTest("pool: the cache keeps at most its cap, dropping the least recently released buffers", async () => {
  await withPool({ minCacheBytes: 0, cacheFraction: 0.25 }, async () => {
    await V.sync();
    trimPool();
    // Eight tensors of distinct buckets (64 KiB · 1…8), all live at once, then released oldest first.
    const sizes = Array.from({ length: 8 }, (_, k) => (k + 1) * 64 * KiB);
    const ts = sizes.map((bytes) => V.zeros([bytes / 4]));
    const buffers = ts.map((t) => t.storage().buffer);
    await V.sync();
    for (const t of ts) t.dispose();
    await V.sync(); // the releases become free, and the cache is trimmed to its cap
    const cap = 0.25 * poolStats().maxLiveBytes;
    // Expected survivors: drop from the oldest until the rest fits the cap.
    let kept = sizes.reduce((a, b) => a + bucketSize(b), 0);
    let firstKept = 0;
    while (kept > cap) kept -= bucketSize(sizes[firstKept++]);
    const stats = poolStats();
    if (stats.pooledBytes !== kept) {
      throw new Error(`cached ${stats.pooledBytes} bytes, expected ${kept} (cap ${cap})`);
    }
    if (firstKept === 0) throw new Error(`the cap (${cap} bytes) dropped nothing: the test checks nothing`);
    // The newest release is handed out again; the oldest was destroyed, so its size gets a new buffer.
    const newest = V.zeros([sizes[7] / 4]);
    const oldest = V.zeros([sizes[0] / 4]);
    try {
      if (newest.storage().buffer !== buffers[7]) throw new Error("the newest release was not reused");
      if (buffers.includes(oldest.storage().buffer)) throw new Error("a dropped buffer was handed out");
      assertClose(await newest.toArray(), new Float32Array(sizes[7] / 4), { name: "reused buffer zeroed" });
    } finally {
      disposeAll(newest, oldest);
    }
  });
});

gpuTest("pool: a request submits pending work to reuse a released buffer of its size", async () => {
  await withPool({ submitForReuseBytes: 256 * KiB }, async () => {
    await V.sync();
    trimPool(); // so that every small tensor below needs a new buffer
    // 1 MiB: the recorded `add` still reads a when a is released, so its buffer is pending.
    const n = 256 * KiB;
    const a = V.full([n], 1);
    const y = V.add(a, 1);
    const bufferA = a.storage().buffer;
    const held = poolStats().heldBytes;
    const submits = runtimeStats().submits;
    a.dispose();
    const b = V.full([n], 5); // same bucket: submits, then takes a's buffer
    // Below the threshold (16 KiB): no submit, a new buffer.
    const c = V.full([4 * KiB], 1);
    const z = V.add(c, 1);
    const bufferC = c.storage().buffer;
    c.dispose();
    const d = V.full([4 * KiB], 3);
    try {
      if (b.storage().buffer !== bufferA) throw new Error("the pending buffer was not reused");
      if (runtimeStats().submits !== submits + 1) {
        throw new Error(`expected one submit, got ${runtimeStats().submits - submits}`);
      }
      if (d.storage().buffer === bufferC) {
        throw new Error("a small pending buffer was reused before its submit");
      }
      if (poolStats().heldBytes !== held + 3 * bucketSize(16 * KiB)) {
        throw new Error(`held bytes grew by ${poolStats().heldBytes - held}, expected 3 × 16 KiB (c, z, d)`);
      }
      // y was computed from a before b overwrote the buffer.
      assertClose(await y.toArray(), new Float32Array(n).fill(2), { name: "y = a + 1" });
      assertClose(await b.toArray(), new Float32Array(n).fill(5), { name: "b" });
      assertClose(await z.toArray(), new Float32Array(4 * KiB).fill(2), { name: "z = c + 1" });
    } finally {
      disposeAll(y, b, z, d);
    }
  });
});

gpuTest("pool: buffers released when nothing is recorded are reusable after sync", async () => {
  const a = V.zeros([1024]);
  await V.sync();
  const buffer = a.storage().buffer;
  a.dispose();
  await V.sync(); // nothing to submit
  if (poolStats().pendingBytes !== 0) throw new Error(`${poolStats().pendingBytes} bytes still pending`);
  const b = V.tensor(new Float32Array(1024).fill(4), [1024]);
  try {
    if (b.storage().buffer !== buffer) throw new Error("the released buffer was not reused");
    assertClose(await b.toArray(), new Float32Array(1024).fill(4), { name: "b" });
  } finally {
    b.dispose();
  }
});
