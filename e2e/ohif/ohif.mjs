// OHIF against a running Tessera, in headless Chromium driven by playwright-core.
// Usage: node ohif.mjs OHIF_DIST TESSERA_URL STUDIES_JSON OUT_DIR
// Serves OHIF's prebuilt dist/ on a free loopback port with an app-config.js pointing at Tessera,
// then checks: the study list shows every stored study; opening a study shows its series and
// draws an image (the viewport's screenshot has non-blank pixels); no request failed.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [distDir, tessera, studiesJson, outDir] = process.argv.slice(2);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');
const studies = JSON.parse(fs.readFileSync(studiesJson, 'utf8'));
const deadline = Date.now() + 150_000;
const left = () => Math.max(1_000, deadline - Date.now());

const appConfig = `window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'tessera',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'tessera',
    configuration: {
      friendlyName: 'Tessera',
      name: 'tessera',
      wadoUriRoot: '${tessera}/v2',
      qidoRoot: '${tessera}/v2',
      wadoRoot: '${tessera}/v2',
      qidoSupportsIncludeField: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'thumbnail',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: true,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
`;

const types = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.ico': 'image/x-icon', '.woff2': 'font/woff2',
};
const root = path.resolve(distDir);
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/app-config.js') {
    res.writeHead(200, { 'Content-Type': 'text/javascript' });
    return res.end(appConfig);
  }
  let file = path.resolve(root, '.' + decodeURIComponent(url.pathname));
  if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    file = path.join(root, 'index.html'); // the single-page app's routes
  }
  res.writeHead(200, {
    'Content-Type': types[path.extname(file)] || 'application/octet-stream',
    // OHIF's workers use SharedArrayBuffer when the page is cross-origin isolated; it is not.
  });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const viewer = `http://127.0.0.1:${server.address().port}`;
console.log(`OHIF on ${viewer}, Tessera at ${tessera}`);

const userDataDir = fs.mkdtempSync(path.join(outDir, 'chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const failures = [];
const tesseraRequests = [];
let ok = false;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('requestfailed', (r) => failures.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.url().startsWith(tessera)) tesseraRequests.push(`${r.status()} ${r.url()}`);
    if (r.status() >= 400) failures.push(`${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`browser error: ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));

  // The study list shows every stored study.
  await page.goto(viewer + '/', { timeout: left() });
  let listText = '';
  for (let i = 0; i < 60; i++) {
    listText = await page.locator('body').innerText();
    if (studies.every((s) => listText.includes(s.patientName.replace('^', ', ').slice(0, 20)))) break;
    await page.waitForTimeout(1000);
  }
  await page.screenshot({ path: path.join(outDir, 'study-list.png') });
  fs.writeFileSync(path.join(outDir, 'study-list.txt'), listText);
  const missing = studies.filter((s) => !listText.includes(s.patientName.replace('^', ', ').slice(0, 20)));
  if (missing.length) throw new Error(`study list lacks ${missing.map((s) => s.uid).join(', ')}`);
  const count = listText.match(/\d+-\d+ of (\d+)/);
  if (count && Number(count[1]) !== studies.length) {
    throw new Error(`study list counts ${count[1]} studies, Tessera holds ${studies.length}`);
  }
  console.log(`study list shows ${studies.length} studies`);

  // Opening a study shows its series and draws an image: the MR (Implicit VR LE, 16-bit) and
  // the CR (JPEG baseline, decoded in the browser).
  const opened = studies.filter((s) => s.open);
  if (opened.length === 0) throw new Error('no study to open');
  for (const study of opened) {
    await page.goto(`${viewer}/viewer?StudyInstanceUIDs=${study.uid}`, { timeout: left() });
    const canvas = page.locator('.cornerstone-canvas, canvas').first();
    await canvas.waitFor({ timeout: left() });
    let lit = 0;
    for (let i = 0; i < 60 && lit === 0; i++) {
      await page.waitForTimeout(1000);
      lit = await page.evaluate(() => {
        let best = 0;
        for (const c of document.querySelectorAll('canvas')) {
          if (c.width < 64 || c.height < 64) continue;
          const ctx = c.getContext('2d');
          if (!ctx) continue;
          const d = ctx.getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let p = 0; p < d.length; p += 4) if (d[p] > 8 || d[p + 1] > 8 || d[p + 2] > 8) n++;
          best = Math.max(best, n);
        }
        return best;
      });
    }
    const name = study.modalities.join('-');
    await page.screenshot({ path: path.join(outDir, `viewer-${name}.png`) });
    if (lit === 0) throw new Error(`the viewport of the ${name} study stayed blank`);
    console.log(`${name} study: viewport drew ${lit} non-blank pixels`);
    const body = await page.locator('body').innerText();
    fs.writeFileSync(path.join(outDir, `viewer-${name}.txt`), body);
    const seriesShown = study.series.filter((d) => body.includes(d.replace(/\s+/g, ' ').slice(0, 12)));
    if (seriesShown.length !== study.series.length) {
      throw new Error(`${name} study: series panel shows ${seriesShown.length} of ${study.series.length} series (${JSON.stringify(study.series)})`);
    }
    console.log(`${name} study: series panel shows ${seriesShown.length} series`);
  }
  const asked = tesseraRequests.length;
  if (asked === 0) throw new Error('OHIF asked Tessera nothing');
  if (failures.length) throw new Error(`failed requests:\n  ${failures.join('\n  ')}`);
  console.log(`${asked} requests to Tessera, none failed`);
  ok = true;
} catch (e) {
  console.log(`FAILED: ${e.message}`);
  console.log(`Tessera requests:\n  ${tesseraRequests.slice(-40).join('\n  ')}`);
} finally {
  await context.close();
  server.close();
}
console.log(ok ? 'OHIF end-to-end: ok' : 'OHIF end-to-end: FAILED');
process.exit(ok ? 0 : 1);
