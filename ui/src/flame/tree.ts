// The flame graph's data: a stack tree from the API, laid out for an icicle (root on top).
//
// Layout: children of a node are ordered by function name (then by node index), so the same profile always
// draws the same way and two profiles line up; the first child starts at its parent's left edge and each
// child is as wide as its total, so a node's self value is the gap at the right end of its parent.
// Nodes are kept in struct-of-arrays form and in drawing pre-order (`order`), with the end of each subtree
// (`subtreeEnd`), so the renderer can skip a whole subtree that is narrower than a pixel.

import type { Frame, StackTreeJson, TreeNodeJson } from '../api';

export class FlameTree {
  readonly count: number;
  readonly frames: Frame[];
  /** Frame index per node; -1 for the root. */
  readonly frameOf: Int32Array;
  /** Parent per node; -1 for the root. */
  readonly parent: Int32Array;
  readonly self: Float64Array;
  readonly total: Float64Array;
  /** Diff trees only: the baseline (A) values. */
  readonly baseSelf: Float64Array | null;
  readonly baseTotal: Float64Array | null;
  readonly depth: Int32Array;
  /** Left edge of each node in value units, the root starting at 0. */
  readonly start: Float64Array;
  /** Node ids in drawing pre-order. */
  readonly order: Int32Array;
  /** Position of each node in `order`. */
  readonly position: Int32Array;
  /** Per position in `order`: the position just after that node's subtree. */
  readonly subtreeEnd: Int32Array;
  /** Per node: the deepest depth in its subtree. */
  readonly deepest: Int32Array;

  constructor(json: StackTreeJson) {
    const nodes = json.nodes;
    const count = nodes.length;
    if (count === 0) throw new Error('empty stack tree');
    this.count = count;
    this.frames = json.frames;
    this.frameOf = new Int32Array(count);
    this.parent = new Int32Array(count);
    this.self = new Float64Array(count);
    this.total = new Float64Array(count);
    const diff = nodes.some((node) => node.baselineTotal !== undefined);
    this.baseSelf = diff ? new Float64Array(count) : null;
    this.baseTotal = diff ? new Float64Array(count) : null;
    this.depth = new Int32Array(count);
    const childCount = new Int32Array(count);
    for (let index = 0; index < count; index++) {
      const node: TreeNodeJson = nodes[index];
      const parent = index === 0 ? -1 : (node.parent ?? -1);
      if (index > 0 && (parent < 0 || parent >= index)) {
        throw new Error(`node ${index}: parent ${parent} must come before it`);
      }
      this.parent[index] = parent;
      this.frameOf[index] = index === 0 ? -1 : (node.frame ?? -1);
      this.self[index] = node.self;
      this.total[index] = node.total;
      if (this.baseSelf && this.baseTotal) {
        this.baseSelf[index] = node.baselineSelf ?? 0;
        this.baseTotal[index] = node.baselineTotal ?? 0;
      }
      if (parent >= 0) {
        this.depth[index] = this.depth[parent] + 1;
        childCount[parent] += 1;
      }
    }
    // Children in CSR form, sorted by name.
    const firstChild = new Int32Array(count + 1);
    for (let index = 0; index < count; index++) firstChild[index + 1] = firstChild[index] + childCount[index];
    const children = new Int32Array(Math.max(0, count - 1));
    const fill = firstChild.slice(0, count);
    for (let index = 1; index < count; index++) children[fill[this.parent[index]]++] = index;
    const names = this.frames.map((frame) => frame.function);
    const nameOf = (node: number) => (this.frameOf[node] >= 0 ? (names[this.frameOf[node]] ?? '') : '');
    for (let node = 0; node < count; node++) {
      if (childCount[node] > 1) {
        children.subarray(firstChild[node], firstChild[node + 1]).sort((a, b) => {
          const left = nameOf(a);
          const right = nameOf(b);
          return left < right ? -1 : left > right ? 1 : a - b;
        });
      }
    }
    // Subtree sizes and deepest depth (parents come before children).
    const size = new Int32Array(count).fill(1);
    this.deepest = Int32Array.from(this.depth);
    for (let index = count - 1; index > 0; index--) {
      const parent = this.parent[index];
      size[parent] += size[index];
      if (this.deepest[index] > this.deepest[parent]) this.deepest[parent] = this.deepest[index];
    }
    // Pre-order with sorted children; left edges.
    this.order = new Int32Array(count);
    this.position = new Int32Array(count);
    this.subtreeEnd = new Int32Array(count);
    this.start = new Float64Array(count);
    const stack = new Int32Array(count);
    let top = 0;
    stack[top++] = 0;
    let next = 0;
    while (top > 0) {
      const node = stack[--top];
      this.order[next] = node;
      this.position[node] = next;
      this.subtreeEnd[next] = next + size[node];
      next += 1;
      let edge = this.start[node];
      for (let slot = firstChild[node]; slot < firstChild[node + 1]; slot++) {
        const child = children[slot];
        this.start[child] = edge;
        edge += this.total[child];
      }
      for (let slot = firstChild[node + 1] - 1; slot >= firstChild[node]; slot--) stack[top++] = children[slot];
    }
  }

