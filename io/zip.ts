/**
 * Reading zip archives held in memory (the container of PyTorch's `torch.save` files): the central
 * directory (with ZIP64 records), stored entries as views into the bytes, deflated entries inflated with
 * the platform's `DecompressionStream`. Works in browsers and Deno alike.
 *
 * @module
 */

/** One file of a zip archive. */
export interface ZipEntry {
  /** Path inside the archive. */
  name: string;
  /** Compression method: 0 = stored, 8 = deflate. */
  method: number;
  /** Size once extracted. */
  size: number;
  /** The extracted bytes (stored entries are views into the archive, never copies). */
  read(): Promise<Uint8Array>;
}

const EOCD = 0x06054b50;
const ZIP64_EOCD = 0x06064b50;
const ZIP64_LOCATOR = 0x07064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

/** Whether `bytes` start like a zip archive (a local file header). */
export function isZip(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 &&
    new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true) === LOCAL;
}

/** Lists the entries of a zip archive, by name. `source` names the archive in errors. */
export function readZip(bytes: Uint8Array, source = "<bytes>"): Map<string, ZipEntry> {
  const fail = (message: string): never => {
    throw new Error(`zip ${source}: ${message}`);
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  const u64 = (at: number) => {
    const v = view.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      fail(`a size or offset of ${v} bytes is beyond what can be read.`);
    }
    return Number(v);
  };
  const inside = (begin: number, length: number, what: string) => {
    if (begin < 0 || length < 0 || begin + length > bytes.byteLength) {
      fail(
        `${what} (bytes ${begin}..${
          begin + length
        }) lies outside the ${bytes.byteLength}-byte file (truncated?).`,
      );
    }
  };

  // The end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB, at the very end.
  let end = -1;
  for (let at = bytes.byteLength - 22; at >= Math.max(0, bytes.byteLength - 22 - 0xffff); at--) {
    if (u32(at) === EOCD) {
      end = at;
      break;
    }
  }
  if (end < 0) fail("no end-of-central-directory record: not a zip archive, or truncated.");
  let count = u16(end + 10);
  let dirSize = u32(end + 12);
  let dirOffset = u32(end + 16);
  if (end >= 20 && u32(end - 20) === ZIP64_LOCATOR) {
    const record = u64(end - 20 + 8);
    inside(record, 56, "the ZIP64 end record");
    if (u32(record) !== ZIP64_EOCD) fail("the ZIP64 locator points at no ZIP64 end record.");
    count = u64(record + 32);
    dirSize = u64(record + 40);
    dirOffset = u64(record + 48);
  }
  inside(dirOffset, dirSize, "the central directory");

  const entries = new Map<string, ZipEntry>();
  let at = dirOffset;
  for (let i = 0; i < count; i++) {
    inside(at, 46, `central directory entry ${i}`);
    if (u32(at) !== CENTRAL) fail(`central directory entry ${i} has a bad signature.`);
    const flags = u16(at + 8);
    const method = u16(at + 10);
    let compressed = u32(at + 20);
    let size = u32(at + 24);
    const nameLength = u16(at + 28);
    const extraLength = u16(at + 30);
    const commentLength = u16(at + 32);
    let local = u32(at + 42);
    inside(at + 46, nameLength + extraLength + commentLength, `central directory entry ${i}`);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    // ZIP64 extra field: the 64-bit values of the fields that hold 0xffffffff, in this order.
    for (let e = at + 46 + nameLength; e + 4 <= at + 46 + nameLength + extraLength;) {
      const id = u16(e);
      const length = u16(e + 2);
      if (id === 0x0001) {
        let p = e + 4;
        if (size === 0xffffffff) [size, p] = [u64(p), p + 8];
        if (compressed === 0xffffffff) [compressed, p] = [u64(p), p + 8];
        if (local === 0xffffffff) local = u64(p);
      }
      e += 4 + length;
    }
    if (flags & 1) fail(`"${name}" is encrypted.`);
    if (method !== 0 && method !== 8) {
      fail(`"${name}" uses compression method ${method}; only stored (0) and deflate (8) are read.`);
    }
    inside(local, 30, `the local header of "${name}"`);
    if (u32(local) !== LOCAL) fail(`the local header of "${name}" has a bad signature.`);
    const dataStart = local + 30 + u16(local + 26) + u16(local + 28);
    inside(dataStart, compressed, `the data of "${name}"`);
    const raw = bytes.subarray(dataStart, dataStart + compressed);
    entries.set(name, {
      name,
      method,
      size,
      read: method === 0 ? () => Promise.resolve(raw) : () => inflate(raw, size, name, fail),
    });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

async function inflate(
  raw: Uint8Array,
  size: number,
  name: string,
  fail: (message: string) => never,
): Promise<Uint8Array> {
  const stream = new Blob([raw as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new DecompressionStream("deflate-raw"),
  );
  const out = new Uint8Array(await new Response(stream).arrayBuffer());
  if (out.byteLength !== size) fail(`"${name}" inflates to ${out.byteLength} bytes, not ${size}.`);
  return out;
}
