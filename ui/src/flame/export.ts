// Exports of what the flame graph shows: the focused subtree (with the path from the root above it) as
// folded stacks, as a gzipped pprof and as an SVG drawn like the screen.

import type { Frame, ProfileType } from '../api';
import { escapeHtml } from '../format';
import type { FlameTree } from './tree';

/** Stacks through `focus` as folded text: `root;...;leaf value`, one line per stack that ends there. */
export function foldedOf(tree: FlameTree, focus: number): string {
  const lines: string[] = [];
  const start = tree.position[focus];
  const end = tree.subtreeEnd[start];
  // Names above the focus; a node at depth d is the d-th name of its stack (the root has none).
  const stack: string[] = tree.pathOf(focus).slice(0, -1);
  for (let position = start; position < end; position++) {
    const node = tree.order[position];
    if (node === 0) continue;
    stack.length = tree.depth[node] - 1;
    stack.push(tree.name(node));
    if (tree.self[node] > 0) lines.push(`${stack.join(';')} ${tree.self[node]}`);
  }
  return lines.join('\n') + (lines.length ? '\n' : '');
}

// ------------------------------------------------------------------ protobuf

class Writer {
  private bytes: number[] = [];
  varint(value: number): void {
    let rest = Math.max(0, Math.floor(value));
    while (rest >= 0x80) {
      this.bytes.push((rest % 0x80) | 0x80);
      rest = Math.floor(rest / 0x80);
    }
    this.bytes.push(rest);
  }
  key(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }
  uint(field: number, value: number): void {
    if (value === 0) return;
    this.key(field, 0);
    this.varint(value);
  }
  bytesField(field: number, data: Uint8Array | number[]): void {
    this.key(field, 2);
    this.varint(data.length);
    for (const byte of data) this.bytes.push(byte);
  }
  message(field: number, build: (writer: Writer) => void): void {
    const inner = new Writer();
    build(inner);
    this.bytesField(field, inner.bytes);
  }
  packed(field: number, values: number[]): void {
    const inner = new Writer();
    for (const value of values) inner.varint(value);
    this.bytesField(field, inner.bytes);
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/**
 * The uncompressed pprof `Profile` of the stacks through `focus`: one location and function per frame,
 * one mapping per binary, the profile type's sample and period types. Values must be non-negative.
 */
export function pprofOf(
  tree: FlameTree,
  focus: number,
  profileType: ProfileType | undefined,
  timeRange: { fromMs: number; toMs: number },
): Uint8Array {
  const strings: string[] = [''];
  const index = new Map<string, number>([['', 0]]);
  const str = (text: string): number => {
    let found = index.get(text);
    if (found === undefined) {
      found = strings.length;
      strings.push(text);
      index.set(text, found);
    }
    return found;
  };
  const out = new Writer();
  const sampleType = profileType?.sampleType ?? 'samples';
  const sampleUnit = profileType?.sampleUnit ?? 'count';
  out.message(1, (w) => {
    w.uint(1, str(sampleType));
    w.uint(2, str(sampleUnit));
  });
  const start = tree.position[focus];
  const end = tree.subtreeEnd[start];
  const usedFrames = new Set<number>();
  for (let position = start; position < end; position++) {
    const node = tree.order[position];
    if (tree.self[node] <= 0) continue;
    const locations: number[] = [];
    for (let current = node; current > 0; current = tree.parent[current]) {
      locations.push(tree.frameOf[current] + 1);
      usedFrames.add(tree.frameOf[current]);
    }
    if (locations.length === 0) continue;
    out.message(2, (w) => {
      w.packed(1, locations);
      w.packed(2, [tree.self[node]]);
    });
  }
  const binaries = new Map<string, number>();
  const frames: [number, Frame][] = [...usedFrames].sort((a, b) => a - b).map((id) => [id, tree.frames[id]]);
  for (const [, frame] of frames) {
    if (frame.binary && !binaries.has(frame.binary)) binaries.set(frame.binary, binaries.size + 1);
  }
  for (const [binary, id] of binaries) {
    out.message(3, (w) => {
      w.uint(1, id);
      w.uint(5, str(binary));
      w.uint(7, 1); // has_functions
      w.uint(8, 1); // has_filenames
    });
  }
  for (const [id, frame] of frames) {
    out.message(4, (w) => {
      w.uint(1, id + 1);
      if (frame.binary) w.uint(2, binaries.get(frame.binary) ?? 0);
      w.message(4, (line) => line.uint(1, id + 1));
    });
  }
  for (const [id, frame] of frames) {
    out.message(5, (w) => {
      w.uint(1, id + 1);
      w.uint(2, str(frame.function));
      w.uint(3, str(frame.function));
      if (frame.file) w.uint(4, str(frame.file));
    });
  }
  const periodType = profileType?.periodType ?? '';
  const periodUnit = profileType?.periodUnit ?? '';
  // Strings are written last: every index is known by now.
  const periodTypeIndex = periodType ? str(periodType) : 0;
  const periodUnitIndex = periodUnit ? str(periodUnit) : 0;
  const encoder = new TextEncoder();
  for (const text of strings) out.bytesField(6, encoder.encode(text));
  out.uint(9, timeRange.fromMs * 1e6);
  out.uint(10, Math.max(0, timeRange.toMs - timeRange.fromMs) * 1e6);
  if (periodTypeIndex || periodUnitIndex) {
    out.message(11, (w) => {
      w.uint(1, periodTypeIndex);
      w.uint(2, periodUnitIndex);
    });
  }
  return out.finish();
}

/** Gzips bytes with the browser's CompressionStream. */
export async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// ------------------------------------------------------------------ SVG

export interface SvgOptions {
  width: number;
  rowHeight: number;
  title: string;
  color: (node: number) => string;
  label: (node: number) => string;
}

/** An SVG of the icicle as drawn on screen: ancestors of `focus` full width, its subtree below. */
export function svgOf(tree: FlameTree, focus: number, options: SvgOptions): string {
  const { width, rowHeight } = options;
  const top = 28;
  const rows = tree.deepest[focus] + 1;
  const height = top + rows * rowHeight + 4;
  const charWidth = 7;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="ui-monospace, Menlo, Consolas, monospace" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="14" font-family="sans-serif">${escapeHtml(options.title)}</text>`,
  ];
  const rect = (node: number, x: number, w: number) => {
    const y = top + tree.depth[node] * rowHeight;
    const name = tree.name(node);
    const fits = Math.floor((w - 6) / charWidth);
    const text = fits >= 3 ? (name.length > fits ? `${name.slice(0, fits - 1)}…` : name) : '';
    parts.push(
      `<g><title>${escapeHtml(options.label(node))}</title>` +
        `<rect x="${x.toFixed(2)}" y="${y}" width="${Math.max(0.1, w - 1).toFixed(2)}" height="${rowHeight - 1}" fill="${options.color(node)}"/>` +
        (text ? `<text x="${(x + 3).toFixed(2)}" y="${y + rowHeight - 5}">${escapeHtml(text)}</text>` : '') +
        `</g>`,
    );
  };
  for (let ancestor = tree.parent[focus]; ancestor >= 0; ancestor = tree.parent[ancestor]) rect(ancestor, 0, width);
  const scale = tree.total[focus] > 0 ? width / tree.total[focus] : 0;
  const origin = tree.start[focus];
  const end = tree.subtreeEnd[tree.position[focus]];
  let position = tree.position[focus];
  while (position < end) {
    const node = tree.order[position];
    const w = tree.total[node] * scale;
    if (w < 0.5) {
      position = tree.subtreeEnd[position];
      continue;
    }
    rect(node, (tree.start[node] - origin) * scale, w);
    position += 1;
  }
  parts.push('</svg>');
  return parts.join('\n');
}

/** Offers `data` as a file download. */
export function download(data: BlobPart, filename: string, type: string): void {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
