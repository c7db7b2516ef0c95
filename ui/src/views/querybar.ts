// The query bar's parts: profile type picker, label matchers with autocomplete, time range picker.

import { api, type ProfileType } from '../api';
import { formatTime } from '../format';
import { type CompletionContext, type Range, completionContext, resolveTime, selectorOf } from '../state';
import { debounce, h } from './dom';

export function typeLabel(type: ProfileType): string {
  return `${type.name} · ${type.sampleType} (${type.sampleUnit})`;
}

/** Picks the type to show when none is chosen: CPU first, else the first with data. */
export function defaultType(types: ProfileType[]): string {
  const cpu = types.find((type) => type.name === 'process_cpu' && type.sampleType === 'cpu');
  return (cpu ?? types[0])?.id ?? '';
}

export class TypePicker {
  readonly element: HTMLSelectElement;
  constructor(onChange: (id: string) => void) {
    this.element = h('select', { class: 'type-picker', 'aria-label': 'profile type', title: 'profile type' });
    this.element.addEventListener('change', () => onChange(this.element.value));
  }
  set(types: ProfileType[], selected: string): void {
    this.element.replaceChildren(
      ...types.map((type) => h('option', { value: type.id, title: type.id }, typeLabel(type))),
    );
    if (selected && !types.some((type) => type.id === selected)) {
      this.element.append(h('option', { value: selected }, `${selected} (no data in range)`));
    }
    this.element.value = selected;
  }
}

/** Where autocomplete looks labels up: the selected type and time range. */
export interface MatcherScope {
  type: () => string;
  range: () => Range;
}

/** A text input for label matchers (`name="value", ...`) that completes label names and values. */
export class MatcherInput {
  readonly element: HTMLDivElement;
  readonly input: HTMLInputElement;
  private readonly list: HTMLUListElement;
  private items: string[] = [];
  private active = -1;
  private context: CompletionContext | null = null;
  private requestId = 0;
  private readonly cache = new Map<string, Promise<string[]>>();

  constructor(
    private scope: MatcherScope,
    private onSubmit: () => void,
    placeholder = 'service="api", env!="dev"',
  ) {
    this.input = h('input', {
      class: 'matchers',
      type: 'text',
      spellcheck: 'false',
      autocomplete: 'off',
      placeholder,
      'aria-label': 'label matchers',
      role: 'combobox',
      'aria-autocomplete': 'list',
    });
    this.list = h('ul', { class: 'suggestions', role: 'listbox' });
    this.list.hidden = true;
    this.element = h('div', { class: 'matcher-box' }, h('span', { class: 'brace' }, '{'), this.input, h('span', { class: 'brace' }, '}'), this.list);
    const refresh = debounce(() => void this.suggest(), 80);
    this.input.addEventListener('input', refresh);
    this.input.addEventListener('focus', refresh);
    this.input.addEventListener('click', refresh);
    this.input.addEventListener('blur', () => setTimeout(() => this.close(), 150));
    this.input.addEventListener('keydown', (event) => this.onKey(event));
  }

  get value(): string {
    return this.input.value;
  }
  set value(text: string) {
    this.input.value = text;
  }

  private lookup(key: string, load: () => Promise<string[]>): Promise<string[]> {
    let found = this.cache.get(key);
    if (!found) {
      found = load().catch(() => []);
      this.cache.set(key, found);
      setTimeout(() => this.cache.delete(key), 30_000);
    }
    return found;
  }

  private async suggest(): Promise<void> {
    const cursor = this.input.selectionStart ?? this.input.value.length;
    const context = completionContext(this.input.value, cursor);
    const id = ++this.requestId;
    if (!context) return this.close();
    const { from, to } = this.scope.range();
    const selector = selectorOf(this.scope.type(), '');
    let candidates: string[];
    if (context.kind === 'name') {
      candidates = await this.lookup(`n|${selector}|${from}|${to}`, () => api.labels(selector, from, to));
      candidates = candidates.filter((name) => !name.startsWith('__'));
    } else {
      candidates = await this.lookup(`v|${context.name}|${selector}|${from}|${to}`, () =>
        api.labelValues(context.name, selector, from, to),
      );
    }
    if (id !== this.requestId) return;
    const prefix = context.prefix.toLowerCase();
    this.items = candidates.filter((item) => item.toLowerCase().startsWith(prefix) && item !== context.prefix).slice(0, 50);
    this.context = context;
    this.active = this.items.length ? 0 : -1;
    this.draw();
  }

  private draw(): void {
    if (!this.items.length || document.activeElement !== this.input) return this.close();
    this.list.replaceChildren(
      ...this.items.map((item, index) =>
        h(
          'li',
          {
            role: 'option',
            class: index === this.active ? 'active' : '',
            'aria-selected': index === this.active ? 'true' : 'false',
            onmousedown: (event: Event) => {
              event.preventDefault();
              this.accept(index);
            },
          },
          item,
        ),
      ),
    );
    this.list.hidden = false;
  }

