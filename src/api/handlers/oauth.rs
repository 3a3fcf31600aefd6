//! The OpenID Connect provider's endpoints: discovery, `/oauth2/authorize` (the
//! hosted sign-in page, server-rendered, no JavaScript), `/oauth2/token`,
//! `/oauth2/userinfo`, and the admin API of clients (`/v1/admin/oauth-clients`).
//!
//! The sign-in form is protected against cross-site posts by a double-submit token:
//! a random value in a `SameSite=Strict` cookie and in a hidden field, which must
//! match. It goes through the same lockout, hashing bound and failure timing as
//! `/v1/login`, and says the same thing for an unknown account and a wrong password.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::accounts::error::UserError;
use crate::accounts::input::SecondFactor;
use crate::accounts::oidc::request::{self, AuthRequest, Prompt, Refusal};
use crate::accounts::oidc::{assertion, clients, Session};
use crate::api::error::{oauth_error, oauth_tokens, page, redirect, ApiError, Page};
use crate::api::extract::{blocking, hashing, JsonBody};
use crate::api::state::AppState;
use crate::replication::forward::ExchangeRequest;

/// The cookies' names. Over https they carry the `__Host-` prefix: a browser then
/// takes them only from this host, with `Secure` and `Path=/`, so a sibling subdomain
/// (another platform of the group, or a script on one) cannot plant its own.
const SESSION_COOKIE: &str = "authsync_session";
const CSRF_COOKIE: &str = "authsync_csrf";

/// How recent a sign-in a consent answer to a `prompt=login` request needs: the one
/// that showed the consent page.
const FRESH_SIGN_IN_S: u64 = 300;

fn cookie_name(s: &AppState, name: &'static str) -> String {
    if s.oidc.issuer().starts_with("https://") {
        format!("__Host-{name}")
    } else {
        name.to_string()
    }
}

/// Whether a browser says the request came from another site or a sibling one
/// (`Sec-Fetch-Site`): a form of this page is posted from this origin. Clients that
/// send no such header are judged by the CSRF token alone.
fn cross_origin(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn secure(s: &AppState) -> &'static str {
    if s.oidc.issuer().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The HTML around a page's body: readable on a phone, no script.
fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;max-width:24rem;margin:2rem auto;padding:0 1rem;line-height:1.4}}\
label{{display:block;margin-top:1rem;font-weight:600}}\
input[type=text],input[type=password],input[type=email]{{width:100%;padding:.6rem;font-size:1rem;box-sizing:border-box}}\
button{{margin-top:1.5rem;width:100%;padding:.7rem;font-size:1rem}}\
.error{{color:#a00;border:1px solid #a00;padding:.5rem;margin-top:1rem}}\
</style></head><body><main>{body}</main></body></html>",
        title = escape(title),
    )
}

fn notice(kind: Page, title: &str, text: &str) -> Response {
    page(
        kind,
        layout(
            title,
            &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text)),
        ),
        &[],
    )
}

/// A new CSRF token: its value (for the form's hidden field) and its cookie.
fn new_csrf(s: &AppState) -> Option<(String, String)> {
    let csrf = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::crypto::primitives::random::<16>().ok()?);
    let cookie = format!(
        "{}={csrf}; Path=/; HttpOnly; SameSite=Strict{}",
        cookie_name(s, CSRF_COOKIE),
        secure(s)
    );
    Some((csrf, cookie))
}

/// The request's parameters as hidden fields, posted again with the form.
fn hidden_fields(req: &AuthRequest) -> String {
    let mut hidden = String::new();
    for (k, v) in req.to_params() {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            escape(&v)
        ));
    }
    hidden
}

/// A form page of the sign-in for `req`: `title`, the client it continues to, an
/// error if any, and `fields` inside a form that posts the request again with a new
/// CSRF token (cookie and hidden field).
fn form_page(
    s: &AppState,
    kind: Page,
    title: &str,
    req: &AuthRequest,
    client_name: &str,
    error: Option<&str>,
    fields: &str,
) -> Response {
    let Some((csrf, cookie)) = new_csrf(s) else {
        return notice(
            Page::Unavailable,
            "Try again",
            "The sign-in page is unavailable; try again.",
        );
    };
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
                escape(e)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>{title}</h1><p>to continue to {client}</p>{error}\
<form method=\"post\" action=\"/oauth2/authorize\">{hidden}\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{fields}</form>",
        title = escape(title),
        client = escape(client_name),
        hidden = hidden_fields(req),
    );
    page(kind, layout(title, &body), &[cookie])
}

/// The sign-in form for `req`.
fn sign_in_form(
    s: &AppState,
    kind: Page,
    req: &AuthRequest,
    client_name: &str,
    error: Option<&str>,
    login: &str,
) -> Response {
    let fields = format!(
        "<label for=\"login\">Email or phone</label>\
<input type=\"text\" id=\"login\" name=\"login\" autocomplete=\"username\" required value=\"{login}\">\
<label for=\"password\">Password</label>\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button>",
        login = escape(login),
    );
    form_page(s, kind, "Sign in", req, client_name, error, &fields)
}

