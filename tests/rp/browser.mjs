// A real browser on the hosted sign-in page: Chromium (Debian's package) driven by
// playwright-core, with two test platforms served by this script. The customer signs
// in at the first region for one platform (a wrong password first, whose error the
// page shows), is sent back to it, then visits the second platform through the
// second region and is signed in without a prompt; a sign-out at the second region
// ends the session at the first too. Screenshots of each step go to SHOTS_DIR.
//
// Usage: node browser.mjs FIRST_REGION_URL SECOND_REGION_URL API_KEY SHOTS_DIR

import http from 'node:http';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [FIRST, SECOND, API_KEY, SHOTS] = process.argv.slice(2);
const PASSWORD = 'correct horse battery';
const PLATFORMS_PORT = 18297;
const PLATFORMS = `http://127.0.0.1:${PLATFORMS_PORT}`;
mkdirSync(SHOTS, { recursive: true });

function check(cond, what) {
  if (!cond) {
    console.error(`browser: FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`browser: ok: ${what}`);
}

async function admin(method, path, body) {
  const r = await fetch(FIRST + path, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return [r.status, await r.json().catch(() => null)];
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
async function pkce() {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  return { verifier, challenge };
}

// Two platforms, each with its own callback: they exchange the code at the region
// that sent it (told by the `iss` of the response) and greet the customer by the
// email in the ID token.
const platforms = {};
const pending = new Map(); // state -> { platform, verifier, region }
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, PLATFORMS);
  const name = url.pathname.split('/')[1];
  const platform = platforms[name];
  const wait = pending.get(url.searchParams.get('state'));
  res.setHeader('content-type', 'text/html; charset=utf-8');
  if (!platform || !wait) {
    res.end('<h1>Unknown request</h1>');
    return;
  }
  if (url.searchParams.get('error')) {
    res.end(`<h1 id="result">${platform.name}: ${url.searchParams.get('error')}</h1>`);
    return;
  }
  const r = await fetch(`${wait.region}/oauth2/token`, {
    method: 'POST',
    headers: {
      authorization: 'Basic ' + Buffer.from(`${platform.client_id}:${platform.client_secret}`).toString('base64'),
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: url.searchParams.get('code'),
      redirect_uri: platform.redirect_uris[0], code_verifier: wait.verifier,
    }),
  });
  const tokens = await r.json();
  if (!tokens.id_token) {
    res.end(`<h1 id="result">${platform.name}: token exchange failed: ${JSON.stringify(tokens)}</h1>`);
    return;
  }
  const claims = JSON.parse(Buffer.from(tokens.id_token.split('.')[1], 'base64url'));
  res.end(`<h1 id="result">${platform.name}: signed in as ${claims.email}</h1>`);
});
await new Promise((ok) => server.listen(PLATFORMS_PORT, '127.0.0.1', ok));

for (const name of ['shop', 'news']) {
  const [status, c] = await admin('POST', '/v1/admin/oauth-clients', {
    name: name === 'shop' ? 'Shop' : 'News', redirect_uris: [`${PLATFORMS}/${name}/cb`], first_party: true,
  });
  check(status === 201, `${name} registered`);
  platforms[name] = c;
}
const email = `browser-${Date.now()}@example.com`;
check((await admin('POST', '/v1/users', { email, password: PASSWORD }))[0] === 201, 'an account created');

async function authorizeUrl(name, region, extra = {}) {
  const { verifier, challenge } = await pkce();
  const state = b64url(crypto.getRandomValues(new Uint8Array(12)));
  pending.set(state, { platform: name, verifier, region });
  const u = new URL(`${region}/oauth2/authorize`);
  for (const [k, v] of Object.entries({
    client_id: platforms[name].client_id, redirect_uri: platforms[name].redirect_uris[0],
    response_type: 'code', scope: 'openid email', state, nonce: state,
    code_challenge: challenge, code_challenge_method: 'S256', ...extra,
  })) u.searchParams.set(k, v);
  return u.toString();
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-background-networking'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 390, height: 760 } })).newPage();
  await page.goto(await authorizeUrl('shop', FIRST));
  check(await page.getByLabel('Email or phone').isVisible(), 'the sign-in page, its fields labelled, on a phone-sized screen');
  await page.screenshot({ path: `${SHOTS}/1-sign-in.png` });
  await page.getByLabel('Email or phone').fill(email);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const error = await page.locator('#error').textContent();
  check(error === 'The email, phone or password is wrong.', `a wrong password shows the error: "${error}"`);
  await page.screenshot({ path: `${SHOTS}/2-wrong-password.png` });
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${PLATFORMS}/shop/cb*`);
  const shop = await page.locator('#result').textContent();
  check(shop === `Shop: signed in as ${email}`, `back at the first platform: "${shop}"`);
  await page.screenshot({ path: `${SHOTS}/3-shop-signed-in.png` });

  // The second platform, through the second region: no prompt once the session has
  // arrived there (until then the region shows its sign-in page).
  let news = '';
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    await page.goto(await authorizeUrl('news', SECOND));
    if (page.url().startsWith(`${PLATFORMS}/news/cb`)) {
      news = await page.locator('#result').textContent();
      break;
    }
    await page.waitForTimeout(300);
  }
  check(news === `News: signed in as ${email}`, `signed in at the second platform through the second region without a password: "${news}"`);
  await page.screenshot({ path: `${SHOTS}/4-news-without-a-prompt.png` });

  await page.goto(`${SECOND}/oauth2/logout`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  check((await page.locator('h1').textContent()) === 'Signed out', 'signed out at the second region');
  await page.screenshot({ path: `${SHOTS}/5-signed-out.png` });
  let after = '';
  const until = Date.now() + 30_000;
  while (Date.now() < until) {
    await page.goto(await authorizeUrl('shop', FIRST, { prompt: 'none' }));
    after = await page.locator('#result').textContent().catch(() => '');
    if (after === 'Shop: login_required') break;
    await page.waitForTimeout(300);
  }
  check(after === 'Shop: login_required', 'the sign-out reached the first region: prompt=none there is login_required');
  console.log(`browser: all checks passed; screenshots in ${SHOTS}`);
} finally {
  await browser.close();
  server.close();
}
