"""A member platform's back end written with authlib (PyPI), run against a running
authsync (`scripts/relying-parties.sh` starts a demo and runs it).

It registers itself as a client through the admin API, sends a browser (a plain
requests session, reading the hosted page's form) through the authorization code
flow with PKCE, and checks with authlib's own code what a platform relies on: the
ID token's signature against the JWKS, its issuer, audience and nonce; then
userinfo, refresh with rotation, introspection, revocation and the sign-out.
A second platform at another region then signs the same customer in with
prompt=none, from the session the first sign-in made; it authenticates with an
RS256 private_key_jwt assertion and takes ES256 ID tokens.

Usage: authlib_rp.py BASE_URL SECOND_REGION_URL API_KEY
"""

import re
import sys
import time
import urllib.parse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT

BASE, SECOND, API_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
REDIRECT = "http://127.0.0.1:9/authlib/callback"
PASSWORD = "correct horse battery"


def check(cond, what):
    if not cond:
        raise SystemExit(f"authlib relying party: FAILED: {what}")
    print(f"authlib relying party: ok: {what}")


def admin(method, path, body=None, base=BASE):
    r = requests.request(method, base + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    return r.status_code, (r.json() if r.content else None)


def hidden_fields(html):
    return dict(
        (name, value.replace("&amp;", "&").replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'"))
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
    )


def browse_sign_in(browser, url, login, password):
    """Opens the sign-in page at url and posts its form; returns the redirect's URL."""
    page = browser.get(url, allow_redirects=False, timeout=30)
    if page.status_code == 303:
        return page.headers["Location"]
    check(page.status_code == 200, f"the sign-in page answers 200 ({page.status_code})")
    form = hidden_fields(page.text)
    form.update(login=login, password=password)
    action = urllib.parse.urljoin(url, "/oauth2/authorize")
    done = browser.post(action, data=form, allow_redirects=False, timeout=60)
    check(done.status_code == 303, f"the form redirects back ({done.status_code})")
    return done.headers["Location"]


def register(base, name, **extra):
    status, c = admin("POST", "/v1/admin/oauth-clients", base=base, body={"name": name, "redirect_uris": [REDIRECT], "first_party": True,
                                                          "scopes": ["openid", "email", "profile", "offline_access"],
                                                          "post_logout_redirect_uris": [REDIRECT + "/out"], **extra})
    # Registered at one region, taken by every region once the entry has arrived.
    check(status == 201, f"{name} registered")
    return c["client_id"], c.get("client_secret")


def main():
    email = f"authlib-{generate_token(8).lower()}@example.com"
    status, _ = admin("POST", "/v1/users", {"email": email, "password": PASSWORD})
    check(status == 201, "an account created")
    client_id, client_secret = register(BASE, "authlib shop")
    meta = requests.get(BASE + "/.well-known/openid-configuration", timeout=30).json()
    check(meta["issuer"] == BASE, "discovery names this issuer")

    client = OAuth2Session(client_id, client_secret, scope="openid email profile offline_access",
                           redirect_uri=REDIRECT, code_challenge_method="S256",
                           token_endpoint_auth_method="client_secret_basic")
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
    browser = requests.Session()
    callback = browse_sign_in(browser, url, email, PASSWORD)
    check(callback.startswith(REDIRECT), "back at the registered redirect URI")
    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback, state=state, code_verifier=verifier)
    check("id_token" in token and "refresh_token" in token, "the code exchanged for ID, access and refresh tokens")

    keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=30).json())
    claims = jwt.decode(token["id_token"], keys, claims_options={
        "iss": {"essential": True, "value": meta["issuer"]},
        "aud": {"essential": True, "value": client_id},
        "nonce": {"essential": True, "value": nonce},
    })
    claims.validate(now=int(time.time()), leeway=5)
    check(claims["email"] == email, "the ID token verifies against the JWKS, with iss, aud, nonce and email")

    info = client.get(meta["userinfo_endpoint"], timeout=30).json()
    check(info["sub"] == claims["sub"] and info["email"] == email, "userinfo names the same subject")

    first_refresh = token["refresh_token"]
    refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
    check(refreshed["refresh_token"] != first_refresh, "a refresh rotates the refresh token")
    try:
        client.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
        check(False, "the spent refresh token is refused")
    except Exception as e:  # authlib raises OAuthError for {error: invalid_grant}
        check("invalid_grant" in str(e), "the spent refresh token is refused (invalid_grant)")

    seen = client.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"]).json()
    check(seen["active"] and seen["sub"] == claims["sub"], "introspection: the access token is active")
    r = client.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"])
    check(r.status_code == 200, "revocation answers 200")
    gone = client.introspect_token(meta["introspection_endpoint"], token=refreshed["refresh_token"]).json()
    check(gone == {"active": False}, "introspection: the revoked refresh token is inactive")

    # Single sign-on: another platform, at another region, with the same browser. It
    # holds no secret: it signs an RS256 assertion (private_key_jwt, authlib's default
    # alg) with a key whose public half it registered, and asks for ES256 ID tokens.
    rsa = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    public_jwk = {**rsa.as_dict(is_private=False), "kid": "news-1"}
    second_id, second_secret = register(BASE, "authlib news", token_endpoint_auth_method="private_key_jwt",
                                        id_token_signed_response_alg="ES256", jwks={"keys": [public_jwk]})
    check(second_secret is None, "a client with keys is given no secret")
    second_meta = requests.get(SECOND + "/.well-known/openid-configuration", timeout=30).json()
    news = OAuth2Session(second_id, rsa.as_pem(is_private=True), scope="openid email", redirect_uri=REDIRECT,
                         code_challenge_method="S256", token_endpoint_auth_method="private_key_jwt")
    news.register_client_auth_method(PrivateKeyJWT(second_meta["token_endpoint"], headers={"kid": "news-1"}))
    verifier2 = generate_token(48)
    deadline = time.time() + 30
    while True:
        url2, state2 = news.create_authorization_url(second_meta["authorization_endpoint"], code_verifier=verifier2,
                                                     nonce=generate_token(20), prompt="none")
        # The session cookie is the browser's: sent to the other region as to this one.
        back = browser.get(url2, allow_redirects=False, timeout=30)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(back.headers.get("Location", "")).query))
        if back.status_code == 303 and "code" in query:
            break
        if time.time() > deadline:
            raise SystemExit(f"authlib relying party: FAILED: the session never reached the other region ({back.status_code} {query})")
        time.sleep(0.3)
    token2 = news.fetch_token(second_meta["token_endpoint"], authorization_response=back.headers["Location"],
                              state=state2, code_verifier=verifier2)
    claims2 = jwt.decode(token2["id_token"], JsonWebKey.import_key_set(requests.get(second_meta["jwks_uri"], timeout=30).json()),
                         claims_options={"iss": {"essential": True, "value": second_meta["issuer"]},
                                         "aud": {"essential": True, "value": second_id}})
    claims2.validate(now=int(time.time()), leeway=5)
    check(claims2["sub"] == claims["sub"], "signed in at the second region without a password (prompt=none)")
    check(claims2.header["alg"] == "ES256", "with a private_key_jwt assertion, and an ES256 ID token authlib verified")

    # The sign-out, as RP-initiated logout sends the browser.
    out = meta["end_session_endpoint"] + "?" + urllib.parse.urlencode(
        {"client_id": client_id, "post_logout_redirect_uri": REDIRECT + "/out", "state": "bye"})
    page = browser.get(out, timeout=30)
    done = browser.post(meta["end_session_endpoint"], data=hidden_fields(page.text), allow_redirects=False, timeout=30)
    check(done.status_code == 303 and done.headers["Location"] == REDIRECT + "/out?state=bye", "the sign-out goes back with state")
    url3, _ = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(48), prompt="none")
    after = browser.get(url3, allow_redirects=False, timeout=30)
    check("error=login_required" in after.headers.get("Location", ""), "after the sign-out, prompt=none is login_required")
    print("authlib relying party: all checks passed")


if __name__ == "__main__":
    main()