/// The second step's form: the code of the account's authenticator, or a recovery
/// code, for the pending sign-in `pending`.
fn second_factor_form(
    s: &AppState,
    kind: Page,
    req: &AuthRequest,
    client_name: &str,
    pending: &str,
    error: Option<&str>,
) -> Response {
    let fields = format!(
        "<input type=\"hidden\" name=\"pending\" value=\"{pending}\">\
<label for=\"code\">Code from your authenticator app, or a recovery code</label>\
<input type=\"text\" id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required autofocus>\
<button type=\"submit\">Continue</button>",
        pending = escape(pending),
    );
    form_page(
        s,
        kind,
        "Two-step sign-in",
        req,
        client_name,
        error,
        &fields,
    )
}

/// `redirect_uri` with `params` added to its query.
fn with_query(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => redirect_uri.to_string(),
    }
}

fn refusal(s: &AppState, r: Refusal) -> Response {
    match r {
        Refusal::Page(text) => notice(
            Page::BadRequest,
            "This sign-in request cannot be served",
            &text,
        ),
        Refusal::Redirect {
            redirect_uri,
            state,
            error,
            description,
        } => {
            let iss = s.oidc.issuer();
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
                ("iss", iss.as_str()),
            ];
            if let Some(st) = &state {
                params.push(("state", st.as_str()));
            }
            redirect(&with_query(&redirect_uri, &params), &[])
        }
    }
}

/// Redirects back to the client with a new code for `session`.
fn grant(s: &AppState, req: &AuthRequest, session: &Session, cookies: &[String]) -> Response {
    match s.oidc.issue_code(req, session) {
        Ok(code) => {
            metrics::counter!(crate::common::metrics::OIDC_CODES_ISSUED_TOTAL).increment(1);
            let iss = s.oidc.issuer();
            let mut params = vec![("code", code.as_str()), ("iss", iss.as_str())];
            if let Some(st) = &req.state {
                params.push(("state", st.as_str()));
            }
            redirect(&with_query(&req.redirect_uri, &params), cookies)
        }
        Err(_) => notice(
            Page::Unavailable,
            "Try again",
            "Signing in is unavailable here for a moment; try again.",
        ),
    }
}

/// Checks an authorization request's parameters, looking its client up.
async fn checked(
    s: &AppState,
    pairs: Vec<(String, String)>,
) -> Result<(AuthRequest, crate::proto::OAuthClient), Response> {
    let params = request::params(pairs).map_err(|e| {
        notice(
            Page::BadRequest,
            "This sign-in request cannot be served",
            &e,
        )
    })?;
    let oidc = s.oidc.clone();
    let id = params.get("client_id").cloned().unwrap_or_default();
    let client = blocking(move || oidc.clients().get(&id))
        .await
        .map_err(IntoResponse::into_response)?;
    let req = request::check(&params, client.as_ref()).map_err(|r| refusal(s, r))?;
    match client {
        Some(client) => Ok((req, client)),
        None => Err(notice(
            Page::BadRequest,
            "This sign-in request cannot be served",
            "The request names a client that is not registered.",
        )),
    }
}

/// What a client asks to see, in words.
fn scope_words(scopes: &[String]) -> Vec<&'static str> {
    scopes
        .iter()
        .filter_map(|s| match s.as_str() {
            "email" => Some("your email address"),
            "phone" => Some("your phone number"),
            "profile" => Some("your profile (name and the like)"),
            "offline_access" => Some("access while you are away"),
            _ => None,
        })
        .collect()
}

/// The consent page of a client that is not one of the group's own platforms: allow
/// or deny, through the same CSRF-protected form.
fn consent_page(
    s: &AppState,
    req: &AuthRequest,
    client: &crate::proto::OAuthClient,
    cookies: &[String],
) -> Response {
    let Some((csrf, csrf_cookie)) = new_csrf(s) else {
        return notice(
            Page::Unavailable,
            "Try again",
            "The sign-in page is unavailable; try again.",
        );
    };
    let mut asks = String::from("<li>that you are signed in</li>");
    for w in scope_words(&req.scopes) {
        asks.push_str(&format!("<li>{w}</li>"));
    }
    let body = format!(
        "<h1>Allow {client}?</h1><p>{client} asks to know:</p><ul>{asks}</ul>\
<form method=\"post\" action=\"/oauth2/authorize\">{hidden}\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        client = escape(&client.name),
        hidden = hidden_fields(req),
    );
    let mut all = cookies.to_vec();
    all.push(csrf_cookie);
    page(Page::Shown, layout("Allow access", &body), &all)
}

/// A form's fields; a body too large or unreadable is refused (`title` heads the
/// page that says so).
fn read_form(
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
    title: &str,
) -> Result<Vec<(String, String)>, Box<Response>> {
    match pairs {
        Ok(Form(p)) => Ok(p),
        Err(FormRejection::BytesRejection(e)) => Err(Box::new(ApiError::from(e).into_response())),
        Err(_) => Err(Box::new(notice(
            Page::BadRequest,
            title,
            "The form cannot be read.",
        ))),
    }
}

