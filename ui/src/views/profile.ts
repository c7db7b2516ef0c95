// The profile panel: flame graph with its toolbar (search, zoom breadcrumbs, back, exports) beside the
// top table (merge) or above the tables of biggest regressions and improvements (diff).

import type { DiffResult, MergeResult, ProfileType, TopRow } from '../api';
import { DIFF_NEUTRAL_BELOW } from '../flame/colors';
import { download, foldedOf, gzip, pprofOf, svgOf } from '../flame/export';
import { FlameTree, callersOfFunction, focusOnFunction } from '../flame/tree';
import { FlameGraph } from '../flame/view';
import { escapeHtml, formatChange, formatValue, percent } from '../format';
import { debounce, h } from './dom';
import { TopTable } from './toptable';

export interface PanelState {
  search: string;
  zoom: string[];
  fn: string;
}

export interface ProfilePanelHost {
  /** Called when search, zoom or focused function change (to keep them in the URL). */
  onViewChange(state: PanelState): void;
}

interface Loaded {
  base: FlameTree;
  profileType?: ProfileType;
  rows: TopRow[];
  totalA?: number;
  totalB: number;
  range: { fromMs: number; toMs: number };
  title: string;
}

export class ProfilePanel {
  readonly element: HTMLDivElement;
  readonly flame: FlameGraph;
  /** The callers of the focused function (top half of the sandwich), shown only while one is focused. */
  readonly callers: FlameGraph;
  private readonly callersBox: HTMLDivElement;
  private readonly callersTitle: HTMLHeadingElement;
  private readonly searchInput: HTMLInputElement;
  private readonly matchInfo: HTMLSpanElement;
  private readonly crumbs: HTMLDivElement;
  private readonly backButton: HTMLButtonElement;
  private readonly resetButton: HTMLButtonElement;
  private readonly summary: HTMLDivElement;
  private readonly table: TopTable | null;
  private readonly diffTables: HTMLDivElement | null;
  private loaded: Loaded | null = null;
  /** How long the last tree took to lay out and to draw the first time, ms (benchmarks read it). */
  timings = { layoutMs: 0, firstDrawMs: 0 };
  private fn = '';
  private restoring = false;

  constructor(
    private host: ProfilePanelHost,
    readonly mode: 'merge' | 'diff',
  ) {
    this.summary = h('div', { class: 'summary' });
    this.searchInput = h('input', { type: 'search', class: 'flame-search', placeholder: 'Search frames (text or /regex/)', 'aria-label': 'search frames' });
    this.matchInfo = h('span', { class: 'match-info', 'aria-live': 'polite' });
    this.backButton = h('button', { type: 'button', class: 'back', title: 'Back (Backspace)', onclick: () => this.back() }, '← Back');
    this.resetButton = h('button', { type: 'button', class: 'reset', title: 'Reset zoom (Esc)', onclick: () => this.resetView() }, 'Reset');
    const exportButtons = h(
      'span',
      { class: 'exports' },
      'Export:',
      h('button', { type: 'button', 'data-export': 'svg', onclick: () => this.exportSvg() }, 'SVG'),
      h('button', { type: 'button', 'data-export': 'pprof', onclick: () => void this.exportPprof() }, 'pprof'),
      h('button', { type: 'button', 'data-export': 'folded', onclick: () => this.exportFolded() }, 'folded'),
    );
    this.crumbs = h('div', { class: 'crumbs' });
    const toolbar = h('div', { class: 'flame-toolbar' }, this.searchInput, this.matchInfo, this.backButton, this.resetButton, exportButtons);
    const flameHolder = h('div', { class: 'flame-holder' });
    this.flame = new FlameGraph(flameHolder, { unit: '', onChange: () => this.viewChanged() });
    this.searchInput.addEventListener(
      'input',
      debounce(() => this.flame.setSearch(this.searchInput.value), 120),
    );
    const callersHolder = h('div', { class: 'flame-holder' });
    this.callers = new FlameGraph(callersHolder, { unit: '', inverted: true });
    this.callersTitle = h('h3', { class: 'sandwich-title' });
    this.callersBox = h('div', { class: 'callers' }, this.callersTitle, callersHolder, h('h3', { class: 'sandwich-title' }, 'Callees (click to zoom)'));
    this.callersBox.hidden = true;
    const flameColumn = h('div', { class: 'flame-column' }, toolbar, this.crumbs, this.callersBox, flameHolder);
    if (mode === 'merge') {
      this.table = new TopTable((name) => this.focusFunction(name));
      this.diffTables = null;
      const split = h('div', { class: 'profile-split' }, this.table.element, flameColumn);
      const layout = h(
        'select',
        { class: 'layout', 'aria-label': 'layout' },
        h('option', { value: 'both' }, 'Table and flame graph'),
        h('option', { value: 'flame' }, 'Flame graph'),
        h('option', { value: 'table' }, 'Top table'),
      );
      layout.value = localStorage.getItem('kiln.layout') ?? 'both';
      split.dataset.layout = layout.value;
      layout.addEventListener('change', () => {
        split.dataset.layout = layout.value;
        localStorage.setItem('kiln.layout', layout.value);
      });
      this.element = h('div', { class: 'profile-panel' }, h('div', { class: 'panel-head' }, this.summary, layout), split);
    } else {
      this.table = null;
      this.diffTables = h('div', { class: 'diff-tables' });
      const legend = h(
        'div',
        { class: 'diff-legend' },
        h('span', { class: 'swatch better' }), 'smaller share in B',
        h('span', { class: 'swatch same' }), `unchanged (<${DIFF_NEUTRAL_BELOW * 100}%)`,
        h('span', { class: 'swatch worse' }), 'larger share in B (full colour at +100% or new)',
      );
      this.element = h('div', { class: 'profile-panel diff' }, this.summary, legend, flameColumn, this.diffTables);
    }
    this.updateControls();
  }

