// The flame graph on a canvas: icicle (root on top), click to zoom, back, search highlight, tooltip.
//
// Drawing walks the focused subtree in pre-order and skips every subtree narrower than MIN_WIDTH pixels
// in one step, so the cost follows what is visible, not the size of the tree: a 50k-node profile draws a
// few thousand rectangles. Labels use a monospace font so that fitting text needs no per-frame measuring.

import { escapeHtml, formatChange, formatValue, percent } from '../format';
import { DIMMED, NEUTRAL, diffColor, frameColor, relativeChange } from './colors';
import { type Matches, FlameTree, matchNodes, searchPredicate } from './tree';

const ROW_HEIGHT = 18;
const MIN_WIDTH = 0.4;
const FONT = '12px ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace';

export interface FlameGraphOptions {
  /** Unit of the values, for the tooltip. */
  unit: string;
  /** Called after every zoom or search change. */
  onChange?: () => void;
  /** Draw the root at the bottom (the callers half of a sandwich view). */
  inverted?: boolean;
}

/** Where a node was drawn, for hit testing and tests. */
export interface DrawnRect {
  node: number;
  x: number;
  y: number;
  width: number;
}

export class FlameGraph {
  readonly element: HTMLDivElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly context: CanvasRenderingContext2D;
  private readonly tooltip: HTMLDivElement;
  private readonly hover: HTMLDivElement;
  private tree: FlameTree | null = null;
  private colors: string[] = [];
  private diffColors: string[] | null = null;
  private totals = { a: 0, b: 0 };
  private focusNode = 0;
  private history: number[] = [];
  private matches: Matches | null = null;
  private searchText = '';
  private drawn: DrawnRect[] = [];
  private charWidth = 7.2;
  private resizeObserver: ResizeObserver;
  private lastWidth = 0;
  private rows = 1;
  /** Milliseconds the last render took (layout excluded). */
  lastRenderMs = 0;
  /** Rectangles drawn by the last render. */
  nodesDrawn = 0;