/// Whether a form's `presented` CSRF token matches the request's CSRF cookie: a
/// post from another site carries no cookie (`SameSite=Strict`), or another value.
fn csrf_matches(s: &AppState, headers: &HeaderMap, presented: Option<&String>) -> bool {
    if cross_origin(headers) {
        return false;
    }
    let expected = cookie(headers, &cookie_name(s, CSRF_COOKIE));
    matches!((presented, &expected), (Some(a), Some(b)) if !b.is_empty()
        && crate::crypto::primitives::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// The live session of the request's cookie, if any.
async fn current_session(s: &AppState, headers: &HeaderMap) -> Result<Option<Session>, Response> {
    let Some(value) = cookie(headers, &cookie_name(s, SESSION_COOKIE)) else {
        return Ok(None);
    };
    let oidc = s.oidc.clone();
    blocking(move || oidc.session(&value))
        .await
        .map_err(IntoResponse::into_response)
}

#[utoipa::path(get, path = "/oauth2/authorize", tag = "oidc", params(("client_id" = Option<String>, Query, description = "a registered client"), ("redirect_uri" = Option<String>, Query, description = "one registered for it, exactly"), ("response_type" = Option<String>, Query, description = "code"), ("scope" = Option<String>, Query, description = "openid and others allowed to the client"), ("state" = Option<String>, Query, description = "returned as is"), ("nonce" = Option<String>, Query, description = "put in the ID token"), ("code_challenge" = Option<String>, Query, description = "PKCE S256"), ("code_challenge_method" = Option<String>, Query, description = "S256"), ("prompt" = Option<String>, Query, description = "none, login, consent or select_account"), ("max_age" = Option<u64>, Query, description = "seconds")), responses((status = 303, description = "back to the client's redirect URI, with a code or an error"), (status = 200, description = "the sign-in page", content_type = "text/html", body = String), (status = 400, description = "an unknown client or a redirect URI not registered: a page, never redirected", content_type = "text/html", body = String), (status = 503, description = "unavailable here for a moment", content_type = "text/html", body = String)))]
pub async fn authorize(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = pairs else {
        return notice(
            Page::BadRequest,
            "This sign-in request cannot be served",
            "Its parameters cannot be read.",
        );
    };
    let (req, client) = match checked(&s, pairs).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let session = match current_session(&s, &headers).await {
        Ok(session) => session,
        Err(resp) => return resp,
    };
    let now_s = s.users.clock_now_ms() / 1000;
    let fresh = |session: &Session| {
        req.max_age
            .is_none_or(|max| now_s.saturating_sub(session.auth_time_ms / 1000) <= max)
    };
    match (req.prompt, session) {
        (Prompt::Default, Some(session)) | (Prompt::None, Some(session))
            if fresh(&session) && client.first_party =>
        {
            grant(&s, &req, &session, &[])
        }
        (Prompt::None, Some(session)) if fresh(&session) => refusal(
            &s,
            Refusal::Redirect {
                redirect_uri: req.redirect_uri.clone(),
                state: req.state.clone(),
                error: "consent_required",
                description: "this client needs the customer's consent, asked on a page".into(),
            },
        ),
        (Prompt::Default, Some(session)) if fresh(&session) => consent_page(&s, &req, &client, &[]),
        (Prompt::None, _) => refusal(
            &s,
            Refusal::Redirect {
                redirect_uri: req.redirect_uri.clone(),
                state: req.state.clone(),
                error: "login_required",
                description: "no session here, or one older than max_age".into(),
            },
        ),
        _ => sign_in_form(&s, Page::Shown, &req, &client.name, None, ""),
    }
}

#[utoipa::path(post, path = "/oauth2/authorize", tag = "oidc", request_body(content = crate::api::schema::SignInForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "signed in: back to the client with a code"), (status = 400, description = "a request that cannot be served", content_type = "text/html", body = String), (status = 401, description = "the sign-in page again: a wrong email, phone or password, or an expired form", content_type = "text/html", body = String), (status = 429, description = "too many attempts (the page says when to retry), or too many requests from this address", content_type = "text/html", body = String), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "unavailable here for a moment", content_type = "text/html", body = String)))]
pub async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let pairs = match read_form(pairs, "This sign-in request cannot be served") {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let mut rest = Vec::new();
    let (mut login, mut password, mut csrf, mut decision) = (None, None, None, None);
    let (mut pending, mut code) = (None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "decision" if decision.is_none() => decision = Some(v),
            "pending" if pending.is_none() => pending = Some(v),
            "code" if code.is_none() => code = Some(v),
            "login" if login.is_none() => login = Some(v),
            "password" if password.is_none() => password = Some(v),
            "csrf" if csrf.is_none() => csrf = Some(v),
            _ => rest.push((k, v)),
        }
    }
    let (req, client) = match checked(&s, rest).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let client_name = client.name.clone();
    if !csrf_matches(&s, &headers, csrf.as_ref()) {
        metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "csrf")
            .increment(1);
        return sign_in_form(
            &s,
            Page::Refused,
            &req,
            &client_name,
            Some("The form expired. Please sign in again."),
            "",
        );
    }
    if let Some(decision) = decision {
        // The consent page's answer: only with a live session.
        let session = match current_session(&s, &headers).await {
            Ok(Some(session)) => session,
            Ok(None) => return sign_in_form(&s, Page::Shown, &req, &client_name, None, ""),
            Err(resp) => return resp,
        };
        // Only a client that is asked consent takes an answer, and only from a sign-in
        // as fresh as the request wants: max_age, or for prompt=login the sign-in that
        // just showed this page.
        let age_s = s.users.clock_now_ms().saturating_sub(session.auth_time_ms) / 1000;
        let stale = req.max_age.is_some_and(|max| age_s > max)
            || (req.prompt == Prompt::Login && age_s > FRESH_SIGN_IN_S);
        if client.first_party || stale {
            return sign_in_form(&s, Page::Shown, &req, &client_name, None, "");
        }
        if decision != "allow" {
            return refusal(
                &s,
                Refusal::Redirect {
                    redirect_uri: req.redirect_uri.clone(),
                    state: req.state.clone(),
                    error: "access_denied",
                    description: "the customer did not allow it".into(),
                },
            );
        }
        return grant(&s, &req, &session, &[]);
    }
    if let Some(pending) = pending {
        return second_step(&s, &req, &client, &pending, code.unwrap_or_default()).await;
    }
    let login = login.unwrap_or_default();
    let password = password.unwrap_or_default();
    if login.is_empty() || password.is_empty() || login.len() > 320 || password.len() > 1024 {
        return sign_in_form(
            &s,
            Page::Refused,
            &req,
            &client_name,
            Some("Enter your email or phone and your password."),
            &login,
        );
    }
    let users = s.users.clone();
    let oidc = s.oidc.clone();
    let who = login.clone();
    let outcome = hashing(&s.hashing, move || {
        let (result, hold) = users.login_held(&who, &password, None);
        let started = result.and_then(|(id, credentials)| {
            let cookie = oidc.start_session(id, credentials)?;
            Ok((id, credentials, cookie))
        });
        Ok::<_, ApiError>((started, hold))
    })
    .await;
    let (started, hold) = match outcome {
        Ok(o) => o,
        Err(_) => {
            return notice(
                Page::Unavailable,
                "Try again",
                "Too many sign-ins at once; try again in a moment.",
            )
        }
    };
    tokio::time::sleep(hold).await;
    match started {
        Ok((user, credentials, value)) => signed_in(&s, &req, &client, user, credentials, &value),
        Err(UserError::SecondFactorRequired {
            user,
            credentials_ms,
        }) => {
            metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "second_factor_asked").increment(1);
            match s
                .oidc
                .begin_second_factor(user, credentials_ms, &client.client_id)
            {
                Ok(token) => second_factor_form(&s, Page::Shown, &req, &client_name, &token, None),
                Err(_) => notice(
                    Page::Unavailable,
                    "Try again",
                    "Signing in is unavailable here for a moment; try again.",
                ),
            }
        }
        Err(UserError::TooManyAttempts { retry_after_ms }) => {
            metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "too_many_attempts").increment(1);
            let minutes = retry_after_ms.div_ceil(60_000);
            let text = format!(
                "Too many attempts. Try again in {minutes} minute{}.",
                if minutes == 1 { "" } else { "s" }
            );
            sign_in_form(&s, Page::TooMany, &req, &client_name, Some(&text), &login)
        }
        Err(UserError::Forbidden(_)) => {
            // As /v1/login answers 403 for a locked or disabled account.
            sign_in_form(
                &s,
                Page::Refused,
                &req,
                &client_name,
                Some("This account cannot sign in now. Contact the platform's support."),
                &login,
            )
        }
        Err(UserError::LoginFailed { .. }) => {
            metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "wrong_credentials").increment(1);
            sign_in_form(
                &s,
                Page::Refused,
                &req,
                &client_name,
                Some("The email, phone or password is wrong."),
                &login,
            )
        }
        Err(_) => notice(
            Page::Unavailable,
            "Try again",
            "Signing in is unavailable here for a moment; try again.",
        ),
    }
}