  /** Shows a merge answer, restoring search, zoom and focused function. */
  showMerge(result: MergeResult, range: { fromMs: number; toMs: number }, title: string, view: PanelState): void {
    const unit = result.profileType?.sampleUnit ?? '';
    const started = performance.now();
    const tree = new FlameTree(result.tree ?? { frames: [], nodes: [{ self: 0, total: 0 }] });
    this.timings.layoutMs = performance.now() - started;
    this.loaded = { base: tree, profileType: result.profileType, rows: result.top?.rows ?? [], totalB: result.total, range, title };
    this.summary.innerHTML =
      `<b>${escapeHtml(title)}</b> · total <b>${formatValue(result.total, unit)}</b> · ${result.profiles} profiles · ` +
      `${result.series} series` +
      (result.truncation.nodesRemoved ? ` · ${result.truncation.nodesRemoved} small nodes folded` : '');
    this.table?.set(this.loaded.rows, result.total, unit);
    this.restore(view);
    this.timings.firstDrawMs = this.flame.lastRenderMs;
    performance.mark('kiln:profile-shown');
  }

  /** Shows a diff answer (B against baseline A). */
  showDiff(result: DiffResult, range: { fromMs: number; toMs: number }, title: string, view: PanelState): void {
    const unit = result.profileType?.sampleUnit ?? '';
    const tree = new FlameTree(result.tree ?? { frames: [], nodes: [{ self: 0, total: 0, baselineSelf: 0, baselineTotal: 0 }] });
    this.loaded = {
      base: tree,
      profileType: result.profileType,
      rows: result.top?.rows ?? [],
      totalA: result.totalA,
      totalB: result.totalB,
      range,
      title,
    };
    const change = result.totalA ? (result.totalB - result.totalA) / result.totalA : Infinity;
    this.summary.innerHTML =
      `<b>${escapeHtml(title)}</b> · A total <b>${formatValue(result.totalA, unit)}</b> · B total ` +
      `<b>${formatValue(result.totalB, unit)}</b> (${formatChange(change)}) · colours compare each frame's share of its profile`;
    this.drawDiffTables(unit);
    this.restore(view);
  }

