// End-to-end test of the web UI: a real kiln-node holding the shared Go profiles (ingested with the real
// kiln CLI), Debian's headless chromium driven by playwright-core, `go tool pprof`'s own output as the
// reference. Screenshots land in ui/test-artifacts/.
//
// Run with `npm run e2e` after `npm run build` and `cargo build --workspace --all-targets` (scripts/test.sh
// does all of it).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { TESTDATA, ensureArtifacts, launchBrowser, startNode, waitFor, waitForLoads } from './lib.mjs';

const GO = join(TESTDATA, 'pprof/go');
const CPU_TYPE = 'process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta';

/** Parses `go tool pprof -top` text: rows of flat, flat%, sum%, cum, cum%, function. */
function parseTop(text) {
  const seconds = (value) => (value === '0' ? 0 : Math.round(parseFloat(value) * (value.endsWith('ms') ? 1e6 : 1e9)));
  const rows = [];
  for (const line of text.split('\n')) {
    const match = /^\s*(\S+)\s+(\S+%)\s+(\S+%)\s+(\S+)\s+(\S+%)\s+(.+?)(?: \(inline\))?\s*$/.exec(line);
    if (match && match[1] !== 'flat') {
      rows.push({ flat: seconds(match[1]), flatPercent: match[2], cum: seconds(match[4]), cumPercent: match[5], name: match[6] });
    }
  }
  return rows;
}

let node;
let browser;
let page;
let artifacts;
let range;
const consoleErrors = [];
const expected = parseTop(readFileSync(join(GO, 'expected/cpu.top.txt'), 'utf8'));

