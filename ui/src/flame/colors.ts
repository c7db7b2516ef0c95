// Colours of flame graph frames: stable per package (or binary), and the diff scale.

import type { Frame } from '../api';

/**
 * The package a frame belongs to, which picks its colour:
 * Go `crypto/sha256.block` → `crypto/sha256`, `runtime.mallocgc` → `runtime`;
 * Rust/C++ `tokio::runtime::park` → `tokio`; Python `run (app/server.py:12)` → `app/server.py`;
 * otherwise the binary's file name, otherwise the function name itself.
 */
export function packageOf(frame: Frame): string {
  const name = frame.function.replace(/^[<&*(\s]+/, '');
  const python = /\(([^():]+\.py)(?::\d+)?\)\s*$/.exec(name);
  if (python) return python[1];
  const colons = name.indexOf('::');
  if (colons > 0) return name.slice(0, colons);
  const slash = name.lastIndexOf('/', name.indexOf('(') >= 0 ? name.indexOf('(') : name.length);
  const dot = name.indexOf('.', slash + 1);
  if (dot > 0) return name.slice(0, dot);
  if (frame.binary) return frame.binary.slice(frame.binary.lastIndexOf('/') + 1);
  return name;
}

/** FNV-1a, 32 bits. */
export function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < text.length; index++) {
    hash ^= text.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

// Warm hues first (a flame graph should look like one), then enough others to tell packages apart.
const HUES = [14, 28, 40, 52, 4, 340, 22, 46, 200, 265, 160, 100, 185, 300, 230, 75];

/** The colour of a package: the same package always gets the same colour, in every view and session. */
export function packageColor(pkg: string): string {
  const hash = hashString(pkg);
  const hue = HUES[hash % HUES.length];
  const saturation = 62 + ((hash >>> 8) % 4) * 6;
  const lightness = 60 + ((hash >>> 12) % 4) * 4;
  return hslToHex(hue, saturation, lightness);
}

/** `#rrggbb` of an HSL colour (hue in degrees, saturation and lightness in percent): canvas parses hex fastest. */
export function hslToHex(hue: number, saturation: number, lightness: number): string {
  const s = saturation / 100;
  const l = lightness / 100;
  const chroma = s * Math.min(l, 1 - l);
  const channel = (n: number) => {
    const k = (n + hue / 30) % 12;
    const value = l - chroma * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(value * 255)
      .toString(16)
      .padStart(2, '0');
  };
  return `#${channel(0)}${channel(8)}${channel(4)}`;
}

export function frameColor(frame: Frame | undefined): string {
  if (!frame) return '#b8b8b8';
  if (frame.function === '(other)') return '#cccccc';
  return packageColor(packageOf(frame));
}

/** Colour of frames a search did not match. */
export const DIMMED = '#e0e0e0';
/** Colour of the root and of ancestors above a zoomed frame. */
export const NEUTRAL = '#c2c2c2';

/**
 * Relative change of a node's share of its profile from A to B: `(b - a) / a`, where `a` and `b` are
 * the node's total divided by its profile's total. `Infinity` when the node is new in B, `-1` when it is
 * gone, 0 when it is in neither.
 */
export function relativeChange(aValue: number, aTotal: number, bValue: number, bTotal: number): number {
  const a = aTotal > 0 ? aValue / aTotal : 0;
  const b = bTotal > 0 ? bValue / bTotal : 0;
  if (a === 0) return b === 0 ? 0 : Infinity;
  return (b - a) / a;
}

const NEUTRAL_RGB: [number, number, number] = [214, 214, 214];
const WORSE_RGB: [number, number, number] = [214, 39, 40];
const BETTER_RGB: [number, number, number] = [44, 160, 44];

/** Changes smaller than this (1%) are drawn neutral. */
export const DIFF_NEUTRAL_BELOW = 0.01;

/**
 * The diff colour of a relative change: grey when unchanged (under 1%), shades of red for growth and of
 * green for shrinkage, full colour at ±100% or more (and for new frames). The intensity grows with the
 * square root of the change so that 10–20% changes are visible.
 */
export function diffColor(change: number): string {
  if (Number.isNaN(change) || Math.abs(change) < DIFF_NEUTRAL_BELOW) return rgb(NEUTRAL_RGB);
  const intensity = Math.sqrt(Math.min(1, Math.abs(change)));
  const target = change > 0 ? WORSE_RGB : BETTER_RGB;
  return rgb(mix(NEUTRAL_RGB, target, intensity));
}

function mix(from: [number, number, number], to: [number, number, number], t: number): [number, number, number] {
  return [0, 1, 2].map((channel) => Math.round(from[channel] + (to[channel] - from[channel]) * t)) as [
    number,
    number,
    number,
  ];
}

function rgb([red, green, blue]: [number, number, number]): string {
  return `rgb(${red}, ${green}, ${blue})`;
}