  private restore(view: PanelState): void {
    this.restoring = true;
    this.searchInput.value = view.search;
    this.fn = view.fn;
    this.applyTree();
    this.flame.setSearch(view.search);
    if (view.zoom.length) {
      const node = this.flame.current?.findPath(view.zoom) ?? -1;
      if (node > 0) this.flame.zoomTo(node);
    }
    this.restoring = false;
    this.updateControls();
  }

  private applyTree(): void {
    const loaded = this.loaded;
    if (!loaded) return;
    let tree = loaded.base;
    const unit = loaded.profileType?.sampleUnit ?? '';
    let callers: FlameTree | null = null;
    if (this.fn) {
      const focused = focusOnFunction(loaded.base, this.fn);
      const callersJson = callersOfFunction(loaded.base, this.fn);
      if (focused && callersJson) {
        tree = new FlameTree(focused);
        callers = new FlameTree(callersJson);
      } else {
        this.fn = '';
      }
    }
    this.flame.setTree(tree, { unit, totalA: loaded.totalA, totalB: loaded.totalB });
    this.callersBox.hidden = callers === null;
    this.callersTitle.textContent = `Callers of ${this.fn} (nearest caller just above it)`;
    if (callers) this.callers.setTree(callers, { unit, totalA: loaded.totalA, totalB: loaded.totalB });
    this.table?.select(this.fn);
  }

  /** Focuses the flame graph on a function: every call site merged under it. */
  focusFunction(name: string): void {
    this.fn = this.fn === name ? '' : name;
    this.applyTree();
    this.viewChanged();
  }

  back(): void {
    if (this.flame.canGoBack) this.flame.back();
    else if (this.fn) this.focusFunction(this.fn);
  }

  resetView(): void {
    if (this.fn) {
      this.fn = '';
      this.applyTree();
      this.viewChanged();
    } else {
      this.flame.reset();
    }
  }

  private viewChanged(): void {
    this.updateControls();
    if (this.restoring) return;
    const tree = this.flame.current;
    this.host.onViewChange({
      search: this.flame.search,
      zoom: tree ? tree.pathOf(this.flame.focus) : [],
      fn: this.fn,
    });
  }

  private updateControls(): void {
    const tree = this.flame.current;
    const matches = this.flame.matched;
    if (tree && matches) {
      this.matchInfo.textContent =
        `${matches.nodes} frames match · ${percent(matches.value, tree.total[0])} of total` +
        ` (${formatValue(matches.value, this.loaded?.profileType?.sampleUnit ?? '')})`;
    } else {
      this.matchInfo.textContent = '';
    }
    this.backButton.disabled = !this.flame.canGoBack && !this.fn;
    this.resetButton.disabled = this.flame.focus === 0 && !this.fn;
    const parts: HTMLElement[] = [];
    if (this.fn) {
      parts.push(h('span', { class: 'chip', title: 'flame graph of this function over all its call sites' }, `focus: ${this.fn}`, h('button', { type: 'button', 'aria-label': 'clear focus', onclick: () => this.focusFunction(this.fn) }, '×')));
    }
    if (tree) {
      const path: number[] = [];
      for (let node = this.flame.focus; node >= 0; node = tree.parent[node]) path.unshift(node);
      path.forEach((node, index) => {
        if (index > 0) parts.push(h('span', { class: 'sep' }, '›'));
        parts.push(h('a', { href: '#', onclick: (event: Event) => { event.preventDefault(); this.flame.zoomTo(node); } }, tree.name(node)));
      });
    }
    this.crumbs.replaceChildren(...parts);
  }