/// A customer signed in (password, and second factor if any): the session cookie
/// `value` set, then the code sent back, or the consent page of a client that asks.
fn signed_in(
    s: &AppState,
    req: &AuthRequest,
    client: &crate::proto::OAuthClient,
    user: uuid::Uuid,
    credentials: u64,
    value: &str,
) -> Response {
    metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "ok").increment(1);
    let session = Session {
        user,
        auth_time_ms: s.users.clock_now_ms(),
        credentials_ms: credentials,
    };
    let cookies = [
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            cookie_name(s, SESSION_COOKIE),
            s.oidc.session_ttl_s(),
            secure(s)
        ),
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            cookie_name(s, CSRF_COOKIE),
            secure(s)
        ),
    ];
    if client.first_party {
        grant(s, req, &session, &cookies)
    } else {
        consent_page(s, req, client, &cookies[..1])
    }
}

/// The second step of a sign-in: the code for the pending sign-in `pending`, behind
/// the account's lockout. A wrong code asks again (up to the pending sign-in's tries);
/// an expired one, or an account changed since the password, starts over.
async fn second_step(
    s: &AppState,
    req: &AuthRequest,
    client: &crate::proto::OAuthClient,
    pending: &str,
    code: String,
) -> Response {
    let again = |text: &str| sign_in_form(s, Page::Refused, req, &client.name, Some(text), "");
    let Some(waiting) = s.oidc.second_factor_try(pending, &client.client_id) else {
        return again("The sign-in expired. Please sign in again.");
    };
    let code = code.trim().to_string();
    if code.is_empty() || code.len() > 32 {
        return second_factor_form(
            s,
            Page::Refused,
            req,
            &client.name,
            pending,
            Some("Enter the code from your authenticator app, or a recovery code."),
        );
    }
    let factor = if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        SecondFactor::Totp(code)
    } else {
        SecondFactor::RecoveryCode(code)
    };
    let (users, oidc) = (s.users.clone(), s.oidc.clone());
    let outcome = blocking(move || {
        Ok::<_, UserError>(
            users
                .login_second_factor(&waiting.user, waiting.credentials_ms, &factor)
                .and_then(|(user, credentials)| {
                    let cookie = oidc.start_session(user, credentials)?;
                    Ok((user, credentials, cookie))
                }),
        )
    })
    .await;
    let ask = |kind: Page, text: &str| {
        second_factor_form(s, kind, req, &client.name, pending, Some(text))
    };
    match outcome {
        Ok(Ok((user, credentials, value))) => {
            s.oidc.end_second_factor(pending);
            signed_in(s, req, client, user, credentials, &value)
        }
        Ok(Err(UserError::SecondFactorFailed { .. })) => {
            metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "wrong_second_factor").increment(1);
            ask(Page::Refused, "The code is wrong, or was used already.")
        }
        Ok(Err(UserError::TooManyAttempts { retry_after_ms })) => {
            metrics::counter!(crate::common::metrics::OIDC_SIGN_INS_TOTAL, "outcome" => "too_many_attempts").increment(1);
            let minutes = retry_after_ms.div_ceil(60_000);
            ask(
                Page::TooMany,
                &format!(
                    "Too many attempts. Try again in {minutes} minute{}.",
                    if minutes == 1 { "" } else { "s" }
                ),
            )
        }
        Ok(Err(UserError::InvalidCredentials)) => {
            s.oidc.end_second_factor(pending);
            again("The account changed since. Please sign in again.")
        }
        Ok(Err(_)) | Err(_) => notice(
            Page::Unavailable,
            "Try again",
            "Signing in is unavailable here for a moment; try again.",
        ),
    }
}

