/**
 * A per-layer table of an adapter's trainable parameters with totals (for `info --adapter` and logs).
 *
 * @module
 */

import { type AdaptedLayerInfo, type AdapterInfo, trainableCount } from "./format.ts";
import { AdapterSet } from "./inject.ts";

const NAMES: Record<string, string> = {
  locon: "LoCon",
  loha: "LoHa",
  lokr: "LoKr",
  "tenvoo-l": "TenVOO-L",
  "tenvoo-q": "TenVOO-Q",
  quanta: "QuanTA",
};

/** 1234567 → "1,234,567". */
function grouped(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function kernelText(k: readonly number[]): string {
  if (k.length === 0) return "";
  return k.every((v) => v === k[0]) ? ` ${k[0]}${k.length === 3 ? "³" : "²"}` : ` ${k.join("×")}`;
}

function factorsText(l: AdaptedLayerInfo): string {
  return l.inFactors && l.outFactors ? `${l.inFactors.join("·")} | ${l.outFactors.join("·")}` : "";
}

/** A plain-text table: one row per adapted layer (shape, method, factors, trainable count), then totals. */
export function adapterSummary(adapter: AdapterSet | AdapterInfo): string {
  const info = adapter instanceof AdapterSet ? adapter.info : adapter;
  const rows = info.layers.map((l) => [
    l.name,
    `${l.layer} ${l.in}→${l.out}${kernelText(l.kernel)}`,
    l.kind,
    factorsText(l),
    grouped(l.numParameters),
  ]);
  const header = ["layer", "shape", "method", "factors in | out", "trainable"];
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) =>
    cells.map((cell, c) => (c === cells.length - 1 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join(
      "  ",
    );
  const cores = info.layers.reduce((n, l) => n + l.numParameters, 0);
  const frozen = info.layers.reduce((n, l) => n + l.numFrozen, 0);
  const along = info.trainedBase.reduce((n, p) => n + p.size, 0);
  const total = trainableCount(info);
  const byType = new Map<string, number>();
  for (const l of info.layers) byType.set(l.layer, (byType.get(l.layer) ?? 0) + 1);
  const percent = info.numBaseParameters > 0 ? ((100 * total) / info.numBaseParameters).toFixed(3) : "–";
  const extras = [
    info.trainNorms ? "norms" : "",
    info.trainBiases ? "biases of adapted layers" : "",
    info.jointModules === true
      ? "every other layer (joint)"
      : Array.isArray(info.jointModules) && info.jointModules.length > 0
      ? `joint modules ${info.jointModules.join(", ")}`
      : "",
  ].filter(Boolean);
  const out = [
    `${NAMES[info.kind]} adapter: rank ${info.rank}, alpha ${info.alpha} (ΔW scale ${+(info.alpha / info.rank)
      .toPrecision(6)}), seed ${info.seed}`,
    `base model: ${grouped(info.numBaseParameters)} parameters, hash ${info.baseHash.slice(0, 16)}…`,
    `targets: ${info.targets.join(", ")}`,
    "",
    line(header),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map(line),
    "",
  ];
  if (info.skipped.length > 0) {
    out.push(`skipped: ${info.skipped.map((s) => `${s.name} (${s.reason})`).join(", ")}`);
  }
  out.push(
    `adapted layers: ${info.layers.length} (${[...byType].map(([t, n]) => `${n} ${t}`).join(", ")})`,
    `adapter cores: ${grouped(cores)} trainable` +
      (frozen > 0 ? `; frozen copies: ${grouped(frozen)} (stored in the file, not trained)` : ""),
  );
  if (along > 0) out.push(`trained along: ${grouped(along)} base parameters (${extras.join("; ")})`);
  out.push(`trainable total: ${grouped(total)} = ${percent}% of the base model`);
  return out.join("\n");
}