  /** The function name of a node; `all` for the root. */
  name(node: number): string {
    const frame = this.frameOf[node];
    return frame < 0 ? 'all' : (this.frames[frame]?.function ?? '?');
  }

  /** The children of a node in drawing order. */
  children(node: number): number[] {
    const result: number[] = [];
    const end = this.subtreeEnd[this.position[node]];
    let position = this.position[node] + 1;
    while (position < end) {
      result.push(this.order[position]);
      position = this.subtreeEnd[position];
    }
    return result;
  }

  /** The widest child of a node, or -1 when it has none. */
  widestChild(node: number): number {
    let best = -1;
    for (const child of this.children(node)) {
      if (best < 0 || this.total[child] > this.total[best]) best = child;
    }
    return best;
  }

  /** True when `ancestor` is `node` or one of its ancestors. */
  contains(ancestor: number, node: number): boolean {
    const position = this.position[node];
    const start = this.position[ancestor];
    return position >= start && position < this.subtreeEnd[start];
  }

  /** Function names from the root's child down to `node` (empty for the root). */
  pathOf(node: number): string[] {
    const path: string[] = [];
    for (let current = node; current > 0; current = this.parent[current]) path.push(this.name(current));
    return path.reverse();
  }

  /** The node reached by following `path` from the root (the widest child of each name), or -1. */
  findPath(path: string[]): number {
    let node = 0;
    for (const name of path) {
      let best = -1;
      for (const child of this.children(node)) {
        if (this.name(child) === name && (best < 0 || this.total[child] > this.total[best])) best = child;
      }
      if (best < 0) return -1;
      node = best;
    }
    return node;
  }
}

/** What a search matched: per node, and the value of matched stacks counted once each. */
export interface Matches {
  matched: Uint8Array;
  nodes: number;
  /** The total of matched nodes that have no matched ancestor: each stack counted once. */
  value: number;
}

/** Builds the predicate of a search text: `/regex/` (case-insensitive) or a case-insensitive substring. */
export function searchPredicate(text: string): ((name: string) => boolean) | null {
  const query = text.trim();
  if (!query) return null;
  const regex = /^\/(.+)\/$/.exec(query);
  if (regex) {
    try {
      const pattern = new RegExp(regex[1], 'i');
      return (name) => pattern.test(name);
    } catch {
      return null;
    }
  }
  const needle = query.toLowerCase();
  return (name) => name.toLowerCase().includes(needle);
}

/** Marks the nodes whose function satisfies `predicate`. */
export function matchNodes(tree: FlameTree, predicate: (name: string) => boolean): Matches {
  const byFrame = tree.frames.map((frame) => predicate(frame.function));
  const matched = new Uint8Array(tree.count);
  let nodes = 0;
  let value = 0;
  let coveredUntil = -1;
  for (let position = 0; position < tree.count; position++) {
    const node = tree.order[position];
    const frame = tree.frameOf[node];
    if (frame >= 0 && byFrame[frame]) {
      matched[node] = 1;
      nodes += 1;
      if (position >= coveredUntil) {
        value += tree.total[node];
        coveredUntil = tree.subtreeEnd[position];
      }
    }
  }
  return { matched, nodes, value };
}

/**
 * The tree of everything a function calls, merged over every call site: the subtrees of the function's
 * outermost occurrences merged into one, under a new root. Its total is the function's cumulative value
 * (each stack counted once, as in a top table's `cum`).
 */
export function focusOnFunction(tree: FlameTree, name: string): StackTreeJson | null {
  const nodes: TreeNodeJson[] = [{ self: 0, total: 0 }];
  const diff = tree.baseTotal !== null;
  if (diff) {
    nodes[0].baselineSelf = 0;
    nodes[0].baselineTotal = 0;
  }
  const childKey = new Map<string, number>();
  const mapped = new Int32Array(tree.count).fill(-1);
  let found = false;
  const add = (oldNode: number, newParent: number): number => {
    const key = `${newParent}:${tree.frameOf[oldNode]}`;
    let created = childKey.get(key);
    if (created === undefined) {
      created = nodes.length;
      childKey.set(key, created);
      nodes.push({ frame: tree.frameOf[oldNode], parent: newParent, self: 0, total: 0 });
      if (diff) {
        nodes[created].baselineSelf = 0;
        nodes[created].baselineTotal = 0;
      }
    }
    const target = nodes[created];
    target.self += tree.self[oldNode];
    target.total += tree.total[oldNode];
    if (diff && tree.baseSelf && tree.baseTotal) {
      target.baselineSelf! += tree.baseSelf[oldNode];
      target.baselineTotal! += tree.baseTotal[oldNode];
    }
    return created;
  };
  let position = 1;
  while (position < tree.count) {
    const node = tree.order[position];
    if (tree.name(node) !== name) {
      position += 1;
      continue;
    }
    found = true;
    const end = tree.subtreeEnd[position];
    mapped[node] = add(node, 0);
    nodes[0].total += tree.total[node];
    if (diff && tree.baseTotal) nodes[0].baselineTotal! += tree.baseTotal[node];
    for (let inner = position + 1; inner < end; inner++) {
      const descendant = tree.order[inner];
      mapped[descendant] = add(descendant, mapped[tree.parent[descendant]]);
    }
    position = end;
  }
  // The frame of the first occurrence stands for the function; different source files of the same name
  // would otherwise split the new root.
  if (!found) return null;
  const rootChildren = nodes.filter((node) => node.parent === 0);
  if (rootChildren.length > 1) {
    return focusMergeRoots(nodes, tree.frames);
  }
  return { frames: tree.frames, nodes };
}

