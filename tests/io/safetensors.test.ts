import * as V from "../../mod.ts";
import {
  encodeSafetensors,
  loadSafetensors,
  parseSafetensors,
  saveSafetensors,
} from "../../io/safetensors.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, throws } from "node:assert";

/** Builds a safetensors file by hand (so the parser is tested against bytes it did not write). */
function handMade(header: unknown, data: Uint8Array, headerBytes?: Uint8Array): Uint8Array {
  const json = headerBytes ?? new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("parses F32, F16, BF16, F64, I64, I32, U8 and metadata from hand-made bytes", () => {
  const data = new Uint8Array(4 * 2 + 2 * 2 + 2 * 2 + 8 + 8 + 4 + 2);
  const v = new DataView(data.buffer);
  v.setFloat32(0, 1.5, true);
  v.setFloat32(4, -2, true);
  v.setUint16(8, 0x3c00, true); // f16 1.0
  v.setUint16(10, 0xc000, true); // f16 -2.0
  v.setUint16(12, 0x3f80, true); // bf16 1.0
  v.setUint16(14, 0x4049, true); // bf16 3.140625
  v.setFloat64(16, 0.25, true);
  v.setBigInt64(24, -7n, true);
  v.setInt32(32, 123456, true);
  data[36] = 255;
  data[37] = 3;
  const file = parseSafetensors(handMade({
    __metadata__: { format: "pt" },
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    h: { dtype: "F16", shape: [2], data_offsets: [8, 12] },
    b: { dtype: "BF16", shape: [1, 2], data_offsets: [12, 16] },
    d: { dtype: "F64", shape: [], data_offsets: [16, 24] },
    l: { dtype: "I64", shape: [1], data_offsets: [24, 32] },
    i: { dtype: "I32", shape: [1], data_offsets: [32, 36] },
    u: { dtype: "U8", shape: [2], data_offsets: [36, 38] },
  }, data));
  deepStrictEqual(file.metadata, { format: "pt" });
  deepStrictEqual([...file.tensors.get("a")!.data], [1.5, -2]);
  deepStrictEqual([...file.tensors.get("h")!.data], [1, -2]);
  deepStrictEqual([...file.tensors.get("b")!.data], [1, 3.140625]);
  deepStrictEqual(file.tensors.get("b")!.shape, [1, 2]);
  deepStrictEqual([...file.tensors.get("d")!.data], [0.25]);
  deepStrictEqual([...file.tensors.get("l")!.data], [-7]);
  deepStrictEqual([...file.tensors.get("i")!.data], [123456]);
  deepStrictEqual([...file.tensors.get("u")!.data], [255, 3]);
});

Deno.test("malformed files give clear errors", () => {
  const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  const data = new Uint8Array(8);
  throws(() => parseSafetensors(new Uint8Array(3)), /too short for the 8-byte header length/);
  throws(() => parseSafetensors(handMade(ok, data).subarray(0, 20)), /runs past the end .* \(truncated\?\)/);
  throws(
    () => parseSafetensors(handMade(null, data, new TextEncoder().encode("{not json"))),
    /header is not valid UTF-8 JSON/,
  );
  throws(
    () => parseSafetensors(handMade(ok, data.subarray(0, 4))),
    /spans bytes 0..8 but the data section has 4 bytes/,
  );
  throws(
    () => parseSafetensors(handMade({ a: { dtype: "C64", shape: [1], data_offsets: [0, 8] } }, data)),
    /dtype "C64"; supported: /,
  );
  throws(
    () => parseSafetensors(handMade({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, data)),
    /shape \[3\] of F32 needs 12 bytes, but data_offsets give 8/,
  );
  throws(
    () => parseSafetensors(handMade({ a: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, data)),
    /data_offsets \[8,0\]; expected \[begin, end\]/,
  );
  throws(
    () =>
      parseSafetensors(handMade({
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }, data)),
    /overlap/,
  );
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  throws(() => parseSafetensors(huge), /exceeds the .*-byte limit/);
});

Deno.test("encode → parse round trip keeps names, shapes, values and metadata; header is 8-byte aligned", () => {
  const tensors = new Map([
    ["z.weight", { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }],
    ["a", { shape: [], data: Float32Array.from([Math.PI]) }],
    ["empty", { shape: [0, 4], data: new Float32Array(0) }],
  ]);
  const bytes = encodeSafetensors(tensors, { kind: "test" });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  if (headerLen % 8 !== 0) throw new Error(`header length ${headerLen} is not 8-byte aligned`);
  const back = parseSafetensors(bytes);
  deepStrictEqual(back.metadata, { kind: "test" });
  for (const [name, t] of tensors) {
    deepStrictEqual(back.tensors.get(name)!.shape, t.shape);
    deepStrictEqual([...back.tensors.get(name)!.data], [...t.data]);
  }
});

gpuTest("saveSafetensors writes atomically and loadSafetensors reads GPU tensors back", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/w.safetensors`;
  const a = V.tensor([1, -2, 3.5, 4], [2, 2]);
  const b = V.arange(5);
  await saveSafetensors(path, { a, "blocks.0.b": b }, { note: "x" });
  const entries = [...Deno.readDirSync(dir)].map((e) => e.name);
  deepStrictEqual(entries, ["w.safetensors"]); // no temporary left behind
  const loaded = await loadSafetensors(path);
  deepStrictEqual([...loaded.keys()].sort(), ["a", "blocks.0.b"]);
  assertClose(await loaded.get("a")!.toArray(), [1, -2, 3.5, 4], { name: "a" });
  deepStrictEqual(loaded.get("a")!.shape, [2, 2]);
  assertClose(await loaded.get("blocks.0.b")!.toArray(), [0, 1, 2, 3, 4], { name: "b" });
  // A failed write (here: the target is a non-empty directory, so the final rename fails) throws a clear
  // error and leaves no temporary file behind.
  await Deno.mkdir(`${dir}/taken`);
  await Deno.writeTextFile(`${dir}/taken/keep.txt`, "x");
  let message = "";
  await saveSafetensors(`${dir}/taken`, { a }).catch((e: Error) => (message = e.message));
  if (!/Could not write .*taken/.test(message)) throw new Error(`expected a write error, got "${message}"`);
  deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["taken", "w.safetensors"]);
  const again = await loadSafetensors(path);
  deepStrictEqual([...again.keys()].sort(), ["a", "blocks.0.b"]);
  disposeAll(a, b, [...loaded.values()], [...again.values()]);
  await Deno.remove(dir, { recursive: true });
});
