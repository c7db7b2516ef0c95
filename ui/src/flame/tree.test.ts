import { describe, expect, it } from 'vitest';
import type { StackTreeJson } from '../api';
import { foldedOf, pprofOf } from './export';
import { FlameTree, callersOfFunction, focusOnFunction, matchNodes, searchPredicate } from './tree';

// root(10) ─ main(10, self 1) ─ work(6) ─ hash(4)
//                             │         └ alloc(2)
//                             └ alloc(3)
// Server order is deliberately not alphabetical.
const SAMPLE: StackTreeJson = {
  frames: [{ function: 'main' }, { function: 'work' }, { function: 'hash' }, { function: 'alloc' }],
  nodes: [
    { self: 0, total: 10 },
    { frame: 0, parent: 0, self: 1, total: 10 },
    { frame: 1, parent: 1, self: 0, total: 6 },
    { frame: 2, parent: 2, self: 4, total: 4 },
    { frame: 3, parent: 2, self: 2, total: 2 },
    { frame: 3, parent: 1, self: 3, total: 3 },
  ],
};

describe('FlameTree layout', () => {
  const tree = new FlameTree(SAMPLE);

  it('orders children by name and packs them from the parent left edge', () => {
    expect(tree.children(1).map((node) => tree.name(node))).toEqual(['alloc', 'work']);
    expect(tree.start[5]).toBe(0); // alloc under main
    expect(tree.start[2]).toBe(3); // work after alloc (3)
    expect(tree.start[4]).toBe(3); // alloc under work starts at work's left edge
    expect(tree.start[3]).toBe(5); // hash after alloc (2)
  });

  it('keeps children inside their parent and leaves self as the right-hand gap', () => {
    for (let node = 1; node < tree.count; node++) {
      const parent = tree.parent[node];
      expect(tree.start[node]).toBeGreaterThanOrEqual(tree.start[parent]);
      expect(tree.start[node] + tree.total[node]).toBeLessThanOrEqual(tree.start[parent] + tree.total[parent]);
    }
    const main = 1;
    const childrenEnd = Math.max(...tree.children(main).map((child) => tree.start[child] + tree.total[child]));
    expect(tree.start[main] + tree.total[main] - childrenEnd).toBe(tree.self[main]);
  });

  it('computes depth, pre-order and subtree ends', () => {
    expect(Array.from(tree.depth)).toEqual([0, 1, 2, 3, 3, 2]);
    expect(Array.from(tree.order).map((node) => tree.name(node))).toEqual(['all', 'main', 'alloc', 'work', 'alloc', 'hash']);
    const workPosition = tree.position[2];
    expect(tree.subtreeEnd[workPosition] - workPosition).toBe(3);
    expect(tree.deepest[0]).toBe(3);
    expect(tree.deepest[5]).toBe(2);
    expect(tree.contains(2, 3)).toBe(true);
    expect(tree.contains(5, 3)).toBe(false);
  });

  it('finds the widest child and round-trips zoom paths', () => {
    expect(tree.name(tree.widestChild(0))).toBe('main');
    expect(tree.name(tree.widestChild(1))).toBe('work');
    expect(tree.pathOf(3)).toEqual(['main', 'work', 'hash']);
    expect(tree.findPath(['main', 'work', 'hash'])).toBe(3);
    expect(tree.findPath(['main', 'nope'])).toBe(-1);
  });

  it('rejects trees whose parents come after their children', () => {
    expect(() => new FlameTree({ frames: [], nodes: [{ self: 0, total: 1 }, { frame: 0, parent: 2, self: 1, total: 1 }] })).toThrow();
  });

  it('lays out 50k nodes quickly and consistently', () => {
    const nodes: StackTreeJson['nodes'] = [{ self: 0, total: 0 }];
    const frames = Array.from({ length: 500 }, (_, index) => ({ function: `pkg${index % 37}.fn${index}` }));
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (let index = 1; index < 50_000; index++) {
      const parent = Math.floor(random() * index);
      nodes.push({ frame: Math.floor(random() * frames.length), parent, self: 1, total: 0 });
    }
    for (let index = nodes.length - 1; index >= 0; index--) {
      nodes[index].total += nodes[index].self;
      if (index > 0) nodes[nodes[index].parent!].total += nodes[index].total;
    }
    const started = performance.now();
    const big = new FlameTree({ frames, nodes });
    const elapsed = performance.now() - started;
    expect(elapsed).toBeLessThan(2000);
    expect(big.order.length).toBe(50_000);
    expect(new Set(big.order).size).toBe(50_000);
    for (let node = 1; node < big.count; node += 997) {
      expect(big.start[node] + big.total[node]).toBeLessThanOrEqual(big.start[big.parent[node]] + big.total[big.parent[node]] + 1e-9);
    }
  });
});

describe('search', () => {
  const tree = new FlameTree(SAMPLE);

  it('counts each matched stack once, even when matches nest', () => {
    const all = matchNodes(tree, searchPredicate('a')!); // main, hash, alloc ×2 all contain "a"
    expect(all.value).toBe(10); // main covers everything
    const alloc = matchNodes(tree, searchPredicate('ALLOC')!);
    expect(alloc.nodes).toBe(2);
    expect(alloc.value).toBe(5);
  });

  it('supports /regex/ and ignores empty or invalid queries', () => {
    const exact = matchNodes(tree, searchPredicate('/^hash$/')!);
    expect(exact.nodes).toBe(1);
    expect(exact.value).toBe(4);
    expect(searchPredicate('  ')).toBeNull();
    expect(searchPredicate('/(/')).toBeNull();
  });
});

