// Drives lode's search page in headless Chromium (Debian's, through
// playwright-core): a query, the records and the volume histogram, a
// facet click, live tail showing a record ingested meanwhile, and a typo
// shown at its column. Run by the `search_page_in_chromium` test with
// LODE_URL (a server holding records of the last hour), LODE_TEST_NODE
// (where playwright-core is installed), LODE_SCREENSHOT (where to save
// the page) and LODE_WORD (a word some records hold).
"use strict";

const path = require("path");
const { chromium } = require(path.join(process.env.LODE_TEST_NODE, "node_modules", "playwright-core"));

const url = process.env.LODE_URL;
const word = process.env.LODE_WORD;
const timeout = 15000;

function check(ok, what) {
  if (!ok) throw new Error(`search page: ${what}`);
  console.log(`ok: ${what}`);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.LODE_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const failures = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
    // The browser logs each answer that is not 2xx; the typo's 400s are
    // meant. Anything else the page's script logs as an error is not.
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().includes("status of 400")) failures.push(`console: ${m.text()}`);
    });
    // A browser opening / gets a page that links to the search page.
    await page.goto(`${url}/`, { timeout });
    await page.click('a[href="/ui"]');
    await page.waitForSelector("#q", { timeout });
    check(new URL(page.url()).pathname === "/ui", "/ links a browser to the search page");

    // A query: records holding the word, and bars in the histogram.
    await page.fill("#q", word);
    await page.press("#q", "Enter");
    // The URL may change before the answer replaces the records shown:
    // wait for records that hold the word (the check below says which
    // did not, if none ever came).
    await page.waitForFunction(
      (w) => {
        const shown = [...document.querySelectorAll("#records .record .message")];
        return shown.length > 0 && location.search.includes(w)
          && shown.every((n) => n.textContent.toLowerCase().includes(w));
      },
      word, { timeout },
    ).catch(() => {});
    const messages = await page.$$eval("#records .record .message", (ns) => ns.map((n) => n.textContent));
    check(messages.every((m) => m.toLowerCase().includes(word)), `${messages.length} records all hold '${word}'`);
    await page.waitForSelector("#chart rect.bar", { timeout });
    const bars = await page.$$eval("#chart rect.bar", (ns) => ns.reduce((n, b) => n + Number(b.dataset.count), 0));
    const total = await page.textContent("#total");
    check(bars > 0 && total.replace(/[^0-9]/g, "") === String(bars), `the histogram's bars add up to '${total}'`);

    // A facet: the first service adds a filter; the records follow it.
    const facet = await page.$("#facets .facet[data-field=service]");
    const service = await facet.getAttribute("data-value");
    await facet.click();
    await page.waitForFunction((s) => document.getElementById("q").value.includes(`service:"${s}"`), service, { timeout });
    await page.waitForFunction(
      (s) => {
        const names = [...document.querySelectorAll("#records .record .service")].map((n) => n.textContent.toLowerCase());
        return names.length > 0 && names.every((n) => n === s);
      },
      service, { timeout },
    );
    check(true, `the service facet '${service}' filters the records`);

    // A record's attributes open on a click.
    await page.click("#records .record .message");
    check(await page.isVisible("#records .record.open dl"), "a record opens to its attributes");

    // Live tail: a record ingested now appears at the top.
    await page.check("#live");
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("Live"), null, { timeout });
    await new Promise((r) => setTimeout(r, 300));
    const fresh = `${word} arrived live ${Date.now()}`;
    const response = await fetch(`${url}/api/v1/ingest`, {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: JSON.stringify({ service, level: "error", message: fresh }) + "\n",
    });
    check(response.ok, `ingest answered ${response.status}`);
    await page.waitForFunction(
      (m) => {
        const first = document.querySelector("#records .record.new .message");
        return first && first.textContent === m;
      },
      fresh, { timeout },
    );
    check(true, "the live record appears at the top");
    check(new URL(page.url()).searchParams.get("live") === "1", "live is kept in the URL");
    await page.screenshot({ path: process.env.LODE_SCREENSHOT, fullPage: false });
    console.log(`screenshot: ${process.env.LODE_SCREENSHOT}`);

    // The URL holds the view: a reload shows the same query.
    await page.uncheck("#live");
    await page.reload({ timeout });
    await page.waitForSelector("#records .record", { timeout });
    check((await page.inputValue("#q")).includes(`service:"${service}"`), "a reload keeps the query");

    // A typo: the error names its column and the caret points at it.
    await page.fill("#q", "error AND (");
    await page.press("#q", "Enter");
    await page.waitForSelector("#error:not([hidden])", { timeout });
    const error = await page.textContent("#error");
    const caret = await page.textContent("#caret");
    const column = Number((/column (\d+)/.exec(error) || [])[1]);
    check(column > 0 && caret.indexOf("^") === column - 1, `the error '${error}' is marked at column ${column}`);
  } finally {
    await browser.close();
  }
  check(failures.length === 0, `no script errors${failures.length ? `: ${failures.join("; ")}` : ""}`);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