  private close(): void {
    this.list.hidden = true;
    this.items = [];
    this.active = -1;
  }

  private accept(index: number): void {
    const context = this.context;
    const item = this.items[index];
    if (!context || item === undefined) return;
    const text = this.input.value;
    let insert = item;
    let after = text.slice(context.end);
    if (context.kind === 'name') {
      if (!/^\s*(=|!=|=~|!~)/.test(after)) insert = `${item}="`;
    } else {
      const escaped = item.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
      insert = `${escaped}"`;
      if (after.startsWith('"')) after = after.slice(1);
    }
    this.input.value = text.slice(0, context.start) + insert + after;
    const cursor = context.start + insert.length;
    this.input.setSelectionRange(cursor, cursor);
    this.close();
    void this.suggest();
  }

  private onKey(event: KeyboardEvent): void {
    const open = !this.list.hidden && this.items.length > 0;
    if (open && (event.key === 'ArrowDown' || event.key === 'ArrowUp')) {
      event.preventDefault();
      const step = event.key === 'ArrowDown' ? 1 : -1;
      this.active = (this.active + step + this.items.length) % this.items.length;
      this.draw();
    } else if (open && (event.key === 'Tab' || (event.key === 'Enter' && this.active >= 0))) {
      event.preventDefault();
      this.accept(this.active);
    } else if (event.key === 'Enter') {
      event.preventDefault();
      this.close();
      this.onSubmit();
    } else if (event.key === 'Escape') {
      this.close();
    }
  }
}

const PRESETS: [string, string][] = [
  ['-5m', 'Last 5 minutes'],
  ['-15m', 'Last 15 minutes'],
  ['-1h', 'Last hour'],
  ['-6h', 'Last 6 hours'],
  ['-24h', 'Last 24 hours'],
  ['-2d', 'Last 2 days'],
  ['-7d', 'Last 7 days'],
  ['-30d', 'Last 30 days'],
];

function toLocalInput(ms: number): string {
  if (!Number.isFinite(ms)) return '';
  return formatTime(ms).replace(' ', 'T');
}

/** Relative presets (last 5m … 30d) or an absolute range in local time. */
export class TimeRangePicker {
  readonly element: HTMLDivElement;
  private readonly select: HTMLSelectElement;
  private readonly fromInput: HTMLInputElement;
  private readonly toInput: HTMLInputElement;
  private readonly custom: HTMLSpanElement;
  private current: Range = { from: '-1h', to: 'now' };

  constructor(private onChange: (range: Range) => void) {
    this.select = h(
      'select',
      { class: 'range-picker', 'aria-label': 'time range' },
      ...PRESETS.map(([value, label]) => h('option', { value }, label)),
      h('option', { value: 'custom' }, 'Absolute…'),
    );
    this.fromInput = h('input', { type: 'datetime-local', step: 1, 'aria-label': 'from' });
    this.toInput = h('input', { type: 'datetime-local', step: 1, 'aria-label': 'to' });
    const apply = h('button', { type: 'button', onclick: () => this.applyCustom() }, 'Apply');
    this.custom = h('span', { class: 'custom-range' }, this.fromInput, '→', this.toInput, apply);
    this.element = h('div', { class: 'range-box' }, this.select, this.custom);
    this.select.addEventListener('change', () => {
      if (this.select.value === 'custom') {
        const now = Date.now();
        this.fromInput.value = toLocalInput(resolveTime(this.current.from, now));
        this.toInput.value = toLocalInput(resolveTime(this.current.to, now));
        this.custom.hidden = false;
      } else {
        this.onChange({ from: this.select.value, to: 'now' });
      }
    });
  }

  private applyCustom(): void {
    const from = Date.parse(this.fromInput.value);
    const to = Date.parse(this.toInput.value);
    if (Number.isNaN(from) || Number.isNaN(to) || from >= to) {
      this.fromInput.setCustomValidity('from must be before to');
      this.fromInput.reportValidity();
      return;
    }
    this.fromInput.setCustomValidity('');
    this.onChange({ from: String(from), to: String(to) });
  }

  set(range: Range): void {
    this.current = range;
    const preset = range.to === 'now' && PRESETS.some(([value]) => value === range.from);
    if (preset) {
      this.select.value = range.from;
      this.custom.hidden = true;
    } else {
      this.select.value = 'custom';
      const now = Date.now();
      this.fromInput.value = toLocalInput(resolveTime(range.from, now));
      this.toInput.value = toLocalInput(resolveTime(range.to, now));
      this.custom.hidden = false;
    }
  }
}
