import { describe, expect, it } from 'vitest';
import { completionContext, defaultState, parseState, resolveTime, selectorOf, serializeState } from './state';

describe('URL state', () => {
  it('round-trips an explore view', () => {
    const state = {
      ...defaultState(),
      type: 'process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta',
      query: 'service="demo", file=~"cpu.*"',
      range: { from: '1764096000000', to: '1764096600000' },
      sumBy: 'file',
      search: 'crypto/sha256.block',
      zoom: ['main.main', 'main.generateReport'],
      fn: 'runtime.mallocgc',
      partial: true,
    };
    const text = serializeState(state);
    expect(parseState(text)).toEqual(state);
  });

  it('round-trips a compare view and leaves defaults out', () => {
    const state = { ...defaultState(), view: 'compare' as const, type: 'cpu', a: 'file="cpu-1"', b: 'file="cpu-3"', bRange: { from: '-2h', to: 'now' } };
    const text = serializeState(state);
    expect(text).not.toContain('a_from');
    expect(parseState(text)).toEqual(state);
    expect(serializeState(defaultState())).toBe('');
  });

  it('builds selectors', () => {
    expect(selectorOf('cpu', ' service="a" ')).toBe('cpu{service="a"}');
    expect(selectorOf('heap', '')).toBe('heap{}');
  });

  it('resolves API times', () => {
    const now = 1_000_000_000;
    expect(resolveTime('now', now)).toBe(now);
    expect(resolveTime('-15m', now)).toBe(now - 900_000);
    expect(resolveTime('-2d', now)).toBe(now - 172_800_000);
    expect(resolveTime('12345', now)).toBe(12345);
    expect(resolveTime('2026-01-01T00:00:00Z', now)).toBe(Date.UTC(2026, 0, 1));
    expect(resolveTime('garbage', now)).toBeNaN();
  });
});

describe('matcher autocomplete', () => {
  it('completes label names at the start of a matcher', () => {
    expect(completionContext('', 0)).toEqual({ kind: 'name', prefix: '', start: 0, end: 0 });
    expect(completionContext('serv', 4)).toEqual({ kind: 'name', prefix: 'serv', start: 0, end: 4 });
    const text = 'service="api", en';
    expect(completionContext(text, text.length)).toMatchObject({ kind: 'name', prefix: 'en', start: 15 });
  });

  it('completes values inside quotes, commas in values included', () => {
    const text = 'service="api", env=~"de';
    expect(completionContext(text, text.length)).toEqual({ kind: 'value', name: 'env', prefix: 'de', start: 21, end: text.length });
    const withComma = 'path="a,b", job!="x';
    expect(completionContext(withComma, withComma.length)).toMatchObject({ kind: 'value', name: 'job', prefix: 'x' });
  });

  it('offers nothing after an operator outside quotes', () => {
    expect(completionContext('service=', 8)).toBeNull();
  });
});

import { formatValue } from './format';

describe('value formatting', () => {
  it('formats zero and units', () => {
    expect(formatValue(0, 'nanoseconds')).toBe('0 ns');
    expect(formatValue(1_020_000_000, 'nanoseconds')).toBe('1.02 s');
    expect(formatValue(640_000_000, 'nanoseconds')).toBe('640 ms');
    expect(formatValue(1536, 'bytes')).toBe('1.5 KiB');
    expect(formatValue(0, 'count')).toBe('0');
    expect(formatValue(12_500, 'count')).toBe('12.5k');
  });
});

import { coverageWarning } from './api';

describe('coverage', () => {
  it('names the missing shard groups of a partial answer', () => {
    expect(coverageWarning({ groupsTotal: 8, missing: [] })).toBe('');
    expect(coverageWarning(undefined)).toBe('');
    expect(coverageWarning({ groupsTotal: 8, missing: [{ groupId: 5, reason: 'no quorum' }] })).toBe(
      'Partial answer: 1 of 8 shard groups missing (group 5: no quorum)',
    );
  });
});