describe('focus on a function', () => {
  it('merges every call site of the function under one root', () => {
    const tree = new FlameTree(SAMPLE);
    const focused = new FlameTree(focusOnFunction(tree, 'alloc')!);
    expect(focused.total[0]).toBe(5);
    expect(focused.children(0).map((node) => focused.name(node))).toEqual(['alloc']);
    expect(focused.total[focused.children(0)[0]]).toBe(5);
    expect(focusOnFunction(tree, 'missing')).toBeNull();
  });

  it('lists the callers of a function, nearest first, for the sandwich view', () => {
    const tree = new FlameTree(SAMPLE);
    const callers = new FlameTree(callersOfFunction(tree, 'alloc')!);
    expect(callers.total[0]).toBe(5);
    const alloc = callers.children(0)[0];
    expect(callers.name(alloc)).toBe('alloc');
    const nearest = callers.children(alloc).map((node) => [callers.name(node), callers.total[node]]);
    expect(nearest).toEqual([['main', 3], ['work', 2]]);
    const work = callers.children(alloc)[1];
    const main = callers.children(work)[0];
    expect(callers.name(main)).toBe('main');
    expect(callers.self[main]).toBe(2); // the chain ends at main, the outermost caller
    expect(callersOfFunction(tree, 'missing')).toBeNull();
  });

  it('keeps the recursion-safe cumulative value', () => {
    // a → b → a → c: the outer a covers the inner one.
    const recursive = new FlameTree({
      frames: [{ function: 'a' }, { function: 'b' }, { function: 'c' }],
      nodes: [
        { self: 0, total: 5 },
        { frame: 0, parent: 0, self: 0, total: 5 },
        { frame: 1, parent: 1, self: 0, total: 5 },
        { frame: 0, parent: 2, self: 0, total: 5 },
        { frame: 2, parent: 3, self: 5, total: 5 },
      ],
    });
    const focused = new FlameTree(focusOnFunction(recursive, 'a')!);
    expect(focused.total[0]).toBe(5);
  });
});

describe('exports', () => {
  const tree = new FlameTree(SAMPLE);

  it('folds the stacks through the zoomed frame with their full path', () => {
    expect(foldedOf(tree, 0).trim().split('\n').sort()).toEqual(['main 1', 'main;alloc 3', 'main;work;alloc 2', 'main;work;hash 4']);
    expect(foldedOf(tree, 2).trim().split('\n').sort()).toEqual(['main;work;alloc 2', 'main;work;hash 4']);
  });

  it('encodes a pprof whose samples add up to the zoomed total', () => {
    const bytes = pprofOf(tree, 2, { id: 'x', name: 'process_cpu', sampleType: 'cpu', sampleUnit: 'nanoseconds', periodType: 'cpu', periodUnit: 'nanoseconds', delta: true }, { fromMs: 1000, toMs: 2000 });
    const profile = decode(bytes);
    const strings = (profile.get(6) ?? []).map((raw) => new TextDecoder().decode(raw as Uint8Array));
    expect(strings[0]).toBe('');
    const samples = (profile.get(2) ?? []).map((raw) => decode(raw as Uint8Array));
    const values = samples.map((sample) => packed(sample.get(2)![0] as Uint8Array)[0]);
    expect(values.sort()).toEqual([2, 4]);
    // Leaf first: hash (frame 2) under work (frame 1) under main (frame 0); location id = frame + 1.
    const stacks = samples.map((sample) => packed(sample.get(1)![0] as Uint8Array));
    expect(stacks).toContainEqual([3, 2, 1]);
    const functions = (profile.get(5) ?? []).map((raw) => decode(raw as Uint8Array));
    expect(functions.map((fn) => strings[fn.get(2)![0] as number]).sort()).toEqual(['alloc', 'hash', 'main', 'work']);
    const sampleType = decode((profile.get(1) ?? [])[0] as Uint8Array);
    expect(strings[sampleType.get(1)![0] as number]).toBe('cpu');
    expect(profile.get(10)![0]).toBe(1000 * 1e6);
  });
});

/** A minimal protobuf reader: field number → values (numbers for varints, bytes for length-delimited). */
function decode(bytes: Uint8Array): Map<number, (number | Uint8Array)[]> {
  const fields = new Map<number, (number | Uint8Array)[]>();
  let offset = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      const byte = bytes[offset++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) return value;
    }
  };
  while (offset < bytes.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    let value: number | Uint8Array;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const length = varint();
      value = bytes.subarray(offset, offset + length);
      offset += length;
    } else throw new Error(`wire type ${wire}`);
    fields.set(field, [...(fields.get(field) ?? []), value]);
  }
  return fields;
}

function packed(bytes: Uint8Array): number[] {
  const values: number[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    let value = 0;
    let scale = 1;
    for (;;) {
      const byte = bytes[offset++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) break;
    }
    values.push(value);
  }
  return values;
}
