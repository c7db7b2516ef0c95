// Benchmark of the web UI (not a test): a flame graph of 50k nodes in headless chromium against a real
// kiln-node — time to first render, time to re-render on zoom — and the gzipped size of the bundle.
//
//   cd ui && npm run build && cargo build --workspace --all-targets && npm run bench
//
// Prints a Markdown table (BENCHMARKS.md keeps the last run).

import { readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { gzipSync } from 'node:zlib';
import { UI_DIR, launchBrowser, startNode, waitFor, waitForLoads } from './lib.mjs';

const NODES = Number(process.env.BENCH_NODES ?? 50_000);
const ZOOMS = 30;

/** A random tree of `count` nodes (every node a distinct stack with its own self value), as folded text. */
function foldedTree(count) {
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const packages = Array.from({ length: 60 }, (_, index) => `github.com/acme/svc${index % 12}/pkg${index}`);
  const names = Array.from({ length: 4000 }, (_, index) => `${packages[index % packages.length]}.(*T${index % 17}).Func${index}`);
  const parent = new Int32Array(count);
  const name = new Int32Array(count);
  const used = new Map();
  const lines = [];
  const path = [];
  for (let node = 1; node < count; node++) {
    const roll = random();
    parent[node] = roll < 0.55 ? node - 1 : roll < 0.9 ? Math.max(0, node - 1 - Math.floor(random() * 200)) : Math.floor(random() * node);
    let siblings = used.get(parent[node]);
    if (!siblings) used.set(parent[node], (siblings = new Set()));
    let pick;
    do pick = Math.floor(random() * names.length);
    while (siblings.has(pick));
    siblings.add(pick);
    name[node] = pick;
    path.length = 0;
    for (let current = node; current > 0; current = parent[current]) path.push(names[name[current]]);
    lines.push(`${path.reverse().join(';')} ${1 + Math.floor(random() * 50)}`);
  }
  return lines.join('\n') + '\n';
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function p95(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))];
}

const bundle = readdirSync(join(UI_DIR, 'dist/assets')).map((file) => {
  const bytes = readFileSync(join(UI_DIR, 'dist/assets', file));
  return { file, raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
});
const index = readFileSync(join(UI_DIR, 'dist/index.html'));
const bundleGzip = bundle.reduce((sum, entry) => sum + entry.gzip, 0) + gzipSync(index, { level: 9 }).length;

const work = mkdtempSync(join(tmpdir(), 'kiln-ui-bench-'));
const folded = join(work, 'bench.folded');
writeFileSync(folded, foldedTree(NODES));
const node = await startNode();
const browser = await launchBrowser();
try {
  node.kiln(['ingest', folded, '--label', 'bench=tree']);
  const types = await (await fetch(`${node.url}/api/v1/profile-types`)).json();
  const type = types.types[0].id;
  const query = new URLSearchParams({ type, q: 'bench="tree"', from: '-1h', to: 'now' });
  const treeUrl = `${node.url}/api/v1/query/merge?${new URLSearchParams({ selector: `${type}{bench="tree"}`, from: '-1h', format: 'tree' })}`;
  await waitFor('the node to answer', async () => (await fetch(treeUrl)).ok, 60_000, 200);
  const runs = [];
  for (let run = 0; run < 5; run++) {
    const page = await browser.context.newPage();
    await page.goto(`${node.url}/?${query}`);
    await waitForLoads(page, 1, 120_000);
    const result = await page.evaluate(async ({ treeUrl, zooms }) => {
      const app = window.kiln;
      const graph = app.flame;
      const tree = graph.current;
      // JSON parse of the same answer, measured apart from the network.
      const text = await (await fetch(treeUrl)).text();
      const parseStart = performance.now();
      JSON.parse(text);
      const parseMs = performance.now() - parseStart;
      const shown = performance.getEntriesByName('kiln:profile-shown')[0].startTime;
      // Zoom: into frames of every depth that are at least 3 px wide, each followed by a return to the root.
      const candidates = graph.rects.filter((rect) => rect.node !== 0 && rect.width >= 3 && tree.children(rect.node).length > 0);
      const picks = [];
      for (let index = 0; index < zooms && candidates.length; index++) picks.push(candidates[(index * 7919) % candidates.length].node);
      const zoomMs = [];
      const zoomToFrameMs = [];
      for (const target of picks) {
        const start = performance.now();
        graph.zoomTo(target);
        zoomMs.push(performance.now() - start);
        await new Promise((done) => requestAnimationFrame(() => done()));
        zoomToFrameMs.push(performance.now() - start);
        graph.reset();
        await new Promise((done) => requestAnimationFrame(() => done()));
      }
      return {
        nodes: tree.count,
        jsonBytes: text.length,
        parseMs,
        layoutMs: app.panel.timings.layoutMs,
        drawMs: app.panel.timings.firstDrawMs,
        drawn: graph.nodesDrawn,
        pageToFlameMs: shown,
        zoomMs,
        zoomToFrameMs,
      };
    }, { treeUrl, zooms: ZOOMS });
    runs.push(result);
    await page.close();
  }
  const first = runs.map((run) => run.parseMs + run.layoutMs + run.drawMs);
  const zoom = runs.flatMap((run) => run.zoomMs);
  const zoomFrame = runs.flatMap((run) => run.zoomToFrameMs);
  const fmt = (value) => value.toFixed(1);
  console.log(`| measure | value |`);
  console.log(`| --- | --- |`);
  console.log(`| tree nodes (merged, from the node) | ${runs[0].nodes} (${(runs[0].jsonBytes / 1e6).toFixed(1)} MB of JSON) |`);
  console.log(`| first render: JSON.parse + layout + first draw, median of ${runs.length} page loads | ${fmt(median(first))} ms (parse ${fmt(median(runs.map((r) => r.parseMs)))}, layout ${fmt(median(runs.map((r) => r.layoutMs)))}, draw ${fmt(median(runs.map((r) => r.drawMs)))}; ${runs[0].drawn} rectangles drawn) |`);
  console.log(`| navigation start → flame graph shown (includes the node's merge query), median | ${fmt(median(runs.map((r) => r.pageToFlameMs)))} ms |`);
  console.log(`| zoom re-render (click handler to canvas drawn), median / p95 of ${zoom.length} | ${fmt(median(zoom))} ms / ${fmt(p95(zoom))} ms |`);
  console.log(`| zoom to next animation frame, median / p95 | ${fmt(median(zoomFrame))} ms / ${fmt(p95(zoomFrame))} ms |`);
  console.log(`| bundle, gzipped (index.html + ${bundle.map((entry) => entry.file).join(' + ')}) | ${(bundleGzip / 1024).toFixed(1)} KiB (raw ${(bundle.reduce((sum, entry) => sum + entry.raw, 0) / 1024).toFixed(1)} KiB) |`);
} finally {
  await browser.close();
  await node.stop();
  rmSync(work, { recursive: true, force: true });
}
