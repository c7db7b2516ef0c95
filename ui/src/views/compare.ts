// Compare: selections A and B side by side (label sets and/or time ranges), the diff flame graph
// coloured by relative change, and the biggest regressions and improvements.

import { api, coverageWarning, type RangeResult } from '../api';
import type { App } from '../main';
import { type AppState, type Range, resolveTime, selectorOf } from '../state';
import { h, queryError } from './dom';
import { MetricsChart } from './metrics';
import { ProfilePanel } from './profile';
import { MatcherInput, TimeRangePicker, TypePicker, defaultType } from './querybar';

/** Baseline shortcuts: A becomes B's selection this much earlier. */
const BASELINE_SHIFTS: [string, number][] = [
  ['1 hour earlier', 3_600_000],
  ['1 day earlier', 86_400_000],
  ['1 week earlier', 604_800_000],
];

class Side {
  readonly element: HTMLElement;
  readonly matchers: MatcherInput;
  readonly range: TimeRangePicker;
  readonly chart: MetricsChart;

  constructor(app: App, readonly name: 'a' | 'b', submit: () => void) {
    const rangeKey = name === 'a' ? 'aRange' : 'bRange';
    this.matchers = new MatcherInput({ type: () => app.state.type, range: () => app.state[rangeKey] }, submit);
    this.range = new TimeRangePicker((range: Range) => app.update({ [rangeKey]: range, zoom: [] }, true));
    this.chart = new MetricsChart((fromMs, toMs) => app.update({ [rangeKey]: { from: String(fromMs), to: String(toMs) }, zoom: [] }, true), 120);
    this.element = h(
      'section',
      { class: `card side side-${name}` },
      h('h2', {}, name === 'a' ? 'A · baseline' : 'B · comparison'),
      h('div', { class: 'query-bar' }, this.matchers.element, this.range.element),
      this.chart.element,
    );
  }
}

export class CompareView {
  readonly element: HTMLDivElement;
  readonly panel: ProfilePanel;
  private readonly types: TypePicker;
  private readonly a: Side;
  private readonly b: Side;
  private readonly messages: HTMLDivElement;
  private controller: AbortController | null = null;

  constructor(private app: App) {
    const submit = () => app.update({ a: this.a.matchers.value.trim(), b: this.b.matchers.value.trim(), zoom: [], fn: '' }, true);
    this.types = new TypePicker((type) => app.update({ type, zoom: [], fn: '' }, true));
    this.a = new Side(app, 'a', submit);
    this.b = new Side(app, 'b', submit);
    this.messages = h('div', { class: 'messages' });
    this.panel = new ProfilePanel({ onViewChange: (view) => app.update(view, false, false) }, 'diff');
    const shortcut = h(
      'select',
      { class: 'baseline-shortcut', 'aria-label': 'baseline shortcut', title: 'set A to B\'s selection at an earlier time' },
      h('option', { value: '' }, 'A = B earlier…'),
      ...BASELINE_SHIFTS.map(([label, ms]) => h('option', { value: String(ms) }, label)),
    );
    shortcut.addEventListener('change', () => {
      const shift = Number(shortcut.value);
      shortcut.value = '';
      if (!shift) return;
      const now = Date.now();
      const b = app.state.bRange;
      const from = resolveTime(b.from, now);
      const to = resolveTime(b.to, now);
      app.update({ a: this.b.matchers.value.trim(), b: this.b.matchers.value.trim(), aRange: { from: String(from - shift), to: String(to - shift) }, bRange: { from: String(from), to: String(to) }, zoom: [], fn: '' }, true);
    });
    this.element = h(
      'div',
      { class: 'compare' },
      h('div', { class: 'query-bar' }, h('label', {}, 'Profile type ', this.types.element), h('button', { type: 'button', class: 'primary run', onclick: submit }, 'Compare'), shortcut),
      h('div', { class: 'sides' }, this.a.element, this.b.element),
      this.messages,
      h('section', { class: 'card' }, this.panel.element),
    );
  }

  async load(state: AppState): Promise<void> {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const signal = controller.signal;
    this.messages.replaceChildren();
    this.app.busy();
    this.a.matchers.value = state.a;
    this.b.matchers.value = state.b;
    this.a.range.set(state.aRange);
    this.b.range.set(state.bRange);
    const now = Date.now();
    const resolve = (range: Range) => ({ fromMs: resolveTime(range.from, now), toMs: resolveTime(range.to, now) });
    try {
      const earliest = resolve(state.aRange).fromMs <= resolve(state.bRange).fromMs ? state.aRange.from : state.bRange.from;
      const types = await api.profileTypes(earliest);
      if (signal.aborted) return;
      const type = state.type || defaultType(types);
      if (!type) {
        this.messages.append(h('div', { class: 'empty' }, 'No profiles in these time ranges.'));
        this.app.loaded();
        return;
      }
      if (!state.type) {
        this.app.state.type = type;
        this.app.replaceUrl();
      }
      this.types.set(types, type);
      const a = { selector: selectorOf(type, state.a), ...state.aRange };
      const b = { selector: selectorOf(type, state.b), ...state.bRange };
      const [rangeA, rangeB, diff] = await Promise.all([
        api.range(a.selector, a.from, a.to, '', state.partial, signal),
        api.range(b.selector, b.from, b.to, '', state.partial, signal),
        api.diff(a, b, state.partial, signal),
      ]);
      if (signal.aborted) return;
      const warning = coverageWarning(diff.coverage);
      if (warning) this.messages.append(h('div', { class: 'warning', role: 'status' }, warning));
      const show = (side: Side, range: RangeResult, window: Range) => {
        const resolved = resolve(window);
        side.chart.set(range, resolved.fromMs, resolved.toMs);
      };
      show(this.a, rangeA, state.aRange);
      show(this.b, rangeB, state.bRange);
      this.panel.showDiff(diff, resolve(state.bRange), `${a.selector} → ${b.selector}`, { search: state.search, zoom: state.zoom, fn: state.fn });
      this.app.loaded();
    } catch (error) {
      if (signal.aborted) return;
      this.messages.append(queryError(error, this.app, () => void this.load(this.app.state)));
      this.app.loaded();
    }
  }
}
