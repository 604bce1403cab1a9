/**
 * The PyTorch checkpoint reader against files written by torch 1.13 itself
 * (tests/fixtures/make_torch_checkpoint_fixtures.py): views into shared storages in every float type and
 * int64, both zip folder layouts and the legacy format, and the refusal of anything but tensors.
 *
 * @module
 */

import { deepStrictEqual, match, ok, rejects, strictEqual, throws } from "node:assert";
import { unpickle } from "../../io/pickle.ts";
import { CheckpointTensor, findStateDict, readTorchCheckpoint } from "../../io/torch_checkpoint.ts";
import { readZip } from "../../io/zip.ts";

const DIR = new URL("../fixtures/torch_checkpoints/", import.meta.url);

async function read(name: string): Promise<unknown> {
  return readTorchCheckpoint(await Deno.readFile(new URL(name, DIR)), name);
}

Deno.test("torch checkpoint: views (offsets, transposes, steps, 0-d) in f32, f16, bf16, f64, i64 read exactly", async () => {
  const expected = JSON.parse(await Deno.readTextFile(new URL("views.json", DIR))) as Record<
    string,
    { shape: number[]; values: number[] }
  >;
  const views = findStateDict(await read("views.pt"));
  deepStrictEqual([...views.keys()].sort(), Object.keys(expected).sort());
  for (const [name, t] of views) {
    deepStrictEqual(t.shape, expected[name].shape, name);
    // Every value is exactly representable in float32 (the f64 ones are halves of small integers).
    deepStrictEqual([...t.data], expected[name].values, name);
  }
  deepStrictEqual(
    Object.fromEntries([...views].map(([k, t]) => [k, t.dtype])),
    {
      offset_row: "F32",
      transposed: "F32",
      stepped: "F32",
      scalar: "F32",
      half: "F16",
      bfloat16: "BF16",
      double: "F64",
      long: "I64",
    },
  );
  ok(views.get("long")!.data instanceof Int32Array);
});

Deno.test("torch checkpoint: the stem-folder zip, the archive-folder zip and the legacy format hold one model", async () => {
  const f32 = findStateDict(await read("unet_f32.pt"));
  const legacy = findStateDict(await read("unet_legacy.pt")); // nested: {"state_dict": …, "epoch": 7}
  const f16 = findStateDict(await read("unet_f16.pt"));
  const zips = await Promise.all(
    ["unet_f32.pt", "unet_f16.pt"].map(async (
      n,
    ) => [...readZip(await Deno.readFile(new URL(n, DIR))).keys()]),
  );
  ok(zips[0].includes("unet_f32/data.pkl") && zips[1].includes("archive/data.pkl"), "both folder layouts");
  strictEqual(f32.size, 144);
  deepStrictEqual([...legacy.keys()], [...f32.keys()]);
  deepStrictEqual([...f16.keys()], [...f32.keys()]);
  for (const [name, t] of f32) {
    deepStrictEqual(legacy.get(name)!.data, t.data, name);
    const half = f16.get(name)!;
    strictEqual(half.dtype, "F16");
    // float16 keeps 11 significant bits: each value within half an ulp of the float32 one.
    for (let i = 0; i < t.data.length; i++) {
      ok(Math.abs(half.data[i] - t.data[i]) <= Math.abs(t.data[i]) * 2 ** -11 + 2 ** -25, `${name}[${i}]`);
    }
  }
  strictEqual((await read("unet_legacy.pt") as Map<string, unknown>).get("epoch"), 7);
});

Deno.test("torch checkpoint: a pickled os.system call is refused by name, never run", async () => {
  await rejects(
    read("evil.pt"),
    (e: Error) => {
      match(e.message, /refuses the global posix\.system/);
      match(e.message, /only collections\.OrderedDict, torch\._utils\._rebuild_tensor_v2/);
      match(e.message, /Nothing was executed/);
      return true;
    },
  );
});

Deno.test("pickle: opcodes that build arbitrary objects are refused; plain values are read", () => {
  // protocol 2: (1, "a", [True, None], {"k": 2.5}) built by hand.
  const bytes = new Uint8Array([
    0x80,
    2,
    0x28,
    0x4b,
    1,
    0x8c,
    1,
    0x61,
    0x5d,
    0x28,
    0x88,
    0x4e,
    0x65,
    0x7d,
    0x8c,
    1,
    0x6b,
    0x47,
    0x40,
    0x04,
    0,
    0,
    0,
    0,
    0,
    0,
    0x73,
    0x74,
    0x2e,
  ]);
  const { value } = unpickle(bytes, { globals: {} });
  deepStrictEqual(value, Object.freeze([1, "a", [true, null], new Map([["k", 2.5]])]));
  // OBJ (0x6f) builds an instance of a class on the stack.
  throws(
    () => unpickle(new Uint8Array([0x80, 2, 0x28, 0x6f, 0x2e]), { globals: {} }),
    /opcode OBJ .* not accepted/,
  );
  // A global, even a harmless-looking one, must be in the table.
  const global = Uint8Array.of(0x80, 2, ...new TextEncoder().encode("cbuiltins\nprint\n."));
  throws(() => unpickle(global, { globals: {} }), /refuses the global builtins\.print/);
  throws(() => unpickle(new Uint8Array([0x80, 2, 0x4b]), { globals: {} }), /truncated at byte 3/);
});

Deno.test("torch checkpoint: files that are not checkpoints, and ambiguous state dicts, say what is wrong", async () => {
  await rejects(readTorchCheckpoint(new TextEncoder().encode("hello"), "x.txt"), /not a torch\.save file/);
  const f32 = await Deno.readFile(new URL("unet_f32.pt", DIR));
  await rejects(readTorchCheckpoint(f32.subarray(0, f32.length - 40), "cut.pt"), /zip cut\.pt: .*truncated/);
  const t = new CheckpointTensor("F32", [1], new Float32Array(1));
  const two = new Map<string, unknown>([["model", new Map([["w", t]])], ["ema", new Map([["w", t]])]]);
  throws(
    () => findStateDict(two, undefined, "two.pt"),
    /several dicts of tensors \(model, ema\); choose one with --key/,
  );
  strictEqual(findStateDict(two, "ema").get("w"), t);
  throws(() => findStateDict(two, "opt"), /no entry "opt"; its entries: model, ema/);
  throws(() => findStateDict(new Map([["epoch", 3]])), /holds no dict of tensors \(entries: epoch\)/);
});