/// The fields of a request to the token, revocation or introspection endpoint, each
/// at most once; anything else is refused as RFC 6749 says (`invalid_request`), a
/// body too large as every other one.
#[allow(clippy::result_large_err)] // the refusal is the response itself, built once
fn oauth_form(
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<std::collections::BTreeMap<String, String>, Response> {
    match pairs {
        Ok(Form(p)) => request::params(p).map_err(|e| oauth_error("invalid_request", &e)),
        Err(FormRejection::BytesRejection(e)) => Err(ApiError::from(e).into_response()),
        Err(_) => Err(oauth_error(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        )),
    }
}

/// The client a token request authenticates as: HTTP Basic (`client_secret_basic`),
/// `client_id` and `client_secret` in the form (`client_secret_post`), a signed
/// `client_assertion` (`private_key_jwt`), or a public client's bare `client_id`.
/// Exactly one way: a request that mixes them is refused.
async fn token_client(
    s: &AppState,
    headers: &HeaderMap,
    form: &std::collections::BTreeMap<String, String>,
) -> Result<crate::proto::OAuthClient, Response> {
    let refuse = || oauth_error("invalid_client", "client authentication failed");
    if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
        let (Some(assertion), Some(assertion::ASSERTION_TYPE)) = (
            form.get("client_assertion").cloned(),
            form.get("client_assertion_type").map(String::as_str),
        ) else {
            return Err(oauth_error(
                "invalid_client",
                "client_assertion_type must be jwt-bearer, with a client_assertion",
            ));
        };
        if headers.contains_key(header::AUTHORIZATION) || form.contains_key("client_secret") {
            return Err(oauth_error(
                "invalid_request",
                "a request authenticates one way: an assertion, or a secret",
            ));
        }
        let (oidc, client_id) = (s.oidc.clone(), form.get("client_id").cloned());
        return blocking(move || {
            Ok::<_, UserError>(oidc.assertion_client(&assertion, client_id.as_deref()))
        })
        .await
        .map_err(|_| oauth_error("server_error", "the client registry is unavailable"))?
        .map_err(|why| oauth_error("invalid_client", why));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|b| {
            let (id, secret) = b.split_once(':')?;
            let decode = |x: &str| {
                url::form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some((id, secret)), None | Some(_), None) => {
            if form.get("client_id").is_some_and(|f| *f != id) {
                return Err(refuse());
            }
            (id, Some(secret))
        }
        (None, Some(id), secret) => (id.clone(), secret.cloned()),
        _ => return Err(refuse()),
    };
    let oidc = s.oidc.clone();
    let client = blocking(move || oidc.clients().get(&id))
        .await
        .map_err(|_| oauth_error("server_error", "the client registry is unavailable"))?
        .ok_or_else(refuse)?;
    // A bare id is a public client's alone: a client registered for a secret or for
    // keys must present it.
    let ok = match &secret {
        None => clients::is_public(&client),
        Some(secret) => clients::secret_matches(&client, secret),
    };
    if ok {
        Ok(client)
    } else {
        Err(refuse())
    }
}

#[utoipa::path(post, path = "/oauth2/token", tag = "oidc", request_body(content = crate::api::schema::TokenRequest, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "tokens: access, refresh and (for a code) ID token", body = crate::api::schema::OAuthTokens), (status = 400, description = "`{error, error_description}` as RFC 6749 names them", body = crate::api::schema::OAuthError), (status = 401, description = "invalid_client", body = crate::api::schema::OAuthError), (status = 500, description = "server_error", body = crate::api::schema::OAuthError), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn token(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let form = match oauth_form(pairs) {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let client = match token_client(&s, &headers, &form).await {
        Ok(c) => c,
        Err(resp) => {
            metrics::counter!(crate::common::metrics::OIDC_TOKEN_REFUSED_TOTAL, "reason" => "invalid_client").increment(1);
            return resp;
        }
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let oidc = s.oidc.clone();
    let result = match grant_type.as_str() {
        "authorization_code" => {
            let Some(code) = form.get("code").cloned() else {
                return oauth_error("invalid_request", "code is required");
            };
            let (redirect_uri, verifier) = (
                form.get("redirect_uri").cloned(),
                form.get("code_verifier").cloned(),
            );
            if let Some(region) = crate::accounts::oidc::code_region(&code)
                .filter(|r| *r != s.users.region() && s.forwarder.reaches(r))
            {
                let req = ExchangeRequest {
                    client_id: client.client_id.clone(),
                    code: code.clone(),
                    redirect_uri,
                    code_verifier: verifier,
                };
                return forward_exchange(&s, region, &req).await;
            }
            blocking(move || {
                Ok::<_, UserError>(oidc.exchange_code(
                    &client,
                    &code,
                    redirect_uri.as_deref(),
                    verifier.as_deref(),
                ))
            })
            .await
        }
        "refresh_token" => {
            let Some(token) = form.get("refresh_token").cloned() else {
                return oauth_error("invalid_request", "refresh_token is required");
            };
            blocking(move || Ok::<_, UserError>(oidc.refresh(&client, &token))).await
        }
        "client_credentials" => {
            let scope = form.get("scope").cloned();
            blocking(move || Ok::<_, UserError>(oidc.client_credentials(&client, scope.as_deref())))
                .await
        }
        "" => return oauth_error("invalid_request", "grant_type is required"),
        _ => {
            return oauth_error(
                "unsupported_grant_type",
                "authorization_code, refresh_token and client_credentials are supported",
            )
        }
    };
    let grant: &'static str = match grant_type.as_str() {
        "refresh_token" => "refresh_token",
        "client_credentials" => "client_credentials",
        _ => "authorization_code",
    };
    match result {
        Ok(Ok(granted)) => {
            metrics::counter!(crate::common::metrics::OIDC_TOKENS_GRANTED_TOTAL, "grant" => grant)
                .increment(1);
            oauth_tokens(granted.json())
        }
        Ok(Err(e)) => {
            metrics::counter!(crate::common::metrics::OIDC_TOKEN_REFUSED_TOTAL, "reason" => e.error).increment(1);
            oauth_error(e.error, &e.description)
        }
        Err(_) => oauth_error("server_error", "try again"),
    }
}

