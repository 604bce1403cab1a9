/**
 * The process's host memory (Linux): resident set now and its high-water mark. On lavapipe GPU buffers live
 * in host memory, so RSS is what a run of big volumes really costs the machine; the engine's `memory()`
 * counts only the bytes of its own buffers.
 *
 * @module
 */

/** Resident set size and its high-water mark, in bytes (0 where /proc is unavailable). */
export function hostMemory(): { rss: number; peakRss: number } {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const kib = (name: string) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
    return { rss: kib("VmRSS") * 1024, peakRss: kib("VmHWM") * 1024 };
  } catch {
    return { rss: 0, peakRss: 0 };
  }
}

/** Resets the RSS high-water mark to the current RSS (Linux `clear_refs` 5); false where not possible. */
export function resetPeakRss(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}