  constructor(
    parent: HTMLElement,
    private options: FlameGraphOptions,
  ) {
    this.element = document.createElement('div');
    this.element.className = options.inverted ? 'flame inverted' : 'flame';
    this.canvas = document.createElement('canvas');
    this.canvas.setAttribute('aria-label', 'flame graph');
    this.canvas.tabIndex = 0;
    const context = this.canvas.getContext('2d', { alpha: false });
    if (!context) throw new Error('canvas 2D is not available');
    this.context = context;
    this.tooltip = document.createElement('div');
    this.tooltip.className = 'flame-tooltip';
    this.tooltip.hidden = true;
    this.hover = document.createElement('div');
    this.hover.className = 'flame-hover';
    this.hover.hidden = true;
    this.element.append(this.canvas, this.hover, this.tooltip);
    parent.append(this.element);
    this.canvas.addEventListener('mousemove', (event) => this.onMove(event));
    this.canvas.addEventListener('mouseleave', () => this.hideTooltip());
    this.canvas.addEventListener('click', (event) => this.onClick(event));
    this.canvas.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') this.reset();
      if (event.key === 'Backspace') this.back();
    });
    this.resizeObserver = new ResizeObserver(() => {
      if (this.element.clientWidth !== this.lastWidth) this.render();
    });
    this.resizeObserver.observe(this.element);
  }

  /** Shows a tree (a merge, or a diff when it has baseline values); zoom and history start over. */
  setTree(tree: FlameTree | null, options: { unit: string; totalA?: number; totalB?: number }): void {
    this.tree = tree;
    this.options.unit = options.unit;
    this.focusNode = 0;
    this.history = [];
    if (tree) {
      this.colors = tree.frames.map((frame) => frameColor(frame));
      if (tree.baseTotal) {
        this.totals = { a: options.totalA ?? tree.baseTotal[0], b: options.totalB ?? tree.total[0] };
        const colors: string[] = new Array(tree.count);
        for (let node = 0; node < tree.count; node++) colors[node] = diffColor(this.change(node));
        this.diffColors = colors;
      } else {
        this.diffColors = null;
      }
    }
    this.applySearch();
    this.render();
  }

  get current(): FlameTree | null {
    return this.tree;
  }

  get focus(): number {
    return this.focusNode;
  }

  get canGoBack(): boolean {
    return this.history.length > 0;
  }

  get search(): string {
    return this.searchText;
  }

  get matched(): Matches | null {
    return this.matches;
  }

  get rects(): readonly DrawnRect[] {
    return this.drawn;
  }

  /** Relative change of a node's share from A to B (diff trees). */
  change(node: number): number {
    const tree = this.tree;
    if (!tree || !tree.baseTotal) return 0;
    return relativeChange(tree.baseTotal[node], this.totals.a, tree.total[node], this.totals.b);
  }

  /** Zooms into `node` (the root zooms all the way out), remembering where it was for `back`. */
  zoomTo(node: number): void {
    if (!this.tree || node === this.focusNode || node < 0 || node >= this.tree.count) return;
    this.history.push(this.focusNode);
    this.focusNode = node;
    this.render();
    this.options.onChange?.();
  }

  /** Returns to the previous zoom. */
  back(): void {
    const previous = this.history.pop();
    if (previous === undefined) return;
    this.focusNode = previous;
    this.render();
    this.options.onChange?.();
  }

  /** Zooms all the way out. */
  reset(): void {
    if (this.focusNode === 0) return;
    this.zoomTo(0);
  }

  setSearch(text: string): void {
    this.searchText = text;
    this.applySearch();
    this.render();
    this.options.onChange?.();
  }

  private applySearch(): void {
    const predicate = searchPredicate(this.searchText);
    this.matches = this.tree && predicate ? matchNodes(this.tree, predicate) : null;
  }

  private colorOf(node: number, tree: FlameTree): string {
    if (this.matches && !this.matches.matched[node]) return DIMMED;
    if (this.diffColors) return this.diffColors[node];
    if (node === 0) return NEUTRAL;
    return this.colors[tree.frameOf[node]] ?? NEUTRAL;
  }

  /** The colour a node is drawn with in the current view (ancestors of the zoomed frame are neutral). */
  colorFor(node: number): string {
    const tree = this.tree;
    if (!tree) return NEUTRAL;
    if (!this.diffColors && node !== this.focusNode && tree.contains(node, this.focusNode)) return NEUTRAL;
    return this.colorOf(node, tree);
  }

  /** Draws the current view. */
  render(): void {
    const started = performance.now();
    const tree = this.tree;
    const width = Math.max(100, this.element.clientWidth);
    this.lastWidth = this.element.clientWidth;
    const ratio = window.devicePixelRatio || 1;
    const rows = tree ? tree.deepest[this.focusNode] + 1 : 1;
    this.rows = rows;
    const height = Math.min(32000, rows * ROW_HEIGHT);
    // Resizing reallocates the backing store: only when the size changes (zoom mostly keeps it).
    const pixelWidth = Math.round(width * ratio);
    const pixelHeight = Math.round(height * ratio);
    if (this.canvas.width !== pixelWidth || this.canvas.height !== pixelHeight) {
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
      this.canvas.width = pixelWidth;
      this.canvas.height = pixelHeight;
    }
    const context = this.context;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.fillStyle = '#ffffff';
    context.fillRect(0, 0, width, height);
    context.font = FONT;
    context.textBaseline = 'middle';
    this.charWidth = context.measureText('MMMMMMMMMM').width / 10 || 7.2;
    this.drawn = [];
    if (!tree || tree.total[0] <= 0) {
      context.fillStyle = '#666';
      context.fillText(tree ? 'No samples in this selection.' : 'No profile loaded.', 8, ROW_HEIGHT / 2);
      this.nodesDrawn = 0;
      this.lastRenderMs = performance.now() - started;
      return;
    }
    const focus = this.focusNode;
    for (let ancestor = tree.parent[focus]; ancestor >= 0; ancestor = tree.parent[ancestor]) {
      this.drawRect(tree, ancestor, 0, width, true);
    }
    const scale = tree.total[focus] > 0 ? width / tree.total[focus] : 0;
    const origin = tree.start[focus];
    const end = tree.subtreeEnd[tree.position[focus]];
    let position = tree.position[focus];
    while (position < end) {
      const node = tree.order[position];
      const w = tree.total[node] * scale;
      if (w < MIN_WIDTH) {
        position = tree.subtreeEnd[position];
        continue;
      }
      this.drawRect(tree, node, (tree.start[node] - origin) * scale, w, false);
      position += 1;
    }
    this.nodesDrawn = this.drawn.length;
    this.lastRenderMs = performance.now() - started;
  }

  private drawRect(tree: FlameTree, node: number, x: number, w: number, ancestor: boolean): void {
    const context = this.context;
    const y = (this.options.inverted ? this.rows - 1 - tree.depth[node] : tree.depth[node]) * ROW_HEIGHT;
    context.fillStyle = ancestor && !this.diffColors ? NEUTRAL : this.colorOf(node, tree);
    context.fillRect(x, y, w > 2 ? w - 1 : w, ROW_HEIGHT - 1);
    this.drawn.push({ node, x, y, width: w });
    const fits = Math.floor((w - 6) / this.charWidth);
    if (fits >= 3) {
      const name = tree.name(node);
      const text = name.length > fits ? `${name.slice(0, fits - 1)}…` : name;
      context.fillStyle = '#1a1a1a';
      context.fillText(text, x + 3, y + ROW_HEIGHT / 2);
    }
  }

  /** The node drawn at a point of the canvas (CSS pixels), or -1. */
  nodeAt(x: number, y: number): number {
    for (const rect of this.drawn) {
      if (y >= rect.y && y < rect.y + ROW_HEIGHT && x >= rect.x && x < rect.x + rect.width) return rect.node;
    }
    return -1;
  }

  private onClick(event: MouseEvent): void {
    const node = this.nodeAt(event.offsetX, event.offsetY);
    if (node >= 0) this.zoomTo(node);
  }

  private onMove(event: MouseEvent): void {
    const tree = this.tree;
    const node = this.nodeAt(event.offsetX, event.offsetY);
    if (!tree || node < 0) {
      this.hideTooltip();
      return;
    }
    const rect = this.drawn.find((drawn) => drawn.node === node)!;
    this.hover.hidden = false;
    this.hover.style.left = `${rect.x}px`;
    this.hover.style.top = `${rect.y}px`;
    this.hover.style.width = `${Math.max(1, rect.width - 1)}px`;
    this.hover.style.height = `${ROW_HEIGHT - 1}px`;
    this.canvas.style.cursor = 'pointer';
    this.tooltip.innerHTML = this.describe(node);
    this.tooltip.hidden = false;
    const bounds = this.element.getBoundingClientRect();
    const left = Math.min(event.clientX - bounds.left + 14, bounds.width - this.tooltip.offsetWidth - 4);
    this.tooltip.style.left = `${Math.max(0, left)}px`;
    this.tooltip.style.top = `${event.clientY - bounds.top + 16}px`;
  }

  private hideTooltip(): void {
    this.tooltip.hidden = true;
    this.hover.hidden = true;
    this.canvas.style.cursor = '';
  }

  /** The tooltip's HTML for a node: name, file/binary, total and self with percentages, diff change. */
  describe(node: number): string {
    const tree = this.tree!;
    const unit = this.options.unit;
    const frame = tree.frameOf[node] >= 0 ? tree.frames[tree.frameOf[node]] : undefined;
    const root = tree.total[0];
    const focus = tree.total[this.focusNode];
    const lines = [`<div class="tt-name">${escapeHtml(tree.name(node))}</div>`];
    if (frame?.file) lines.push(`<div class="tt-dim">${escapeHtml(frame.file)}</div>`);
    if (frame?.binary) lines.push(`<div class="tt-dim">${escapeHtml(frame.binary)}</div>`);
    const row = (label: string, value: string) => `<tr><th>${label}</th><td>${value}</td></tr>`;
    const rows = [
      row(
        'Total',
        `${formatValue(tree.total[node], unit)} · ${percent(tree.total[node], root)} of all` +
          (this.focusNode !== 0 ? ` · ${percent(tree.total[node], focus)} of zoom` : ''),
      ),
      row('Self', `${formatValue(tree.self[node], unit)} · ${percent(tree.self[node], root)} of all`),
    ];
    if (tree.baseTotal && tree.baseSelf) {
      rows.push(
        row('A total', `${formatValue(tree.baseTotal[node], unit)} · ${percent(tree.baseTotal[node], this.totals.a)}`),
        row('B total', `${formatValue(tree.total[node], unit)} · ${percent(tree.total[node], this.totals.b)}`),
        row('Change', formatChange(this.change(node))),
      );
    }
    return `${lines.join('')}<table>${rows.join('')}</table>`;
  }

  /** Stops observing size changes. */
  dispose(): void {
    this.resizeObserver.disconnect();
    this.element.remove();
  }
}

export { FlameTree };
