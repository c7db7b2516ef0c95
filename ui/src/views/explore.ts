// Explore: query bar, metrics graph with brush, flame graph and top table of the merged selection.

import { api, coverageWarning } from '../api';
import type { App } from '../main';
import { type AppState, resolveTime, selectorOf } from '../state';
import { h, queryError } from './dom';
import { MetricsChart } from './metrics';
import { ProfilePanel } from './profile';
import { MatcherInput, TimeRangePicker, TypePicker, defaultType } from './querybar';

export class ExploreView {
  readonly element: HTMLDivElement;
  readonly panel: ProfilePanel;
  private readonly types: TypePicker;
  private readonly matchers: MatcherInput;
  private readonly range: TimeRangePicker;
  private readonly sumBy: HTMLDetailsElement;
  private readonly chart: MetricsChart;
  private readonly messages: HTMLDivElement;
  private controller: AbortController | null = null;

  constructor(private app: App) {
    this.types = new TypePicker((type) => app.update({ type, zoom: [], fn: '' }, true));
    this.matchers = new MatcherInput(
      { type: () => app.state.type, range: () => app.state.range },
      () => this.submit(),
    );
    this.range = new TimeRangePicker((range) => app.update({ range, zoom: [] }, true));
    this.sumBy = h('details', { class: 'sum-by' });
    this.sumBy.addEventListener('change', () => {
      const chosen = [...this.sumBy.querySelectorAll<HTMLInputElement>('input:checked')].map((input) => input.value);
      this.sumBy.open = false;
      app.update({ sumBy: chosen.join(',') }, true);
    });
    const run = h('button', { type: 'button', class: 'primary run', onclick: () => this.submit() }, 'Run');
    const compare = h(
      'button',
      {
        type: 'button',
        class: 'to-compare',
        title: 'compare this selection with another',
        onclick: () => {
          const state = app.state;
          app.update({ view: 'compare', a: state.query, aRange: state.range, b: state.query, bRange: state.range, zoom: [], fn: '' }, true);
        },
      },
      'Compare…',
    );
    this.chart = new MetricsChart((fromMs, toMs) => app.update({ range: { from: String(fromMs), to: String(toMs) }, zoom: [] }, true));
    this.messages = h('div', { class: 'messages' });
    this.panel = new ProfilePanel({ onViewChange: (view) => app.update(view, false, false) }, 'merge');
    this.element = h(
      'div',
      { class: 'explore' },
      h('div', { class: 'query-bar' }, this.types.element, this.matchers.element, this.range.element, run, compare),
      this.messages,
      h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, 'Value over time'), h('div', { class: 'sum-by-box' }, 'Sum by ', this.sumBy)), this.chart.element),
      h('section', { class: 'card' }, this.panel.element),
    );
  }

  private submit(): void {
    this.app.update({ query: this.matchers.value.trim(), zoom: [], fn: '' }, true);
  }

  /** Runs the queries of the state and shows their answers. */
  async load(state: AppState): Promise<void> {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.messages.replaceChildren();
    this.app.busy();
    this.matchers.value = state.query;
    this.range.set(state.range);
    const now = Date.now();
    const fromMs = resolveTime(state.range.from, now);
    const toMs = resolveTime(state.range.to, now);
    try {
      const types = await api.profileTypes(state.range.from);
      if (controller.signal.aborted) return;
      let type = state.type;
      if (!type) {
        type = defaultType(types);
        if (!type) {
          this.types.set([], '');
          const widen = (from: string, label: string) =>
            h('button', { type: 'button', onclick: () => this.app.update({ range: { from, to: 'now' } }, true) }, label);
          this.messages.append(
            h(
              'div',
              { class: 'empty' },
              'No profiles in this time range. ',
              widen('-24h', 'Last 24 hours'),
              ' ',
              widen('-7d', 'Last 7 days'),
              ' — or send some: ',
              h('code', {}, 'kiln ingest cpu.pb.gz --label service=api'),
            ),
          );
          this.app.loaded();
          return;
        }
        this.app.state.type = type;
        this.app.replaceUrl();
      }
      this.types.set(types, type);
      const selector = selectorOf(type, state.query);
      const names = await api.labels(selector, state.range.from, state.range.to).catch(() => [] as string[]);
      const chosen = state.sumBy.split(',').filter(Boolean);
      this.sumBy.replaceChildren(
        h('summary', {}, chosen.length ? chosen.join(', ') : 'each series'),
        h(
          'div',
          { class: 'sum-by-menu' },
          ...names
            .filter((name) => !name.startsWith('__'))
            .map((name) => h('label', {}, h('input', { type: 'checkbox', value: name, checked: chosen.includes(name) }), ` ${name}`)),
        ),
      );
      const signal = controller.signal;
      const [range, tree, top] = await Promise.all([
        api.range(selector, state.range.from, state.range.to, state.sumBy, state.partial, signal),
        api.mergeTree(selector, state.range.from, state.range.to, state.partial, signal),
        api.mergeTop(selector, state.range.from, state.range.to, state.partial, signal),
      ]);
      if (signal.aborted) return;
      const warning = coverageWarning(tree.coverage) || coverageWarning(range.coverage);
      if (warning) this.messages.append(h('div', { class: 'warning', role: 'status' }, warning));
      this.chart.set(range, fromMs, toMs);
      tree.top = top.top;
      this.panel.showMerge(tree, { fromMs, toMs }, selector, { search: state.search, zoom: state.zoom, fn: state.fn });
      this.app.loaded();
    } catch (error) {
      if (controller.signal.aborted) return;
      this.messages.append(queryError(error, this.app, () => void this.load(this.app.state)));
      this.app.loaded();
    }
  }
}
