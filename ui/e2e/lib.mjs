// Shared by the end-to-end test and the benchmark: a real kiln-node, the real kiln CLI, headless Debian
// chromium driven by playwright-core. Every wait has a deadline; nothing sleeps blindly.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const UI_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = resolve(UI_DIR, '..');
export const TESTDATA = process.env.KILN_TESTDATA ?? resolve(REPO, '../shared/testdata');
export const ARTIFACTS = resolve(UI_DIR, 'test-artifacts');
const TARGET = process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache/kiln-target');
export const NODE_BIN = process.env.KILN_NODE_BIN ?? join(TARGET, 'debug/kiln-node');
export const KILN_BIN = process.env.KILN_BIN ?? join(TARGET, 'debug/kiln');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Polls `check` until it returns a truthy value, or throws after `ms` with `what` in the message. */
export async function waitFor(what, check, ms = 20_000, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((done) => setTimeout(done, every));
  }
}

/** Starts kiln-node on an ephemeral port with a fresh data directory; resolves once it listens. */
export async function startNode() {
  for (const binary of [NODE_BIN, KILN_BIN]) {
    if (!existsSync(binary)) throw new Error(`${binary} is missing: run \`cargo build --workspace --all-targets\` first`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'kiln-ui-e2e-'));
  // The shared profiles carry their recording time: keep them whatever today's date is.
  const child = spawn(NODE_BIN, ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--retention', '36500d'], {
    env: { ...process.env, KILN_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const address = await new Promise((resolveAddress, reject) => {
    const timer = setTimeout(() => reject(new Error('kiln-node did not report its address within 60 s')), 60_000);
    let buffer = '';
    child.stdout.on('data', (chunk) => {
      buffer += chunk;
      const match = /listening on (\S+)/.exec(buffer);
      if (match) {
        clearTimeout(timer);
        resolveAddress(match[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`kiln-node exited early with ${code}`)));
  });
  const url = `http://${address}`;
  return {
    url,
    dataDir,
    kiln(args) {
      return execFileSync(KILN_BIN, args, { env: { ...process.env, KILN_SERVER: url }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((done) => child.once('exit', done));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((done) => setTimeout(done, 30_000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Launches Debian's chromium headless with a fresh profile directory (Playwright takes the profile
 * directory through launchPersistentContext, which passes it as --user-data-dir).
 */
export async function launchBrowser({ width = 1440, height = 1000 } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  const userDataDir = mkdtempSync(join(tmpdir(), 'kiln-ui-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width, height },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

export function ensureArtifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

/** Waits until the app has finished `count` loads in total. */
export async function waitForLoads(page, count, ms = 30_000) {
  await page.waitForFunction((wanted) => (window.kiln?.loads ?? 0) >= wanted, count, { timeout: ms });
}
