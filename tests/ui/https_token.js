// Drives lode's search page over HTTPS on a server that asks for a token:
// the page asks for it once (a prompt), keeps it for the tab, and shows
// the token's tenant's records only. Run by `search_page_over_https_with_a_token`
// with LODE_URL (https://...), LODE_TEST_NODE, LODE_TOKEN (a read token of
// one tenant), LODE_WORD (a word that tenant's records hold) and
// LODE_OTHER_WORD (a word only another tenant's records hold).
"use strict";

const path = require("path");
const { chromium } = require(path.join(process.env.LODE_TEST_NODE, "node_modules", "playwright-core"));

const url = process.env.LODE_URL;
const timeout = 15000;

function check(ok, what) {
  if (!ok) throw new Error(`search page over https: ${what}`);
  console.log(`ok: ${what}`);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.LODE_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const failures = [];
  try {
    // The server's certificate is self-signed for the test.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
    let asked = 0;
    page.on("dialog", async (dialog) => {
      asked += 1;
      await dialog.accept(process.env.LODE_TOKEN);
    });
    await page.goto(`${url}/ui`, { timeout });
    await page.waitForSelector("#q", { timeout });
    await page.fill("#q", process.env.LODE_WORD);
    await page.press("#q", "Enter");
    await page
      .waitForFunction(() => document.querySelectorAll("#records .record").length > 0, null, { timeout })
      .catch(async (e) => {
        const shown = await page.evaluate(() => ({
          error: document.getElementById("error").textContent,
          status: document.getElementById("status").textContent,
          total: document.getElementById("total").textContent,
          url: location.href,
        }));
        throw new Error(`${e.message}; the page shows ${JSON.stringify(shown)}, asked ${asked}`);
      });
    check(asked === 1, `the page asked for the token once (${asked})`);
    const stored = await page.evaluate(() => sessionStorage.getItem("lode-token"));
    check(stored === process.env.LODE_TOKEN, "the token is kept in the tab's session storage");
    await page.fill("#q", process.env.LODE_OTHER_WORD);
    await page.press("#q", "Enter");
    await page.waitForFunction(
      () => /\b0\b/.test(document.getElementById("total").textContent),
      null, { timeout },
    );
    check(asked === 1, "the token is not asked for again");
    check(
      (await page.$$("#records .record")).length === 0,
      "another tenant's records are not shown",
    );
  } finally {
    await browser.close();
  }
  if (failures.length) throw new Error(failures.join("\n"));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
