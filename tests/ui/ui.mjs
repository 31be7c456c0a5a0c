// Browser test of the page `weir serve` serves at `/`: drives Debian's Chromium through
// playwright-core against a running server and rolls a stage back from the page, the way a user
// would. tests/ui/install.sh installs what it needs.
//
//   node tests/ui/ui.mjs BASE_URL PIPELINE STAGE SCREENSHOT.png
//
// BASE_URL is the server (http://127.0.0.1:PORT); with the env WEIR_TOKEN set, the page is opened
// as BASE_URL/#token=TOKEN and the script's own API calls send it too. The stage must have a
// previous plugin version (swap one first). On success it prints one JSON line
// {"rate", "before", "after", "screenshot"} and exits 0; on failure it says why on stderr, still
// saves the screenshot when it can, and exits 1.
import path from "node:path";
import { chromium } from "playwright-core";

const WAIT_MS = 30_000;
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const [baseArg, pipeline, stage, shotArg] = process.argv.slice(2);
if (!baseArg || !pipeline || !stage || !shotArg) {
  process.stderr.write("usage: node tests/ui/ui.mjs BASE_URL PIPELINE STAGE SCREENSHOT.png (token in env WEIR_TOKEN)\n");
  process.exit(1);
}
const root = new URL(baseArg.endsWith("/") ? baseArg : baseArg + "/");
const token = process.env.WEIR_TOKEN || "";
const pageUrl = new URL(token ? "#token=" + encodeURIComponent(token) : "", root).href;
const shot = path.resolve(shotArg);
const shaOf = (v) => (v == null ? null : typeof v === "string" ? v : v.sha256 || null);

// A hung browser must not hang the Rust test that runs this script.
setTimeout(() => fail(new Error("gave up after 150 s")), 150_000).unref();

let step = "starting Chromium";
let browser = null, page = null;
const browserLog = [];

async function fail(err) {
  process.stderr.write(`ui test failed while ${step}: ${err.message}\n`);
  for (const line of collapse(browserLog).slice(-20)) process.stderr.write(`  browser: ${line}\n`);
  if (page) {
    try {
      await page.screenshot({ path: shot, fullPage: true, timeout: 10_000 });
      process.stderr.write(`  screenshot of the page as it was: ${shot}\n`);
    } catch (e) {
      process.stderr.write(`  no screenshot: ${e.message}\n`);
    }
  }
  try { await browser?.close(); } catch { /* exiting anyway */ }
  process.exit(1);
}

// The page polls every second, so one problem repeats many times.
function collapse(lines) {
  const out = [];
  for (const line of lines) {
    const last = out[out.length - 1];
    if (last && last.line === line) last.count++;
    else out.push({ line, count: 1 });
  }
  return out.map(({ line, count }) => (count > 1 ? `${line} (${count} times)` : line));
}