/// The errors a peer may answer a forwarded exchange with, relayed as they are.
const RELAYED_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "server_error",
];

/// A code exchange sent to `region`, which issued the code; its answer relayed, read
/// field by field: nothing else of what the peer sent reaches the client.
async fn forward_exchange(s: &AppState, region: &str, req: &ExchangeRequest) -> Response {
    let count = |outcome: &'static str| {
        metrics::counter!(crate::common::metrics::OIDC_CODES_FORWARDED_TOTAL, "outcome" => outcome)
            .increment(1)
    };
    let unreachable = |e: String| {
        count("unreachable");
        tracing::warn!(region, error = %e, "forward a code exchange");
        oauth_error(
            "server_error",
            "the region that issued the code cannot be reached: sign in again",
        )
    };
    let (status, body) = match s.forwarder.exchange(region, req).await {
        Ok(answer) => answer,
        Err(e) => return unreachable(format!("{e:#}")),
    };
    let text = |field: &str, max: usize| {
        body[field]
            .as_str()
            .filter(|v| !v.is_empty() && v.len() <= max)
            .map(str::to_string)
    };
    match status {
        200 => {
            let (Some(access_token), Some(expires_in), Some(scope)) = (
                text("access_token", 16 * 1024),
                body["expires_in"].as_u64(),
                body["scope"].as_str().filter(|v| v.len() <= 1024),
            ) else {
                return unreachable("an answer without its tokens".into());
            };
            count("ok");
            let mut out = json!({"access_token": access_token, "token_type": "Bearer",
                "expires_in": expires_in, "scope": scope});
            for field in ["refresh_token", "id_token"] {
                if let Some(v) = text(field, 16 * 1024) {
                    out[field] = json!(v);
                }
            }
            oauth_tokens(out)
        }
        _ => match RELAYED_ERRORS
            .iter()
            .find(|e| body["error"].as_str() == Some(**e))
        {
            Some(error) => {
                count("refused");
                metrics::counter!(crate::common::metrics::OIDC_TOKEN_REFUSED_TOTAL, "reason" => *error).increment(1);
                let description = text("error_description", 300).unwrap_or_default();
                oauth_error(error, &description)
            }
            None => unreachable(format!("answered {status}")),
        },
    }
}

