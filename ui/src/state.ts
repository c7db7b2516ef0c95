// The view's state, kept in the URL's query string so that a link reproduces the view.
//
// Explore:  ?type=ID&q=MATCHERS&from=&to=&by=LABELS&search=TEXT&zoom=F1;F2&fn=FUNCTION
// Compare:  ?view=compare&type=ID&a=MATCHERS&a_from=&a_to=&b=MATCHERS&b_from=&b_to=&search=&zoom=
// Status:   ?view=status
// Either query view: &partial=1 asks for partial answers when shard groups are missing.
// Times are what the API takes (`now`, `-1h`, unix milliseconds, RFC 3339).

export type View = 'explore' | 'compare' | 'status';

export interface Range {
  from: string;
  to: string;
}

export interface AppState {
  view: View;
  /** Profile type id (or alias); empty until chosen. */
  type: string;
  /** Explore: matchers without braces, e.g. `service="api", env!="dev"`. */
  query: string;
  range: Range;
  /** Label names the metrics graph sums by, comma-separated. */
  sumBy: string;
  /** Compare: selection A and B. */
  a: string;
  aRange: Range;
  b: string;
  bRange: Range;
  search: string;
  /** Function names from the root to the zoomed frame. */
  zoom: string[];
  /** A function the flame graph is focused on (merged over call sites). */
  fn: string;
  /** Ask for partial answers when some shard groups cannot answer (`partial=1`). */
  partial: boolean;
}

export const DEFAULT_RANGE: Range = { from: '-1h', to: 'now' };

export function defaultState(): AppState {
  return {
    view: 'explore',
    type: '',
    query: '',
    range: { ...DEFAULT_RANGE },
    sumBy: '',
    a: '',
    aRange: { ...DEFAULT_RANGE },
    b: '',
    bRange: { ...DEFAULT_RANGE },
    search: '',
    zoom: [],
    fn: '',
    partial: false,
  };
}

function range(params: URLSearchParams, prefix: string): Range {
  return {
    from: params.get(`${prefix}from`) || DEFAULT_RANGE.from,
    to: params.get(`${prefix}to`) || DEFAULT_RANGE.to,
  };
}

/** Reads the state from a query string; anything missing gets its default. */
export function parseState(search: string): AppState {
  const params = new URLSearchParams(search);
  const state = defaultState();
  const view = params.get('view');
  if (view === 'compare' || view === 'status') state.view = view;
  state.type = params.get('type') ?? '';
  state.query = params.get('q') ?? '';
  state.range = range(params, '');
  state.sumBy = params.get('by') ?? '';
  state.a = params.get('a') ?? '';
  state.aRange = range(params, 'a_');
  state.b = params.get('b') ?? '';
  state.bRange = range(params, 'b_');
  state.search = params.get('search') ?? '';
  const zoom = params.get('zoom');
  state.zoom = zoom ? zoom.split(';') : [];
  state.fn = params.get('fn') ?? '';
  state.partial = params.get('partial') === '1';
  return state;
}

/** Writes the state as a query string (with `?`), leaving out defaults and what the view does not use. */
export function serializeState(state: AppState): string {
  const params = new URLSearchParams();
  const put = (key: string, value: string, fallback = '') => {
    if (value && value !== fallback) params.set(key, value);
  };
  if (state.view !== 'explore') params.set('view', state.view);
  if (state.view !== 'status') {
    put('type', state.type);
    if (state.view === 'explore') {
      put('q', state.query);
      put('from', state.range.from, DEFAULT_RANGE.from);
      put('to', state.range.to, DEFAULT_RANGE.to);
      put('by', state.sumBy);
    } else {
      put('a', state.a);
      put('a_from', state.aRange.from, DEFAULT_RANGE.from);
      put('a_to', state.aRange.to, DEFAULT_RANGE.to);
      put('b', state.b);
      put('b_from', state.bRange.from, DEFAULT_RANGE.from);
      put('b_to', state.bRange.to, DEFAULT_RANGE.to);
    }
    put('search', state.search);
    if (state.zoom.length) params.set('zoom', state.zoom.join(';'));
    put('fn', state.fn);
    if (state.partial) params.set('partial', '1');
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

/** The selector of a profile type and matchers: `TYPE{MATCHERS}`. */
export function selectorOf(type: string, matchers: string): string {
  return `${type}{${matchers.trim()}}`;
}

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Resolves an API time (`now`, `-15m`, `now-1h`, unix ms, RFC 3339) to unix milliseconds, or NaN. */
export function resolveTime(text: string, now: number): number {
  const value = text.trim();
  if (value === 'now') return now;
  const relative = /^(?:now)?-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(value);
  if (relative) return now - Number(relative[1]) * UNITS[relative[2]];
  if (/^-?\d+$/.test(value)) return Number(value);
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? NaN : parsed;
}

/** Where the cursor is in a matchers text, for autocomplete. */
export type CompletionContext =
  | { kind: 'name'; prefix: string; start: number; end: number }
  | { kind: 'value'; name: string; prefix: string; start: number; end: number };

/**
 * What to complete at `cursor` in a matchers text like `service="api", env=~"de`: a label name at the
 * start of a matcher, a value inside the quotes after `name=`/`!=`/`=~`/`!~`, nothing elsewhere.
 * `start`/`end` delimit the text a completion replaces.
 */
export function completionContext(text: string, cursor: number): CompletionContext | null {
  let index = 0;
  let matcherStart = 0;
  // Walk the matchers before the cursor, skipping quoted values.
  while (index < cursor) {
    const char = text[index];
    if (char === '"') {
      let close = index + 1;
      while (close < text.length && text[close] !== '"') close += text[close] === '\\' ? 2 : 1;
      if (close >= cursor) {
        // Inside a value.
        const head = text.slice(matcherStart, index);
        const match = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*$/.exec(head);
        if (!match) return null;
        const valueEnd = close < text.length ? close : text.length;
        return { kind: 'value', name: match[1], prefix: text.slice(index + 1, cursor), start: index + 1, end: valueEnd };
      }
      index = close + 1;
      continue;
    }
    if (char === ',') matcherStart = index + 1;
    index += 1;
  }
  const head = text.slice(matcherStart, cursor);
  const name = /^\s*([A-Za-z_][A-Za-z0-9_]*)?$/.exec(head);
  if (!name) return null;
  const prefix = name[1] ?? '';
  let end = cursor;
  while (end < text.length && /[A-Za-z0-9_]/.test(text[end])) end += 1;
  return { kind: 'name', prefix, start: cursor - prefix.length, end };
}