  private drawDiffTables(unit: string): void {
    const loaded = this.loaded;
    if (!loaded || !this.diffTables) return;
    const totalA = loaded.totalA ?? 0;
    const totalB = loaded.totalB;
    const share = (value: number | undefined, total: number) => (total > 0 ? (value ?? 0) / total : 0);
    const rows = loaded.rows.map((row) => ({
      row,
      aFlat: share(row.baselineFlat, totalA),
      bFlat: share(row.flat, totalB),
      aCum: share(row.baselineCum, totalA),
      bCum: share(row.cum, totalB),
    }));
    const delta = (entry: (typeof rows)[number]) => entry.bFlat - entry.aFlat || (entry.bCum - entry.aCum) / 1000;
    const regressions = rows.filter((entry) => delta(entry) > 0).sort((l, r) => delta(r) - delta(l)).slice(0, 25);
    const improvements = rows.filter((entry) => delta(entry) < 0).sort((l, r) => delta(l) - delta(r)).slice(0, 25);
    const pp = (value: number) => `${value > 0 ? '+' : ''}${(value * 100).toFixed(2)} pp`;
    const table = (title: string, kind: string, entries: typeof rows) =>
      h(
        'div',
        { class: `diff-table ${kind}` },
        h('h3', {}, title),
        entries.length
          ? (() => {
              const element = h('table', { class: 'data' });
              element.innerHTML =
                '<thead><tr><th>Function</th><th class="num">A flat%</th><th class="num">B flat%</th><th class="num">Δ flat</th>' +
                '<th class="num">A cum%</th><th class="num">B cum%</th><th class="num">Δ cum</th><th class="num">B flat</th></tr></thead><tbody>' +
                entries
                  .map(
                    (entry) =>
                      `<tr data-name="${escapeHtml(entry.row.frame.function)}"><td class="fn">${escapeHtml(entry.row.frame.function)}</td>` +
                      `<td class="num">${(entry.aFlat * 100).toFixed(2)}%</td><td class="num">${(entry.bFlat * 100).toFixed(2)}%</td>` +
                      `<td class="num delta">${pp(entry.bFlat - entry.aFlat)}</td>` +
                      `<td class="num">${(entry.aCum * 100).toFixed(2)}%</td><td class="num">${(entry.bCum * 100).toFixed(2)}%</td>` +
                      `<td class="num delta">${pp(entry.bCum - entry.aCum)}</td><td class="num">${formatValue(entry.row.flat, unit)}</td></tr>`,
                  )
                  .join('') +
                '</tbody>';
              element.addEventListener('click', (event) => {
                const name = (event.target as HTMLElement).closest('tr')?.dataset.name;
                if (name) this.focusFunction(name);
              });
              return element;
            })()
          : h('p', { class: 'muted' }, 'None.'),
      );
    this.diffTables.replaceChildren(
      table('Biggest regressions (share grew in B)', 'regressions', regressions),
      table('Biggest improvements (share shrank in B)', 'improvements', improvements),
    );
  }

  // ---------------------------------------------------------------- exports

  private fileStem(): string {
    const name = this.loaded?.profileType?.name ?? 'profile';
    const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
    return `kiln-${name}${this.mode === 'diff' ? '-diff' : ''}-${stamp}`;
  }

  exportFolded(): void {
    const tree = this.flame.current;
    if (!tree) return;
    download(foldedOf(tree, this.flame.focus), `${this.fileStem()}.folded`, 'text/plain');
  }

  async exportPprof(): Promise<void> {
    const tree = this.flame.current;
    if (!tree || !this.loaded) return;
    const bytes = await gzip(pprofOf(tree, this.flame.focus, this.loaded.profileType, this.loaded.range));
    download(bytes as BlobPart, `${this.fileStem()}.pb.gz`, 'application/octet-stream');
  }

  exportSvg(): void {
    const tree = this.flame.current;
    if (!tree || !this.loaded) return;
    const unit = this.loaded.profileType?.sampleUnit ?? '';
    const svg = svgOf(tree, this.flame.focus, {
      width: 1200,
      rowHeight: 18,
      title: this.loaded.title + (this.fn ? ` · focus ${this.fn}` : ''),
      color: (node) => this.flame.colorFor(node),
      label: (node) =>
        `${tree.name(node)}\ntotal ${formatValue(tree.total[node], unit)} (${percent(tree.total[node], tree.total[0])}), ` +
        `self ${formatValue(tree.self[node], unit)}` +
        (tree.baseTotal ? `\nchange ${formatChange(this.flame.change(node))}` : ''),
    });
    download(svg, `${this.fileStem()}.svg`, 'image/svg+xml');
  }
}
