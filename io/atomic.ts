/**
 * Atomic file writes: the bytes go to a temporary file in the same directory, which is then renamed over
 * the target. Readers see either the old file or the complete new one, never a half-written file, and a
 * failed write leaves no temporary behind.
 *
 * @module
 */

/** Writes `data` to `path` atomically. */
export async function atomicWrite(path: string, data: Uint8Array): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash >= 0 ? path.slice(0, slash + 1) : "";
  const base = path.slice(slash + 1);
  const tmp = `${dir}.${base}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (error) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Could not write ${path}: ${(error as Error).message}`);
  }
}
