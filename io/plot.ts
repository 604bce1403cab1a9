/**
 * Line plots as PNG (loss curves): axes, grid lines, tick labels drawn with a built-in 3×5 pixel font,
 * optional log-scale y axis. No dependencies.
 *
 * @module
 */

import { atomicWrite } from "./atomic.ts";
import { encodePng } from "./png.ts";

// 3×5 glyphs, one row per string, '#' = ink.
const GLYPHS: Record<string, string[]> = {
  "0": ["###", "#.#", "#.#", "#.#", "###"],
  "1": [".#.", "##.", ".#.", ".#.", "###"],
  "2": ["###", "..#", "###", "#..", "###"],
  "3": ["###", "..#", "###", "..#", "###"],
  "4": ["#.#", "#.#", "###", "..#", "..#"],
  "5": ["###", "#..", "###", "..#", "###"],
  "6": ["###", "#..", "###", "#.#", "###"],
  "7": ["###", "..#", "..#", "..#", "..#"],
  "8": ["###", "#.#", "###", "#.#", "###"],
  "9": ["###", "#.#", "###", "..#", "###"],
  ".": ["...", "...", "...", "...", ".#."],
  "-": ["...", "...", "###", "...", "..."],
  "e": ["...", "##.", "###", "#..", ".##"],
  "k": ["#..", "#.#", "##.", "#.#", "#.#"],
  " ": ["...", "...", "...", "...", "..."],
};

/** One series of a plot. */
export interface Series {
  /** x values. */
  x: number[];
  /** y values (non-finite points are skipped). */
  y: number[];
  /** RGB colour. */
  color: [number, number, number];
}

/** Trailing moving average of `ys` over `window` points (over fewer at the start), for smoothed curves. */
export function movingAverage(ys: readonly number[], window: number): number[] {
  const out: number[] = [];
  let sum = 0;
  for (let i = 0; i < ys.length; i++) {
    sum += ys[i] - (i >= window ? ys[i - window] : 0);
    out.push(sum / Math.min(i + 1, window));
  }
  return out;
}

/** Options of {@linkcode plotPng}. */
export interface PlotOptions {
  /** Image width (default 640). */
  width?: number;
  /** Image height (default 360). */
  height?: number;
  /** Logarithmic y axis (default false). */
  logY?: boolean;
}

function formatTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 10000) return `${Math.round(v / 1000)}k`;
  if (a >= 1) return String(Math.round(v * 100) / 100);
  if (a >= 0.01) return v.toFixed(3).replace(/0+$/, "");
  return v.toExponential(0);
}

/** Renders series as an RGB PNG. */
export async function plotPng(series: Series[], opts: PlotOptions = {}): Promise<Uint8Array> {
  const W = opts.width ?? 640;
  const H = opts.height ?? 360;
  const px = new Uint8Array(W * H * 3).fill(255);
  const set = (x: number, y: number, c: readonly number[]) => {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    px.set(c, (Math.round(y) * W + Math.round(x)) * 3);
  };
  const text = (s: string, x: number, y: number) => {
    for (const ch of s) {
      const g = GLYPHS[ch] ?? GLYPHS[" "];
      for (let r = 0; r < 5; r++) {
        for (let c = 0; c < 3; c++) if (g[r][c] === "#") set(x + c, y + r, [40, 40, 40]);
      }
      x += 4;
    }
  };
  const fy = (v: number) => (opts.logY ? Math.log10(v) : v);
  const xs = series.flatMap((s) => s.x);
  const ys = series.flatMap((s) => s.y.filter((v) => Number.isFinite(v) && (!opts.logY || v > 0)).map(fy));
  if (xs.length === 0 || ys.length === 0) {
    return await encodePng({ width: W, height: H, channels: 3, pixels: px });
  }
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const L = 48, R = W - 12, T = 12, B = H - 24;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (R - L);
  const sy = (y: number) => B - ((y - y0) / (y1 - y0)) * (B - T);
  for (let i = 0; i <= 5; i++) {
    const yv = y0 + ((y1 - y0) * i) / 5;
    const py = sy(yv);
    for (let x = L; x <= R; x++) set(x, py, [225, 225, 225]);
    text(formatTick(opts.logY ? 10 ** yv : yv), 2, py - 2);
    const xv = x0 + ((x1 - x0) * i) / 5;
    const pxv = sx(xv);
    for (let y = T; y <= B; y++) set(pxv, y, [225, 225, 225]);
    text(formatTick(xv), pxv - 6, B + 6);
  }
  for (let x = L; x <= R; x++) set(x, B, [0, 0, 0]);
  for (let y = T; y <= B; y++) set(L, y, [0, 0, 0]);
  for (const s of series) {
    let prev: [number, number] | null = null;
    for (let i = 0; i < s.x.length; i++) {
      const v = s.y[i];
      if (!Number.isFinite(v) || (opts.logY && v <= 0)) {
        prev = null;
        continue;
      }
      const p: [number, number] = [sx(s.x[i]), sy(fy(v))];
      if (prev) {
        const n = Math.max(1, Math.ceil(Math.hypot(p[0] - prev[0], p[1] - prev[1])));
        for (let k = 0; k <= n; k++) {
          set(prev[0] + ((p[0] - prev[0]) * k) / n, prev[1] + ((p[1] - prev[1]) * k) / n, s.color);
        }
      } else set(p[0], p[1], s.color);
      prev = p;
    }
  }
  return await encodePng({ width: W, height: H, channels: 3, pixels: px });
}

/** Writes a plot PNG atomically. */
export async function writePlotPng(path: string, series: Series[], opts: PlotOptions = {}): Promise<void> {
  await atomicWrite(path, await plotPng(series, opts));
}