/// The `token` field of a revocation or introspection request from an authenticated
/// client.
async fn client_and_token(
    s: &AppState,
    headers: &HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<(crate::proto::OAuthClient, String), Response> {
    let form = oauth_form(pairs)?;
    let client = token_client(s, headers, &form).await?;
    let token = form
        .get("token")
        .filter(|t| !t.is_empty() && t.len() <= 4096)
        .cloned()
        .ok_or_else(|| oauth_error("invalid_request", "token is required"))?;
    Ok((client, token))
}

#[utoipa::path(post, path = "/oauth2/revoke", tag = "oidc", request_body(content = crate::api::schema::TokenOnly, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "revoked, or nothing to revoke (RFC 7009: not an error): a refresh token's whole family, in every region"), (status = 400, description = "no token", body = crate::api::schema::OAuthError), (status = 401, description = "invalid_client", body = crate::api::schema::OAuthError), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn revoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (client, token) = match client_and_token(&s, &headers, pairs).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let oidc = s.oidc.clone();
    match blocking(move || oidc.revoke(&client, &token)).await {
        Ok(()) => oauth_tokens(json!({})),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/oauth2/introspect", tag = "oidc", request_body(content = crate::api::schema::TokenOnly, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "`{active, ...}` (RFC 7662): active only for a live token issued to the asking client", body = crate::api::schema::Introspection), (status = 400, description = "no token", body = crate::api::schema::OAuthError), (status = 401, description = "invalid_client", body = crate::api::schema::OAuthError), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn introspect(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (client, token) = match client_and_token(&s, &headers, pairs).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let oidc = s.oidc.clone();
    match blocking(move || oidc.introspect(&client, &token)).await {
        Ok(answer) => oauth_tokens(answer),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(get, path = "/oauth2/userinfo", tag = "oidc", security(("access_token" = [])), responses((status = 200, description = "the claims the access token's scopes release", body = crate::api::schema::UserInfo), (status = 401, description = "no valid access token", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn userinfo(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let invalid = || {
        let mut resp = ApiError::unauthorized(crate::accounts::error::Problem::new(
            "authorization",
            "a valid access token is required (Bearer)",
        ))
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        resp
    };
    let Some(token) = token else {
        return invalid();
    };
    let oidc = s.oidc.clone();
    match blocking(move || oidc.userinfo(&token)).await {
        Ok(Some(claims)) => oauth_tokens(claims),
        Ok(None) => invalid(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/oauth2/userinfo", tag = "oidc", security(("access_token" = [])), responses((status = 200, description = "the claims the access token's scopes release", body = crate::api::schema::UserInfo), (status = 401, description = "no valid access token", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn userinfo_post(state: State<AppState>, headers: HeaderMap) -> Response {
    userinfo(state, headers).await
}

#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc", responses((status = 200, description = "the provider's discovery document", body = crate::api::schema::Discovery), (status = 503, description = "timed out: retry", body = crate::api::schema::ErrorBody)))]
pub async fn discovery(State(s): State<AppState>) -> Json<Value> {
    Json(s.oidc.discovery())
}

#[utoipa::path(post, path = "/v1/admin/oauth-clients", tag = "admin", security(("api_key" = [])), request_body = crate::api::schema::NewOAuthClient, responses((status = 201, description = "the client, with its secret shown this once", body = crate::api::schema::OAuthClient), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn add_client(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let new = clients::new_client(&body).map_err(ApiError::invalid)?;
    let oidc = s.oidc.clone();
    let now = s.users.clock_now_ms();
    let (client, secret) = blocking(move || oidc.clients().register(new, now)).await?;
    let mut out = clients::client_json(&client);
    if let Some(secret) = secret {
        out["client_secret"] = json!(secret);
    }
    Ok(crate::api::error::created(Json(out)))
}

#[utoipa::path(get, path = "/v1/admin/oauth-clients", tag = "admin", security(("api_key" = [])), responses((status = 200, description = "every client, without secrets", body = crate::api::schema::OAuthClients), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn list_clients(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let oidc = s.oidc.clone();
    let list = blocking(move || oidc.clients().list()).await?;
    Ok(Json(
        json!({"clients": list.iter().map(clients::client_json).collect::<Vec<_>>()}),
    ))
}

#[utoipa::path(delete, path = "/v1/admin/oauth-clients/{id}", tag = "admin", security(("api_key" = [])), params(("id" = String, Path, description = "the client id")), responses((status = 200, description = "removed, in every region", body = crate::api::schema::OAuthClient), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 404, description = "no such client", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn remove_client(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let oidc = s.oidc.clone();
    let now = s.users.clock_now_ms();
    match blocking(move || oidc.clients().remove(&id, now)).await? {
        Some(c) => Ok(Json(clients::client_json(&c))),
        None => Err(ApiError::not_found()),
    }
}

/// Where a sign-out goes back to: a `post_logout_redirect_uri` registered for the
/// named client, exactly, with its `state`; `Ok(None)` for none asked; `Err` for one
/// not registered (shown a page, never followed).
async fn logout_target(
    s: &AppState,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<Option<String>, Response> {
    let Some(uri) = params.get("post_logout_redirect_uri") else {
        return Ok(None);
    };
    let oidc = s.oidc.clone();
    let id = params.get("client_id").cloned().unwrap_or_default();
    let client = blocking(move || oidc.clients().get(&id))
        .await
        .map_err(IntoResponse::into_response)?;
    if !client.is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri)) {
        return Err(notice(
            Page::BadRequest,
            "This sign-out request cannot be served",
            "Its post_logout_redirect_uri is not one registered for the client it names (client_id).",
        ));
    }
    let mut back = vec![];
    if let Some(st) = params.get("state") {
        back.push(("state", st.as_str()));
    }
    Ok(Some(with_query(uri, &back)))
}

#[utoipa::path(get, path = "/oauth2/logout", tag = "oidc", params(("client_id" = Option<String>, Query, description = "the client asking"), ("post_logout_redirect_uri" = Option<String>, Query, description = "one registered for it, exactly"), ("state" = Option<String>, Query, description = "returned as is")), responses((status = 200, description = "asks to confirm the sign-out", content_type = "text/html", body = String), (status = 400, description = "a return URI not registered for the client", content_type = "text/html", body = String), (status = 503, description = "unavailable here for a moment", content_type = "text/html", body = String)))]
pub async fn logout(
    State(s): State<AppState>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Ok(params) = pairs
        .map_err(|_| ())
        .and_then(|Query(p)| request::params(p).map_err(|_| ()))
    else {
        return notice(
            Page::BadRequest,
            "This sign-out request cannot be served",
            "Its parameters cannot be read.",
        );
    };
    if let Err(resp) = logout_target(&s, &params).await {
        return resp;
    }
    let Some((csrf, cookie)) = new_csrf(&s) else {
        return notice(
            Page::Unavailable,
            "Try again",
            "The page is unavailable; try again.",
        );
    };
    let mut hidden = String::new();
    for k in ["client_id", "post_logout_redirect_uri", "state"] {
        if let Some(v) = params.get(k) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            ));
        }
    }
    let body = format!(
        "<h1>Sign out</h1><p>Sign out of every platform of the group, in every region?</p>\
<form method=\"post\" action=\"/oauth2/logout\">{hidden}<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\">Sign out</button></form>"
    );
    page(Page::Shown, layout("Sign out", &body), &[cookie])
}

#[utoipa::path(post, path = "/oauth2/logout", tag = "oidc", request_body(content = crate::api::schema::LogoutForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "signed out: back to the client's post_logout_redirect_uri"), (status = 200, description = "signed out", content_type = "text/html", body = String), (status = 400, description = "a return URI not registered for the client", content_type = "text/html", body = String), (status = 401, description = "a form without its CSRF token: nothing ended", content_type = "text/html", body = String), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "unavailable here for a moment", content_type = "text/html", body = String)))]
pub async fn end_session(
    State(s): State<AppState>,
    headers: HeaderMap,
    pairs: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let pairs = match read_form(pairs, "This sign-out request cannot be served") {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let Ok(params) = request::params(pairs) else {
        return notice(
            Page::BadRequest,
            "This sign-out request cannot be served",
            "A field is given twice.",
        );
    };
    let target = match logout_target(&s, &params).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if !csrf_matches(&s, &headers, params.get("csrf")) {
        return notice(
            Page::Refused,
            "Not signed out",
            "The form expired: open the sign-out page again.",
        );
    }
    if let Some(value) = cookie(&headers, &cookie_name(&s, SESSION_COOKIE)) {
        let oidc = s.oidc.clone();
        if blocking(move || oidc.end_session(&value)).await.is_err() {
            return notice(
                Page::Unavailable,
                "Try again",
                "Signing out is unavailable here for a moment; try again.",
            );
        }
    }
    let cleared = [format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        cookie_name(&s, SESSION_COOKIE),
        secure(&s)
    )];
    match target {
        Some(uri) => redirect(&uri, &cleared),
        None => page(
            Page::Shown,
            layout(
                "Signed out",
                "<h1>Signed out</h1><p>You are signed out of every platform.</p>",
            ),
            &cleared,
        ),
    }
}
