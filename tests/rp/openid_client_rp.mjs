// A member platform's back end written with openid-client (npm), run against a
// running authsync (`scripts/relying-parties.sh` starts a demo and runs it).
//
// It registers itself through the admin API, sends a browser (fetch with its own
// cookie jar, reading the hosted page's form) through the code flow with PKCE, and
// lets openid-client check what a platform relies on: state, the `iss` of the
// response, the ID token's signature against the JWKS (non-repudiation checks on),
// its issuer, audience and nonce. Then userinfo, refresh with rotation,
// introspection, revocation, and a second platform at another region signing the
// customer in with prompt=none from the same session, authenticating with an ES256
// private_key_jwt assertion and taking ES256 ID tokens.
//
// Usage: node openid_client_rp.mjs BASE_URL SECOND_REGION_URL API_KEY

import * as client from 'openid-client';

const [BASE, SECOND, API_KEY] = process.argv.slice(2);
const REDIRECT = 'http://127.0.0.1:9/openid-client/callback';
const PASSWORD = 'correct horse battery';

function check(cond, what) {
  if (!cond) {
    console.error(`openid-client relying party: FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`openid-client relying party: ok: ${what}`);
}

async function admin(method, path, body) {
  const r = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return [r.status, await r.json().catch(() => null)];
}

// A browser: cookies kept by name (every region is 127.0.0.1, as behind one issuer
// name), redirects not followed.
const jar = new Map();
async function browse(url, init = {}) {
  const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie } });
  for (const c of r.headers.getSetCookie()) {
    const [kv] = c.split(';');
    const i = kv.indexOf('=');
    const [k, v] = [kv.slice(0, i), kv.slice(i + 1)];
    if (/max-age=0/i.test(c)) jar.delete(k); else jar.set(k, v);
  }
  return r;
}

function hiddenFields(html) {
  const unescape = (v) => v.replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&#39;/g, "'").replace(/&amp;/g, '&');
  return Object.fromEntries([...html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)].map((m) => [m[1], unescape(m[2])]));
}

async function signIn(url, login, password) {
  const page = await browse(url);
  if (page.status === 303) return page.headers.get('location');
  check(page.status === 200, `the sign-in page answers 200 (${page.status})`);
  const form = { ...hiddenFields(await page.text()), login, password };
  const done = await browse(new URL('/oauth2/authorize', url), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  check(done.status === 303, `the form redirects back (${done.status})`);
  return done.headers.get('location');
}

async function register(name, extra = {}) {
  const [status, c] = await admin('POST', '/v1/admin/oauth-clients', {
    name, redirect_uris: [REDIRECT], first_party: true, scopes: ['openid', 'email', 'profile', 'offline_access'], ...extra,
  });
  check(status === 201, `${name} registered`);
  return c;
}

// A client with a secret, or (given `auth`) one that authenticates with a signed
// assertion and asks for ES256 ID tokens.
async function configure(issuer, c, auth) {
  const metadata = auth ? { id_token_signed_response_alg: 'ES256' } : c.client_secret;
  const config = await client.discovery(new URL(issuer), c.client_id, metadata, auth, {
    execute: [client.allowInsecureRequests],
  });
  // Verify ID token signatures against the JWKS too, not only trust the TLS channel.
  client.enableNonRepudiationChecks(config);
  return config;
}

const email = `openid-client-${Date.now()}@example.com`;
check((await admin('POST', '/v1/users', { email, password: PASSWORD }))[0] === 201, 'an account created');
const shop = await register('openid-client shop');
const config = await configure(BASE, shop);
check(config.serverMetadata().issuer === BASE, 'discovery names this issuer');

const verifier = client.randomPKCECodeVerifier();
const nonce = client.randomNonce();
const state = client.randomState();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: REDIRECT, scope: 'openid email profile offline_access', nonce, state,
  code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
});
const callback = await signIn(url, email, PASSWORD);
const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
  pkceCodeVerifier: verifier, expectedNonce: nonce, expectedState: state, idTokenExpected: true,
});
const claims = tokens.claims();
check(claims.email === email && claims.aud === shop.client_id, 'the code exchanged; the ID token verified by openid-client (signature, iss, aud, nonce)');

const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
check(info.email === email, 'userinfo names the same subject');

const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
check(refreshed.refresh_token && refreshed.refresh_token !== tokens.refresh_token, 'a refresh rotates the refresh token');
try {
  await client.refreshTokenGrant(config, tokens.refresh_token);
  check(false, 'the spent refresh token is refused');
} catch (e) {
  check(e.error === 'invalid_grant', 'the spent refresh token is refused (invalid_grant)');
}
const seen = await client.tokenIntrospection(config, refreshed.access_token);
check(seen.active === true && seen.sub === claims.sub, 'introspection: the access token is active');
await client.tokenRevocation(config, refreshed.refresh_token);
const gone = await client.tokenIntrospection(config, refreshed.refresh_token);
check(gone.active === false, 'introspection: the revoked refresh token is inactive');

// Single sign-on: another platform at another region, the same browser. This one
// holds no secret: it signs an ES256 assertion (private_key_jwt) with a key whose
// public half it registered, and asks for ES256 ID tokens.
const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
const publicJwk = { ...(await crypto.subtle.exportKey('jwk', keys.publicKey)), kid: 'news-1', alg: 'ES256' };
delete publicJwk.key_ops;
delete publicJwk.ext;
const news = await register('openid-client news', {
  token_endpoint_auth_method: 'private_key_jwt', id_token_signed_response_alg: 'ES256', jwks: { keys: [publicJwk] },
});
check(!news.client_secret, 'a client with keys is given no secret');
const assertionAuth = client.PrivateKeyJwt({ key: keys.privateKey, kid: 'news-1' });
let newsConfig;
const deadline = Date.now() + 30_000;
for (;;) {
  try {
    newsConfig = await configure(SECOND, news, assertionAuth);
    const v2 = client.randomPKCECodeVerifier();
    const s2 = client.randomState();
    const n2 = client.randomNonce();
    const url2 = client.buildAuthorizationUrl(newsConfig, {
      redirect_uri: REDIRECT, scope: 'openid email offline_access', nonce: n2, state: s2, prompt: 'none',
      code_challenge: await client.calculatePKCECodeChallenge(v2), code_challenge_method: 'S256',
    });
    const back = await browse(url2);
    const location = back.headers.get('location') || '';
    if (back.status === 303 && new URL(location).searchParams.has('code')) {
      const t2 = await client.authorizationCodeGrant(newsConfig, new URL(location), {
        pkceCodeVerifier: v2, expectedNonce: n2, expectedState: s2, idTokenExpected: true,
      });
      check(t2.claims().sub === claims.sub, 'signed in at the second region without a password (prompt=none)');
      const header = JSON.parse(Buffer.from(t2.id_token.split('.')[0], 'base64url'));
      check(header.alg === 'ES256', 'with a private_key_jwt assertion, and an ES256 ID token openid-client verified');
      const again = await client.refreshTokenGrant(newsConfig, t2.refresh_token);
      check(again.refresh_token && again.refresh_token !== t2.refresh_token, 'the keyed client refreshes with a fresh assertion');
      break;
    }
  } catch (e) {
    if (Date.now() > deadline) throw e;
  }
  if (Date.now() > deadline) {
    console.error('openid-client relying party: FAILED: the session never reached the other region');
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 300));
}
console.log('openid-client relying party: all checks passed');