async function shot(name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

/** Evaluates in the page against the flame graph of the current view. */
function flame(fn, arg) {
  return page.evaluate(
    ([source, value]) => {
      const graph = window.kiln.flame;
      // eslint-disable-next-line no-new-func
      return new Function('graph', 'value', `return (${source})(graph, value);`)(graph, value);
    },
    [fn.toString(), arg],
  );
}

/** Reads one pixel of the flame graph canvas at CSS coordinates. */
function pixel(x, y) {
  return page.evaluate(
    ([px, py]) => {
      const canvas = document.querySelector('.flame:not(.inverted) canvas');
      const ratio = canvas.width / canvas.clientWidth;
      const data = canvas.getContext('2d').getImageData(Math.floor(px * ratio), Math.floor(py * ratio), 1, 1).data;
      return [data[0], data[1], data[2]];
    },
    [x, y],
  );
}

async function loadsSoFar() {
  return page.evaluate(() => window.kiln?.loads ?? 0);
}

/** Navigates and waits for the app's first load to finish. */
async function open(path) {
  await page.goto(`${node.url}${path}`);
  await waitForLoads(page, 1);
}

describe('web UI against a real node', () => {
  before(async () => {
    artifacts = ensureArtifacts();
    node = await startNode();
    for (const stem of ['cpu', 'cpu-1', 'cpu-2', 'cpu-3', 'heap']) {
      node.kiln(['ingest', join(GO, `${stem}.pb.gz`), '--label', `file=${stem}`, '--label', 'service=demo', '--label', 'instance=e2e-host:6060']);
    }
    // The profiles carry the time they were recorded: find it and select around it.
    const answer = await (await fetch(`${node.url}/api/v1/query/range?selector=cpu{service="demo"}&from=0&step=1h`)).json();
    const stamps = answer.series.flatMap((series) => series.points.map((point) => point.timestampMs));
    assert.ok(stamps.length > 0, 'the ingested CPU profiles are queryable');
    range = { from: Math.min(...stamps) - 3_600_000, to: Math.max(...stamps) + 2 * 3_600_000 };
    // A node may still be electing its shard groups' leaders right after it starts: wait until every
    // group answers a query.
    await waitFor(
      'the node to answer merge queries',
      async () => {
        const answer = await fetch(`${node.url}/api/v1/query/merge?selector=cpu{}&from=${range.from}&to=${range.to}&format=top&limit=1`);
        if (!answer.ok) throw new Error(`${answer.status}: ${await answer.text()}`);
        return true;
      },
      60_000,
      200,
    );
    browser = await launchBrowser();
    page = await browser.context.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(`${message.text()} @ ${message.location().url}`);
    });
    page.on('pageerror', (error) => consoleErrors.push(`pageerror: ${error.message}`));
  });

  after(async () => {
    await browser?.close();
    await node?.stop();
  });

  test('the page loads with no console errors and defaults to the CPU profile type', async () => {
    await open(`/?from=${range.from}&to=${range.to}`);
    await waitFor('the type picker', () => page.$eval('.type-picker', (select) => select.value));
    assert.equal(await page.$eval('.type-picker', (select) => select.value), CPU_TYPE);
    assert.match(page.url(), /type=process_cpu/);
    await shot('01-explore-all');
    assert.deepEqual(consoleErrors, []);
  });

  test('matchers autocomplete label names and values from the API', async () => {
    const before = await loadsSoFar();
    await page.click('input.matchers');
    await page.keyboard.type('fi');
    await waitFor('label name suggestion', () => page.$$eval('.suggestions li', (items) => items.map((item) => item.textContent).includes('file')));
    await page.keyboard.press('Tab');
    assert.equal(await page.inputValue('input.matchers'), 'file="');
    await waitFor('label value suggestions', () =>
      page.$$eval('.suggestions li', (items) => items.map((item) => item.textContent).join(',') === 'cpu,cpu-1,cpu-2,cpu-3'),
    );
    await page.keyboard.type('cpu"');
    await page.keyboard.press('Escape');
    await page.keyboard.press('Enter');
    await waitForLoads(page, before + 1);
    assert.match(decodeURIComponent(page.url()), /q=file="cpu"/);
  });

  test("the flame graph's widest frame under the root matches go tool pprof", async () => {
    const widestExpected = expected.reduce((best, row) => (row.cum > best.cum ? row : best));
    const total = expected.reduce((sum, row) => sum + row.flat, 0);
    const widest = await flame((graph) => {
      const tree = graph.current;
      const node = tree.widestChild(0);
      const rect = graph.rects.find((drawn) => drawn.node === node);
      return { name: tree.name(node), total: tree.total[node], root: tree.total[0], rect, width: document.querySelector('.flame:not(.inverted) canvas').clientWidth };
    });
    assert.equal(widest.name, widestExpected.name);
    assert.ok(Math.abs(widest.total - widestExpected.cum) < 5e6, `${widest.total} vs ${widestExpected.cum}`);
    assert.ok(Math.abs(widest.root - total) < 5e6 * expected.length);
    // Drawn: as wide as its share of the canvas, and painted (not background white).
    assert.ok(widest.rect, 'the widest frame was drawn');
    assert.ok(Math.abs(widest.rect.width - (widest.width * widest.total) / widest.root) < 1);
    const colour = await pixel(widest.rect.x + widest.rect.width / 2, widest.rect.y + 4);
    assert.notDeepEqual(colour, [255, 255, 255]);
  });

  test("the top table's first row matches expected/cpu.top.txt", async () => {
    const first = await page.$$eval('table.top tbody tr:first-child td', (cells) => cells.map((cell) => cell.textContent));
    const [flat, flatPercent, , , name] = first;
    assert.equal(name, expected[0].name);
    assert.equal(flatPercent, expected[0].flatPercent);
    assert.equal(flat, `${(expected[0].flat / 1e9).toFixed(2).replace(/\.?0+$/, '')} s`);
    // Sorting by cum puts the widest frame first.
    await page.click('th[data-sort="cum"]');
    const byCum = await page.$eval('table.top tbody tr:first-child td.fn', (cell) => cell.textContent);
    assert.equal(byCum, 'main.worker');
    await page.click('th[data-sort="flat"]');
    await page.fill('.top-filter', 'sha256');
    await waitFor('the filter', () => page.$$eval('table.top tbody tr', (rows) => rows.length > 0 && rows.every((row) => row.dataset.name.includes('sha256'))));
    await page.fill('.top-filter', '');
  });

  test('search highlights crypto/sha256.block and shows its share', async () => {
    await page.fill('.flame-search', 'crypto/sha256.block');
    await waitFor('match info', () => page.$eval('.match-info', (span) => span.textContent));
    const info = await page.$eval('.match-info', (span) => span.textContent);
    assert.match(info, new RegExp(`${expected[0].flatPercent.replace('.', '\\.')} of total`));
    const rects = await flame((graph) => {
      const tree = graph.current;
      const hit = graph.rects.filter((rect) => tree.name(rect.node) === 'crypto/sha256.block').sort((a, b) => b.width - a.width)[0];
      const miss = graph.rects.find((rect) => tree.name(rect.node) === 'main.worker');
      return { hit, miss, matched: graph.matched.nodes };
    });
    assert.ok(rects.matched > 0);
    const hitColour = await pixel(rects.hit.x + rects.hit.width / 2, rects.hit.y + 3);
    const missColour = await pixel(rects.miss.x + rects.miss.width / 2, rects.miss.y + 3);
    assert.deepEqual(missColour, [224, 224, 224], 'frames that do not match are dimmed');
    assert.notDeepEqual(hitColour, [224, 224, 224], 'matches keep their colour');
    assert.match(decodeURIComponent(page.url()), /search=crypto\/sha256\.block/);
    await shot('02-search-sha256');
  });

  test('tooltip shows self, total and percentages', async () => {
    const rect = await flame((graph) => graph.rects.find((drawn) => graph.current.name(drawn.node) === 'main.worker'));
    const box = await page.$eval('.flame:not(.inverted) canvas', (canvas) => {
      const bounds = canvas.getBoundingClientRect();
      return { x: bounds.x, y: bounds.y };
    });
    await page.mouse.move(box.x + rect.x + 20, box.y + rect.y + 5);
    await waitFor('tooltip', () => page.$eval('.flame:not(.inverted) .flame-tooltip', (tip) => !tip.hidden && tip.textContent.includes('main.worker')));
    const text = await page.$eval('.flame:not(.inverted) .flame-tooltip', (tip) => tip.textContent);
    assert.match(text, /Total.*97\.\d\d% of all/);
    assert.match(text, /Self/);
  });

  test('zoom on click and back', async () => {
    const target = await flame((graph) => {
      const tree = graph.current;
      const worker = tree.widestChild(0);
      const child = tree.widestChild(worker);
      const rect = graph.rects.find((drawn) => drawn.node === child);
      return { node: child, name: tree.name(child), rect };
    });
    const box = await page.$eval('.flame:not(.inverted) canvas', (canvas) => {
      const bounds = canvas.getBoundingClientRect();
      return { x: bounds.x, y: bounds.y, width: bounds.width };
    });
    await page.mouse.click(box.x + target.rect.x + target.rect.width / 2, box.y + target.rect.y + 5);
    await waitFor('zoom', () => flame((graph) => graph.focus).then((focus) => focus === target.node));
    const zoomed = await flame((graph, node) => graph.rects.find((rect) => rect.node === node), target.node);
    assert.ok(zoomed.x === 0 && Math.abs(zoomed.width - box.width) < 1, 'the zoomed frame spans the width');
    assert.match(decodeURIComponent(page.url()), new RegExp(`zoom=main\\.worker;${target.name.replace(/[.*()]/g, '\\$&')}`));
    assert.match(await page.$eval('.crumbs', (crumbs) => crumbs.textContent), new RegExp(target.name.replace(/[.*()]/g, '\\$&')));
    await shot('03-zoomed');
    await page.click('button.back');
    await waitFor('zoom back out', () => flame((graph) => graph.focus === 0));
    assert.doesNotMatch(page.url(), /zoom=/);
    // Zoom again for the reload test.
    await page.mouse.click(box.x + target.rect.x + target.rect.width / 2, box.y + target.rect.y + 5);
    await waitFor('zoom again', () => flame((graph, node) => graph.focus === node, target.node));
  });

  test('the URL reproduces the view after a reload', async () => {
    const url = page.url();
    const beforeView = await flame((graph) => ({ path: graph.current.pathOf(graph.focus), search: graph.search, matched: graph.matched?.nodes }));
    const firstRow = await page.$eval('table.top tbody tr:first-child', (row) => row.textContent);
    await page.reload();
    await waitForLoads(page, 1);
    assert.equal(page.url(), url);
    const afterView = await flame((graph) => ({ path: graph.current.pathOf(graph.focus), search: graph.search, matched: graph.matched?.nodes }));
    assert.deepEqual(afterView, beforeView);
    assert.equal(await page.inputValue('.flame-search'), 'crypto/sha256.block');
    assert.equal(await page.inputValue('input.matchers'), 'file="cpu"');
    assert.equal(await page.$eval('table.top tbody tr:first-child', (row) => row.textContent), firstRow);
    await shot('04-reloaded');
  });

  test('clicking a top table row focuses the flame graph on that function', async () => {
    await page.click('button.reset');
    await page.fill('.flame-search', '');
    await page.click('table.top tbody tr[data-name="crypto/sha256.block"]');
    await waitFor('focus chip', () => page.$eval('.crumbs', (crumbs) => crumbs.textContent.includes('focus: crypto/sha256.block')));
    const focused = await flame((graph) => ({ root: graph.current.total[0], first: graph.current.name(graph.current.widestChild(0)) }));
    assert.equal(focused.first, 'crypto/sha256.block');
    assert.ok(Math.abs(focused.root - expected[0].cum) < 5e6);
    assert.match(decodeURIComponent(page.url()), /fn=crypto\/sha256\.block/);
    // The sandwich's top half: the callers, nearest first, adding up to the same cum.
    const callers = await page.evaluate(() => {
      const graph = window.kiln.panel.callers;
      const tree = graph.current;
      const focus = tree.children(0)[0];
      return { visible: !document.querySelector('.callers').hidden, root: tree.total[0], name: tree.name(focus), nearest: tree.children(focus).map((node) => tree.name(node)), drawn: graph.rects.length };
    });
    assert.ok(callers.visible);
    assert.equal(callers.name, 'crypto/sha256.block');
    assert.ok(Math.abs(callers.root - expected[0].cum) < 5e6);
    assert.ok(callers.nearest.includes('crypto/sha256.(*digest).Write'), callers.nearest.join(', '));
    assert.ok(callers.drawn > 3);
    await shot('05-focus-function');
    await page.click('button.back');
    await waitFor('focus cleared', () => page.$eval('.crumbs', (crumbs) => !crumbs.textContent.includes('focus:')));
  });

  test('exports folded, SVG and pprof of what is on screen', async () => {
    const total = await flame((graph) => graph.current.total[0]);
    const save = async (kind) => {
      const [download] = await Promise.all([page.waitForEvent('download', { timeout: 20_000 }), page.click(`button[data-export="${kind}"]`)]);
      const path = join(artifacts, download.suggestedFilename());
      await download.saveAs(path);
      return path;
    };
    const folded = readFileSync(await save('folded'), 'utf8');
    const foldedTotal = folded.trim().split('\n').reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
    assert.equal(foldedTotal, total);
    assert.match(folded, /^main\.worker;/m);
    const svg = readFileSync(await save('svg'), 'utf8');
    assert.match(svg, /^<svg /);
    assert.match(svg, /main\.worker/);
    const pprofPath = await save('pprof');
    assert.ok(gunzipSync(readFileSync(pprofPath)).length > 100);
    let go = null;
    try {
      go = execFileSync('go', ['tool', 'pprof', '-top', '-nodecount=5', pprofPath], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      if (error.code !== 'ENOENT') throw error;
    }
    if (go !== null) {
      const rows = parseTop(go);
      assert.equal(rows[0].name, expected[0].name);
      assert.equal(rows[0].flat, expected[0].flat);
    } else {
      console.log('# go not installed: the exported pprof was not checked with go tool pprof');
    }
  });

  test('the metrics graph sums by chosen labels', async () => {
    const before = await loadsSoFar();
    await page.click('details.sum-by summary');
    await page.check('details.sum-by input[value="file"]');
    await waitForLoads(page, before + 1);
    assert.match(decodeURIComponent(page.url()), /by=file/);
    const legend = await page.$eval('.metrics .u-legend', (element) => element.textContent);
    assert.match(legend, /\{file="cpu"\}/);
    assert.doesNotMatch(legend, /instance=/);
  });

  test('brushing the metrics graph selects that time range', async () => {
    const before = await loadsSoFar();
    const overlay = await page.$eval('.metrics .u-over', (element) => {
      const bounds = element.getBoundingClientRect();
      return { x: bounds.x, y: bounds.y, width: bounds.width, height: bounds.height };
    });
    // From 10% to 90% of the plot: the selection must land strictly inside the range.
    await page.mouse.move(overlay.x + overlay.width * 0.1, overlay.y + overlay.height / 2);
    await page.mouse.down();
    await page.mouse.move(overlay.x + overlay.width * 0.9, overlay.y + overlay.height / 2, { steps: 8 });
    await page.mouse.up();
    await waitForLoads(page, before + 1);
    const params = new URL(page.url()).searchParams;
    const from = Number(params.get('from'));
    const to = Number(params.get('to'));
    assert.ok(from > range.from && to < range.to && from < to, `brushed range ${from}..${to} inside ${range.from}..${range.to}`);
    const expectedSpan = (range.to - range.from) * 0.8;
    assert.ok(Math.abs(to - from - expectedSpan) < expectedSpan * 0.05, `brushed ${to - from} ms, expected about ${expectedSpan}`);
    assert.equal(await page.$eval('.range-picker', (select) => select.value), 'custom');
  });

  test('compare of cpu-1 against cpu-3 renders a diff flame graph and tables', async () => {
    const query = new URLSearchParams({
      view: 'compare',
      type: CPU_TYPE,
      a: 'file="cpu-1"',
      a_from: String(range.from),
      a_to: String(range.to),
      b: 'file="cpu-3"',
      b_from: String(range.from),
      b_to: String(range.to),
    });
    await open(`/?${query}`);
    const diff = await flame((graph) => {
      const tree = graph.current;
      return { diff: tree.baseTotal !== null, rects: graph.rects.length, a: tree.baseTotal?.[0], b: tree.total[0] };
    });
    assert.ok(diff.diff, 'a diff tree');
    assert.ok(diff.rects > 10, 'frames drawn');
    assert.ok(diff.a > 0 && diff.b > 0);
    const summary = await page.$eval('.profile-panel.diff .summary', (element) => element.textContent);
    assert.match(summary, /A total .* B total/);
    const rows = await page.$$eval('.diff-table tbody tr', (items) => items.length);
    assert.ok(rows > 0, 'regressions or improvements listed');
    // Colours: some frames changed share, so not everything is neutral grey.
    const colours = await page.evaluate(() => {
      const graph = window.kiln.flame;
      const seen = new Set(graph.rects.map((rect) => graph.colorFor(rect.node)));
      return [...seen];
    });
    assert.ok(colours.some((colour) => colour !== 'rgb(214, 214, 214)'));
    await shot('06-compare-cpu1-cpu3');
    const url = page.url();
    await page.reload();
    await waitForLoads(page, 1);
    assert.equal(page.url(), url);
    assert.equal(await page.inputValue('.side-b input.matchers'), 'file="cpu-3"');
  });

  test('status page shows this node and the writers that pushed', async () => {
    await open('/?view=status');
    await waitFor('writers table', () => page.$eval('.writers', (element) => element.textContent.includes('instance=e2e-host:6060')));
    const cluster = await page.$eval('.cluster-status', (element) => element.textContent);
    assert.ok(/Single node|Nodes \(/.test(cluster), cluster);
    assert.match(await page.$eval('.node-status', (element) => element.textContent), /healthy/);
    await shot('07-status');
  });

  test('no console errors anywhere (the cluster endpoint may be absent)', () => {
    const unexpected = consoleErrors.filter((line) => !/404.*\/api\/v1\/cluster\/status|cluster\/status.*404/.test(line) && !(/status of 404/.test(line) && line.includes('/api/v1/cluster/status')));
    assert.deepEqual(unexpected, []);
  });
});
