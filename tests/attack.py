#!/usr/bin/env python3
"""Attacks on a running authsync, each printed with what the node answered.

Run `authsync demo` (or scripts/demo.sh), then:

    python3 tests/attack.py --key KEY [--url http://127.0.0.1:8081] [--peer http://127.0.0.1:8082]

It creates one account of its own (attack-<random>@example.com) and tries, against it:
  1. concurrent guesses: 50 wrong passwords at once; the lockout lets 5 be verified;
  2. a spoofed X-Forwarded-For: the per-address limiter keys on the address the
     trusted proxy appended, not on what the client wrote to its left (only when the
     node sets rate_limit.client_ip_header; the demo does not, so this one reports it);
  3. a spent refresh token with its generation rewritten: still reuse, family revoked;
  4. one refresh token used in two regions at once: both branches refused once the
     regions have heard of each other;
  5. a password change: the session opened before it ends in every region;
  6. a login flood past the node's hashing bound: 503 with Retry-After, not a queue.
Python's standard library only. Every loop is bounded.
"""

import argparse
import concurrent.futures
import json
import secrets
import time
import urllib.error
import urllib.request


def call(url, key, method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("authorization", "Bearer " + key)
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None, dict(resp.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return e.code, parsed, dict(e.headers)


def report(name, ok, detail):
    print(f"[{'held' if ok else 'BROKEN'}] {name}: {detail}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8081")
    ap.add_argument("--peer", default="http://127.0.0.1:8082")
    ap.add_argument("--key", required=True, help="the API key authsync demo printed")
    ap.add_argument("--xff", action="store_true",
                    help="the node takes the client address from x-forwarded-for (rate_limit.client_ip_header)")
    a = ap.parse_args()
    url, peer, key = a.url.rstrip("/"), a.peer.rstrip("/"), a.key
    email = f"attack-{secrets.token_hex(4)}@example.com"
    password = "correct horse battery " + secrets.token_hex(4)
    status, body, _ = call(url, key, "POST", "/v1/users", {"email": email, "password": password})
    if status != 201:
        raise SystemExit(f"could not create {email}: {status} {body}")
    user = body["id"]
    results = []

    # 1. Concurrent guesses.
    victim = f"victim-{secrets.token_hex(4)}@example.com"
    call(url, key, "POST", "/v1/users", {"email": victim, "password": password})
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(
            lambda i: call(url, key, "POST", "/v1/login", {"login": victim, "password": f"guess {i}"}),
            range(50)))
    verified = sum(1 for s, b, _ in answers if s == 401)
    statuses = sorted({s for s, _, _ in answers})
    results.append(report("50 concurrent guesses", verified <= 5,
                          f"{verified} verified (401), the rest refused unhashed; statuses {statuses}"))

    # 2. Spoofed X-Forwarded-For (only against a node with rate_limit.client_ip_header
    # set to x-forwarded-for and a burst below 40: --xff says so).
    if a.xff:
        spoofed = [call(url, key, "GET", f"/v1/users?email=nobody{i}@example.com",
                        headers={"x-forwarded-for": f"10.0.0.{i}, 203.0.113.7"})[0] for i in range(40)]
        limited = spoofed.count(429)
        results.append(report("spoofed X-Forwarded-For", limited > 0,
                              f"{limited} of 40 lookups limited: the spoofed left entries gave no new buckets"))
    else:
        print("[skipped] spoofed X-Forwarded-For: pass --xff against a node that reads x-forwarded-for")

    # 3. A spent refresh token with its generation rewritten.
    status, session, _ = call(url, key, "POST", "/v1/login", {"login": email, "password": password})
    first = session["refresh_token"]
    _, rotated, _ = call(url, key, "POST", "/v1/token/refresh", {"refresh_token": first})
    prefix, family, generation, secret = first.split(".")
    rewritten = ".".join([prefix, family, str(int(generation) + 1), secret])
    s1, b1, _ = call(url, key, "POST", "/v1/token/refresh", {"refresh_token": rewritten})
    s2, b2, _ = call(url, key, "POST", "/v1/token/refresh", {"refresh_token": rotated["refresh_token"]})
    results.append(report("spent token, generation rewritten", s1 == 401 and s2 == 401,
                          f"rewritten: {s1} {b1 and b1.get('error')}; the real one after: {s2} {b2 and b2.get('error')}"))

    # 4. One refresh token in two regions at once.
    _, session, _ = call(url, key, "POST", "/v1/login", {"login": email, "password": password})
    token = session["refresh_token"]
    time.sleep(2)  # the family reaches the peer
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        here, there = pool.map(lambda u: call(u, key, "POST", "/v1/token/refresh", {"refresh_token": token}),
                               [url, peer])
    time.sleep(3)
    later = [call(u, key, "POST", "/v1/token/refresh", {"refresh_token": t[1]["refresh_token"]})[0]
             for u in (url, peer) for t in (here, there) if t[0] == 200]
    both = here[0] == 200 and there[0] == 200
    if later:
        results.append(report("one refresh token in two regions", all(s == 401 for s in later),
                              f"first uses {here[0]}/{there[0]} ({'both won the race' if both else 'one lost at once'}); "
                              f"their successors afterwards: {later}"))
    else:
        results.append(report("one refresh token in two regions", False,
                              f"neither use succeeded ({here[0]}/{there[0]}): the family never reached {peer}?"))

    # 5. A password change ends the sessions opened before it.
    _, session, _ = call(peer, key, "POST", "/v1/login", {"login": email, "password": password})
    status, _, _ = call(url, key, "PUT", f"/v1/users/{user}/password", {"password": password + " new"})
    time.sleep(3)
    s, b, _ = call(peer, key, "POST", "/v1/token/refresh", {"refresh_token": session["refresh_token"]})
    results.append(report("session after a password change", s == 401,
                          f"password change {status}; refresh of the older session at the peer: {s} {b and b.get('error')}"))

    # 6. A login flood.
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        flood = list(pool.map(
            lambda i: call(url, key, "POST", "/v1/login", {"login": f"flood{i}@example.com", "password": "x" * 12}),
            range(400)))
    overloaded = [h for s, _, h in flood if s == 503]
    codes = sorted({s for s, _, _ in flood})
    retry = {h.get("Retry-After") or h.get("retry-after") for h in overloaded}
    held = all(s in (401, 429, 503) for s, _, _ in flood) and None not in retry
    results.append(report("login flood", held,
                          f"{len(overloaded)} of 400 answered 503 (Retry-After {retry or '-'}), none another 5xx, "
                          f"statuses {codes} (no 503 means this node hashed them all within "
                          f"http.max_hashing_in_flight)"))

    print(f"{sum(results)} of {len(results)} held")
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
