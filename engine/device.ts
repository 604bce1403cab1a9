/**
 * The GPU device: adapter selection with the adapter's maximum limits, feature detection and
 * `device.lost` handling. Everything else in the engine asks `gpu()` for the device.
 *
 * @module
 */

/** Options for {@linkcode ready}. */
export interface ReadyOptions {
  /** Adapter preference passed to `requestAdapter`. */
  powerPreference?: "low-power" | "high-performance";
  /** Optional features to enable when the adapter has them (default: shader-f16, timestamp-query, subgroups). */
  features?: string[];
}

/** What {@linkcode deviceInfo} reports about the device in use. */
export interface DeviceInfo {
  /** Human-readable adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  adapter: string;
  /**
   * Vendor: a name when the adapter reports one, else the name of its numeric PCI/Khronos vendor id when
   * known ("mesa (0x10005)"), else the id as reported.
   */
  vendor: string;
  /** True for software adapters such as Mesa's lavapipe. */
  isFallbackAdapter: boolean;
  /** Limits the device was created with (the adapter's maxima). */
  limits: Record<string, number>;
  /** Features enabled on the device. */
  features: string[];
}

const WANTED_FEATURES = ["shader-f16", "timestamp-query", "subgroups"];

let device: GPUDevice | null = null;
let info: DeviceInfo | null = null;
let lostReason: string | null = null;
let pending: Promise<GPUDevice> | null = null;
const lostListeners: Array<(reason: string) => void> = [];

/** Instructions shown whenever no WebGPU adapter can be found. */
export const NO_ADAPTER_HELP =
  "No WebGPU adapter found. voxgen needs a GPU driver with Vulkan/Metal/D3D12 support, " +
  "or Mesa's software Vulkan on machines without a GPU (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`). " +
  "`bash scripts/voxgen <task>` installs it for you when apt is available.";

/**
 * Acquires the WebGPU adapter and a device with the adapter's maximum limits. Safe to call many times:
 * later calls return the same device. Throws an error saying how to get an adapter when there is none.
 */
export async function ready(options: ReadyOptions = {}): Promise<DeviceInfo> {
  if (device && !lostReason) return info!;
  if (!pending) pending = acquire(options).finally(() => (pending = null));
  await pending;
  return info!;
}

async function acquire(options: ReadyOptions): Promise<GPUDevice> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new Error(`navigator.gpu is not available in this runtime. ${NO_ADAPTER_HELP}`);
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: options.powerPreference });
  if (!adapter) throw new Error(NO_ADAPTER_HELP);
  const limits: Record<string, number> = {};
  // GPUSupportedLimits exposes its members as prototype getters, so for..in finds them.
  for (const key in adapter.limits) {
    const value = (adapter.limits as unknown as Record<string, unknown>)[key];
    if (typeof value === "number") limits[key] = value;
  }
  const wanted = options.features ?? WANTED_FEATURES;
  const features = wanted.filter((f) => adapter.features.has(f as GPUFeatureName)) as GPUFeatureName[];
  const dev = await adapter.requestDevice({ requiredLimits: limits, requiredFeatures: features });
  lostReason = null;
  dev.lost.then((lost) => {
    if (device !== dev) return;
    lostReason = `${lost.reason}: ${lost.message || "no message"}`;
    for (const listener of lostListeners) listener(lostReason);
  });
  dev.addEventListener?.("uncapturederror", (event: Event) => {
    const error = (event as GPUUncapturedErrorEvent).error;
    console.error(`voxgen: uncaptured WebGPU error: ${error.message}`);
  });
  const adapterInfo = adapter.info;
  device = dev;
  info = {
    adapter: adapterInfo.description || adapterInfo.device || "unknown adapter",
    vendor: vendorName(adapterInfo.vendor),
    isFallbackAdapter: Boolean((adapterInfo as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter),
    limits,
    features: [...dev.features].map(String).sort(),
  };
  return dev;
}

/** Information on the adapter and device in use. Call {@linkcode ready} first. */
export function deviceInfo(): DeviceInfo {
  if (!info) throw new Error("deviceInfo(): no device yet — call `await ready()` first.");
  return info;
}

/** Vendor ids some implementations report instead of a name (PCI ids, and Khronos ids for Mesa). */
const VENDOR_IDS: Record<number, string> = {
  0x1002: "amd",
  0x10de: "nvidia",
  0x8086: "intel",
  0x13b5: "arm",
  0x5143: "qualcomm",
  0x106b: "apple",
  0x1ae0: "google",
  0x10005: "mesa",
};

/** "65541" → "mesa (0x10005)"; names and unknown ids pass through. */
export function vendorName(reported: string): string {
  if (!/^\d+$/.test(reported)) return reported;
  const id = Number(reported);
  const name = VENDOR_IDS[id];
  return name ? `${name} (0x${id.toString(16)})` : reported;
}

/**
 * True when the adapter is a CPU implementation (Mesa's lavapipe/llvmpipe, SwiftShader): kernels that suit
 * its SIMD-per-thread model (loop-free chunk kernels) are chosen then.
 */
export function isSoftwareAdapter(): boolean {
  const { isFallbackAdapter, adapter } = deviceInfo();
  return isFallbackAdapter || /llvmpipe|lavapipe|swiftshader/i.test(adapter);
}

/** The device, for engine internals. Throws a clear error before `ready()` or after the device was lost. */
export function gpu(): GPUDevice {
  if (lostReason) {
    throw new Error(
      `The GPU device was lost (${lostReason}). Tensors on it are gone; call \`await ready()\` to get a new device.`,
    );
  }
  if (!device) {
    throw new Error("No GPU device yet: call `await ready()` before creating tensors or running ops.");
  }
  return device;
}

/** True once {@linkcode ready} has succeeded and the device has not been lost. */
export function isReady(): boolean {
  return device !== null && lostReason === null;
}

/** Registers a callback run when the device is lost (e.g. to fail a running job). */
export function onDeviceLost(listener: (reason: string) => void): void {
  lostListeners.push(listener);
}

/** The limit `name` of the current device. */
export function limit(name: string): number {
  const value = deviceInfo().limits[name];
  if (value === undefined) throw new Error(`Unknown device limit ${name}`);
  return value;
}