async function getDetail() {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const url = new URL(`api/pipelines/${encodeURIComponent(pipeline)}`, root);
  const res = await fetch(url, { headers });
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${url.pathname} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

// Waits for `probe` (run in the page) to return something other than null; on timeout the error
// says what the page showed instead, which is what one needs to know when this fails in CI.
async function waitFor(what, probe, arg) {
  step = `waiting for ${what}`;
  try {
    const handle = await page.waitForFunction(probe, arg, { timeout: WAIT_MS, polling: 200 });
    return await handle.jsonValue();
  } catch (err) {
    if (!/Timeout/i.test(err.message)) throw err;
    const shown = await page.evaluate(() => ({
      status: document.getElementById("status")?.textContent,
      message: document.querySelector('[data-testid="message"]')?.textContent,
      rows: [...document.querySelectorAll('[data-testid="pipeline-row"]')].map((r) => `${r.dataset.name}=${r.dataset.state}`),
      stages: [...document.querySelectorAll('[data-testid="stage"]')].map((b) => `${b.dataset.pipeline}/${b.dataset.stage}=` +
        (b.querySelector('[data-testid="plugin-sha"]')?.dataset.sha256 || "?")),
    })).catch(() => null);
    throw new Error(`not within ${WAIT_MS / 1000} s; the page showed ${JSON.stringify(shown)}`);
  }
}

// A real click (scrolled into view, checked to be visible, enabled and not covered), as a user's.
async function clickOn(expression) {
  const element = (await page.evaluateHandle(expression)).asElement();
  if (!element) throw new Error("the element is gone");
  await element.click({ timeout: WAIT_MS });
}

// Probes run inside the page; they find elements by comparing attributes rather than building
// CSS selectors, so any pipeline or stage name works.
const findRow = `(name) => [...document.querySelectorAll('[data-testid="pipeline-row"]')].find((r) => r.dataset.name === name)`;
const findStage = `(p, s) => [...document.querySelectorAll('[data-testid="stage"]')].find((b) => b.dataset.pipeline === p && b.dataset.stage === s)`;

try {
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS, headless: true, timeout: 60_000 });
  // The page forbids eval in its Content-Security-Policy; Playwright's waits evaluate their
  // probes as strings, so the test's context alone bypasses it.
  page = await browser.newPage({ viewport: { width: 1400, height: 900 }, bypassCSP: true });
  page.on("console", (m) => { if (m.type() === "error") browserLog.push(m.text()); });
  page.on("pageerror", (e) => browserLog.push(e.message));

  step = `opening ${root.href}`;
  await page.goto(pageUrl, { waitUntil: "domcontentloaded", timeout: WAIT_MS });

  await waitFor(`a row for pipeline ${pipeline}`, `(${findRow})(${JSON.stringify(pipeline)}) ? true : null`);
  step = `selecting pipeline ${pipeline}`;
  await clickOn(`(${findRow})(${JSON.stringify(pipeline)})`);

  const rate = await waitFor(`pipeline ${pipeline} to be running with records/s > 0`, `(() => {
      const r = (${findRow})(${JSON.stringify(pipeline)});
      if (!r || r.dataset.state !== "running") return null;
      const cell = r.querySelector('[data-testid="rate"]');
      const v = Number(cell?.dataset.value ?? cell?.textContent.replace(/,/g, ""));
      return v > 0 ? v : null;
    })()`);

  step = `reading stage ${stage} of ${pipeline} from the API`;
  const st = (await getDetail()).stages?.find((s) => s.name === stage);
  if (!st) throw new Error(`the API shows no stage ${stage} in pipeline ${pipeline}`);
  const current = shaOf(st.plugin), previous = shaOf(st.previous);
  if (!previous) throw new Error(`stage ${stage} has no previous plugin version to roll back to (swap one first)`);

  const stageProbe = `(${findStage})(${JSON.stringify(pipeline)}, ${JSON.stringify(stage)})`;
  const shaProbe = `${stageProbe}?.querySelector('[data-testid="plugin-sha"]')?.dataset.sha256`;
  // The page polls once a second, so it may still show an older version than the API answered.
  const before = await waitFor(`stage ${stage} to show plugin ${current.slice(0, 12)}`,
    `(() => { const sha = ${shaProbe}; return sha === ${JSON.stringify(current)} ? sha : null; })()`);
  await waitFor(`the rollback button of stage ${stage} to be enabled`,
    `(() => { const b = ${stageProbe}?.querySelector('[data-testid="rollback"]'); return b && !b.disabled ? true : null; })()`);

  step = `clicking rollback of stage ${stage}`;
  await clickOn(`${stageProbe}?.querySelector('[data-testid="rollback"]')`);

  const outcome = await waitFor(`stage ${stage} to show plugin ${previous.slice(0, 12)} and the rollback result`, `(() => {
      const m = document.querySelector('[data-testid="message"]');
      if (m?.dataset.status === "error") return { error: m.textContent };
      const sha = ${shaProbe};
      const done = m?.dataset.status === "ok" && /Rolled back/.test(m.textContent) && m.textContent.includes(${JSON.stringify(previous.slice(0, 12))});
      return sha === ${JSON.stringify(previous)} && done ? { sha, message: m.textContent } : null;
    })()`);
  if (outcome.error) throw new Error(`the page showed an error: ${outcome.error}`);

  step = `saving the screenshot to ${shot}`;
  await page.screenshot({ path: shot, fullPage: true });
  if (browserLog.length) process.stderr.write(collapse(browserLog).map((l) => `browser: ${l}\n`).join(""));
  process.stdout.write(JSON.stringify({ rate, before, after: outcome.sha, screenshot: shot }) + "\n");
  await browser.close();
  process.exit(0);
} catch (err) {
  await fail(err);
}