/** Merges several top-level children of the same function name (different files) into the first. */
function focusMergeRoots(nodes: TreeNodeJson[], frames: Frame[]): StackTreeJson {
  // Rebuild by path of names: simple and rare.
  const result: TreeNodeJson[] = [{ ...nodes[0] }];
  const remap = new Int32Array(nodes.length).fill(-1);
  remap[0] = 0;
  const keyToNew = new Map<string, number>();
  let firstTop = -1;
  for (let index = 1; index < nodes.length; index++) {
    const node = nodes[index];
    const parent = remap[node.parent!];
    let key: string;
    if (node.parent === 0) {
      if (firstTop < 0) firstTop = node.frame!;
      key = `0:top`;
    } else {
      key = `${parent}:${frames[node.frame!]?.function}:${node.frame}`;
    }
    let target = keyToNew.get(key);
    if (target === undefined) {
      target = result.length;
      keyToNew.set(key, target);
      result.push({
        frame: node.parent === 0 ? firstTop : node.frame,
        parent,
        self: 0,
        total: 0,
        ...(node.baselineTotal !== undefined ? { baselineSelf: 0, baselineTotal: 0 } : {}),
      });
    }
    const into = result[target];
    into.self += node.self;
    into.total += node.total;
    if (into.baselineTotal !== undefined) {
      into.baselineSelf! += node.baselineSelf ?? 0;
      into.baselineTotal! += node.baselineTotal ?? 0;
    }
    remap[index] = target;
  }
  return { frames, nodes: result };
}

/**
 * The callers of a function, for the top half of a sandwich view: under the root, the function (every
 * outermost occurrence merged), then its callers, nearest first. A caller node's total is the value of
 * the function's stacks that went through that chain of callers; the chain ends (self) at the outermost
 * caller. Recursion-safe: only outermost occurrences count, so the total is the function's `cum`.
 */
export function callersOfFunction(tree: FlameTree, name: string): StackTreeJson | null {
  const diff = tree.baseTotal !== null;
  const nodes: TreeNodeJson[] = [{ self: 0, total: 0 }];
  const withBaseline = (node: TreeNodeJson): TreeNodeJson => (diff ? { ...node, baselineSelf: 0, baselineTotal: 0 } : node);
  nodes[0] = withBaseline(nodes[0]);
  const childKey = new Map<string, number>();
  let focus = -1;
  const child = (parent: number, frame: number): number => {
    const key = `${parent}:${frame}`;
    let found = childKey.get(key);
    if (found === undefined) {
      found = nodes.length;
      childKey.set(key, found);
      nodes.push(withBaseline({ frame, parent, self: 0, total: 0 }));
    }
    return found;
  };
  const add = (target: number, value: number, base: number, isEnd: boolean) => {
    const node = nodes[target];
    node.total += value;
    if (isEnd) node.self += value;
    if (diff) {
      node.baselineTotal! += base;
      if (isEnd) node.baselineSelf! += base;
    }
  };
  let position = 1;
  while (position < tree.count) {
    const occurrence = tree.order[position];
    if (tree.name(occurrence) !== name) {
      position += 1;
      continue;
    }
    const value = tree.total[occurrence];
    const base = tree.baseTotal ? tree.baseTotal[occurrence] : 0;
    if (focus < 0) focus = child(0, tree.frameOf[occurrence]);
    add(0, value, base, false);
    let current = focus;
    add(current, value, base, tree.parent[occurrence] === 0);
    for (let caller = tree.parent[occurrence]; caller > 0; caller = tree.parent[caller]) {
      current = child(current, tree.frameOf[caller]);
      add(current, value, base, tree.parent[caller] === 0);
    }
    position = tree.subtreeEnd[position];
  }
  return focus < 0 ? null : { frames: tree.frames, nodes };
}
