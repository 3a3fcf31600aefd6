//! The shapes of the HTTP API's bodies, as `/openapi.json` describes them.
//!
//! Request bodies are checked field by field by `accounts::input` (so that every
//! problem is listed at once, with its field); these types say what those checks
//! accept, for clients and for fuzzers. Responses the handlers build as JSON are
//! described the same way. Each type here matches one shape a handler reads or writes;
//! `tests/openapi.rs` checks the document against the running API.

// Read by the OpenAPI generator only: the handlers parse and build the JSON.
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::ToSchema;
use uuid::Uuid;

/// Every error: a code, and what was wrong with which field.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// `invalid_request`, `malformed_json`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `invalid_credentials`, `too_many_attempts`, `rate_limited`,
    /// `overloaded`, `request_timeout`, `key_unavailable`, … (README, "Errors").
    error: String,
    details: Vec<ProblemJson>,
    /// With 429 and 503: when to try again (also in `Retry-After`).
    retry_after_s: Option<u64>,
}

#[derive(ToSchema)]
pub struct ProblemJson {
    field: String,
    problem: String,
}

/// A change's version: hybrid logical clock time and the region that made it.
#[derive(ToSchema)]
pub struct VersionJson {
    ts: u64,
    region: String,
}

/// What a create or change returns.
#[derive(ToSchema)]
pub struct Written {
    id: Uuid,
    version: VersionJson,
}

#[derive(ToSchema)]
pub struct NewUser {
    #[schema(format = "email", max_length = 254)]
    email: String,
    /// E.164, or a number with its country code.
    phone: Option<String>,
    /// At least `passwords.min_length` characters (12 by default), not a common one.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// At most 64 fields of at most 1,024 characters.
    profile: Option<BTreeMap<String, String>>,
}

#[derive(ToSchema)]
pub struct UserPatch {
    #[schema(format = "email", max_length = 254)]
    email: Option<String>,
    phone: Option<String>,
    /// Fields to set; a null removes the field.
    profile: Option<BTreeMap<String, Option<String>>>,
}

#[derive(ToSchema)]
pub struct NewPassword {
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SettableStatus {
    Active,
    Locked,
    Disabled,
}

#[derive(ToSchema)]
pub struct NewStatus {
    status: SettableStatus,
}

#[derive(ToSchema)]
pub struct StatusChanged {
    id: Uuid,
    status: SettableStatus,
    version: VersionJson,
}

/// An account as it is shown: the personal fields decrypted.
#[derive(ToSchema)]
pub struct User {
    id: Uuid,
    email: String,
    phone: Option<String>,
    /// `active`, `locked`, `disabled` or `merged`.
    status: String,
    profile: BTreeMap<String, String>,
    /// Proven by a verification or reset token sent to it.
    email_verified: bool,
    phone_verified: bool,
    version: VersionJson,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// The account this one was merged into (status `merged`).
    #[schema(required = false)]
    merged_into: Option<Uuid>,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SaltPosition {
    Prefix,
    Suffix,
}

#[derive(ToSchema)]
pub struct LegacyHash {
    /// bcrypt, pbkdf2-sha256, argon2, md5, sha1, sha256, sha512 (README, "Importing").
    algorithm: String,
    hash: String,
    #[schema(max_length = 256)]
    salt: Option<String>,
    salt_position: Option<SaltPosition>,
}

/// One legacy account to import with its old password hash.
#[derive(ToSchema)]
pub struct ImportItem {
    #[schema(format = "email", max_length = 254)]
    email: String,
    phone: Option<String>,
    profile: Option<BTreeMap<String, String>>,
    legacy_hash: LegacyHash,
    /// The platform it came from.
    #[schema(min_length = 1, max_length = 128)]
    source: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ImportOutcome {
    Created,
    Merged,
}

#[derive(ToSchema)]
pub struct ImportResult {
    index: u64,
    id: Uuid,
    outcome: ImportOutcome,
    /// The same as `outcome`.
    status: ImportOutcome,
    legacy_hash_kept: bool,
}

#[derive(ToSchema)]
pub struct Login {
    /// An email or a phone number.
    #[schema(min_length = 1, max_length = 320)]
    login: String,
    #[schema(min_length = 1, max_length = 1024)]
    password: String,
    /// For an account with a second factor: its authenticator's current code...
    #[schema(required = false, max_length = 32)]
    totp: Option<String>,
    /// ...or one of its recovery codes (one of the two).
    #[schema(required = false, max_length = 32)]
    recovery_code: Option<String>,
}

/// `{purpose}`: what the token is for.
#[derive(ToSchema)]
pub struct NewAccountToken {
    /// reset, verify_email or verify_phone.
    purpose: String,
}

/// A token made and handed to the delivery hook.
#[derive(ToSchema)]
pub struct AccountTokenSent {
    purpose: String,
    expires_at_ms: u64,
    /// webhook or log.
    delivery: String,
}

/// A token to redeem: a reset with the new password.
#[derive(ToSchema)]
pub struct RedeemAccountToken {
    #[schema(max_length = 1024)]
    token: String,
    /// reset, verify_email or verify_phone: the token's own.
    purpose: String,
    /// For a reset.
    #[schema(required = false, max_length = 1024)]
    password: Option<String>,
}

/// What a redeemed token did.
#[derive(ToSchema)]
pub struct AccountTokenRedeemed {
    user_id: String,
    purpose: String,
}

/// An account's second factors (never a secret).
#[derive(ToSchema)]
pub struct FactorsView {
    totp: bool,
    /// Enrolled, not confirmed yet.
    totp_pending: bool,
    recovery_codes_left: u64,
}

/// A TOTP enrolment: the seed for the authenticator app.
#[derive(ToSchema)]
pub struct TotpEnrolment {
    /// Base32, as apps take it typed in.
    secret: String,
    /// `otpauth://totp/...`: what a QR code carries to the app.
    otpauth_uri: String,
    digits: u32,
    period_s: u64,
}

/// `{code}`: the authenticator's current six-digit code.
#[derive(ToSchema)]
pub struct TotpCode {
    #[schema(max_length = 16)]
    code: String,
}

/// Recovery codes, shown this once: each signs in once in place of a TOTP code.
#[derive(ToSchema)]
pub struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

#[derive(ToSchema)]
pub struct RefreshToken {
    #[schema(min_length = 1, max_length = 512)]
    refresh_token: String,
}

#[derive(ToSchema)]
pub struct Tokens {
    user_id: Uuid,
    /// An Ed25519 JWT (EdDSA), checked against `/.well-known/jwks.json`.
    access_token: String,
    /// `Bearer`.
    token_type: String,
    expires_in: u64,
    refresh_token: String,
}

#[derive(ToSchema)]
pub struct Jwk {
    kty: String,
    crv: String,
    x: String,
    kid: String,
    #[schema(rename = "use")]
    use_: String,
    alg: String,
}

#[derive(ToSchema)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(ToSchema)]
pub struct Health {
    status: String,
    #[schema(required = false)]
    region: Option<String>,
}

#[derive(ToSchema)]
pub struct Digest {
    count: u64,
    digest: String,
    region: String,
    unkeyed: u64,
}

#[derive(ToSchema)]
pub struct Attempt {
    at_ms: u64,
    error: String,
}

/// A parked event (retry queue or dead letter), without its payload.
#[derive(ToSchema)]
pub struct ParkedEvent {
    id: u64,
    event_id: String,
    source_region: String,
    topic: String,
    partition: i32,
    offset: i64,
    record_id: Option<String>,
    version: Option<VersionJson>,
    reason: String,
    attempts: u32,
    first_failed_ms: u64,
    next_attempt_ms: Option<u64>,
    dead_at_ms: Option<u64>,
    last_error: String,
    bytes: u64,
    history: Vec<Attempt>,
}

#[derive(ToSchema)]
pub struct RetryList {
    count: u64,
    bytes: u64,
    max_entries: u64,
    max_bytes: u64,
    entries: Vec<ParkedEvent>,
    /// Pass as `after` for the next page; null on the last.
    next_after: Option<u64>,
}

#[derive(ToSchema)]
pub struct DeadList {
    count: u64,
    entries: Vec<ParkedEvent>,
    next_after: Option<u64>,
}

#[derive(ToSchema)]
pub struct Replayed {
    id: u64,
    /// `applied`, `merged` or `skipped`.
    outcome: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

#[derive(ToSchema)]
pub struct NewApiKey {
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    scopes: Vec<Scope>,
}

#[derive(ToSchema)]
pub struct ApiKey {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    /// `config` or `runtime`.
    source: String,
    #[schema(required = false)]
    created_at_ms: Option<u64>,
    #[schema(required = false)]
    revoked_at_ms: Option<u64>,
}

/// A new key: shown once.
#[derive(ToSchema)]
pub struct AddedApiKey {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    source: String,
    created_at_ms: Option<u64>,
    key: String,
}

#[derive(ToSchema)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

#[derive(ToSchema)]
pub struct SigningKeyPublished {
    kid: String,
    signs_from_ms: u64,
}

#[derive(ToSchema)]
pub struct KeyVersionUsage {
    version: u32,
    records: u64,
    user_keys: u64,
    signing_keys: u64,
}

#[derive(ToSchema)]
pub struct KeyUsage {
    region: String,
    active: u32,
    versions: Vec<KeyVersionUsage>,
}

#[derive(ToSchema)]
pub struct BucketDigest {
    count: u64,
    digest: String,
}

#[derive(ToSchema)]
pub struct Digests {
    region: String,
    buckets: Vec<BucketDigest>,
}

#[derive(ToSchema)]
pub struct Stamp {
    id: Uuid,
    physical_ms: u64,
    logical: u32,
    region: String,
    tombstone: bool,
    wraps: u32,
}

#[derive(ToSchema)]
pub struct Stamps {
    stamps: Vec<Stamp>,
}

#[derive(ToSchema)]
pub struct FetchRequest {
    #[schema(max_items = 500)]
    ids: Vec<Uuid>,
}

/// Records and user keys as stored (protobuf, base64), each signed by its writer.
#[derive(ToSchema)]
pub struct FetchResponse {
    records: Vec<String>,
    user_keys: Vec<String>,
}

/// A client's registration (`POST /v1/admin/oauth-clients`).
#[derive(ToSchema)]
pub struct NewOAuthClient {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// 1 to 10 absolute URLs, `https` (or `http` to localhost, 127.0.0.1 or [::1]),
    /// without fragment; matched exactly.
    redirect_uris: Vec<String>,
    #[schema(required = false)]
    post_logout_redirect_uris: Option<Vec<String>>,
    /// From openid, email, phone, profile, offline_access; openid required. Default
    /// openid, email, profile.
    #[schema(required = false)]
    scopes: Option<Vec<String>>,
    /// No secret: PKCE alone (an app that cannot keep one).
    #[schema(required = false)]
    public: Option<bool>,
    /// The group's own platform: no consent asked.
    #[schema(required = false)]
    first_party: Option<bool>,
    /// client_secret_basic (the default), client_secret_post, private_key_jwt, or
    /// none (the same as `public`).
    #[schema(required = false)]
    token_endpoint_auth_method: Option<String>,
    /// EdDSA (the default) or ES256.
    #[schema(required = false)]
    id_token_signed_response_alg: Option<String>,
    /// For private_key_jwt, and only for it: the client's public keys, a JWK set of 1
    /// to 4 Ed25519, P-256 or RSA (2048 bits or more) keys, each with a unique kid
    /// when there are several.
    #[schema(required = false, value_type = Option<Object>)]
    jwks: Option<serde_json::Value>,
}

/// A registered client, never with its secret except in the answer to its
/// registration.
#[derive(ToSchema)]
pub struct OAuthClient {
    client_id: String,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    scopes: Vec<String>,
    public: bool,
    first_party: bool,
    /// client_secret_basic or client_secret_post (either is taken), private_key_jwt,
    /// or none.
    token_endpoint_auth_method: String,
    /// EdDSA or ES256.
    id_token_signed_response_alg: String,
    /// private_key_jwt: the client's public keys; null otherwise.
    #[schema(value_type = Option<Object>)]
    jwks: Option<serde_json::Value>,
    created_ms: u64,
    /// In the answer to the registration only, shown this once.
    #[schema(required = false)]
    client_secret: Option<String>,
}

#[derive(ToSchema)]
pub struct OAuthClients {
    clients: Vec<OAuthClient>,
}

/// A token request (`application/x-www-form-urlencoded`), RFC 6749.
#[derive(ToSchema)]
pub struct TokenRequest {
    /// authorization_code or refresh_token.
    grant_type: String,
    #[schema(required = false)]
    code: Option<String>,
    #[schema(required = false)]
    redirect_uri: Option<String>,
    /// PKCE (RFC 7636): 43 to 128 characters.
    #[schema(required = false)]
    code_verifier: Option<String>,
    #[schema(required = false)]
    refresh_token: Option<String>,
    /// With client_secret_post, or alone for a public client.
    #[schema(required = false)]
    client_id: Option<String>,
    /// private_key_jwt: urn:ietf:params:oauth:client-assertion-type:jwt-bearer.
    #[schema(required = false)]
    client_assertion_type: Option<String>,
    /// private_key_jwt: a JWT signed with one of the client's keys (iss and sub the
    /// client id, aud this issuer or its endpoint, exp at most an hour ahead, jti
    /// used once).
    #[schema(required = false)]
    client_assertion: Option<String>,
    #[schema(required = false)]
    client_secret: Option<String>,
}

/// A code exchange a peer region sends on to the region that issued the code, for the
/// client it authenticated.
#[derive(ToSchema)]
pub struct ForwardedExchange {
    client_id: String,
    /// `ac1.<this region>.<secret>`.
    code: String,
    #[schema(required = false)]
    redirect_uri: Option<String>,
    #[schema(required = false)]
    code_verifier: Option<String>,
}

/// Tokens from `/oauth2/token`.
#[derive(ToSchema)]
pub struct OAuthTokens {
    access_token: String,
    /// Bearer.
    token_type: String,
    expires_in: u64,
    scope: String,
    #[schema(required = false)]
    refresh_token: Option<String>,
    /// For a code exchange: signed with EdDSA (or ES256, as the client registered),
    /// verified with the JWKS.
    #[schema(required = false)]
    id_token: Option<String>,
}

/// An OAuth error (RFC 6749 §5.2).
#[derive(ToSchema)]
pub struct OAuthError {
    /// invalid_request, invalid_client, invalid_grant, unsupported_grant_type,
    /// server_error.
    error: String,
    error_description: String,
}

/// The claims of `/oauth2/userinfo`, by the token's scopes.
#[derive(ToSchema)]
pub struct UserInfo {
    sub: String,
    #[schema(required = false)]
    email: Option<String>,
    #[schema(required = false)]
    email_verified: Option<bool>,
    #[schema(required = false)]
    phone_number: Option<String>,
    #[schema(required = false)]
    phone_number_verified: Option<bool>,
    #[schema(required = false)]
    name: Option<String>,
}

/// The provider's discovery document (OpenID Connect Discovery 1.0).
#[derive(ToSchema)]
pub struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    jwks_uri: String,
    response_types_supported: Vec<String>,
    response_modes_supported: Vec<String>,
    grant_types_supported: Vec<String>,
    subject_types_supported: Vec<String>,
    id_token_signing_alg_values_supported: Vec<String>,
    scopes_supported: Vec<String>,
    token_endpoint_auth_methods_supported: Vec<String>,
    token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    revocation_endpoint_auth_methods_supported: Vec<String>,
    introspection_endpoint_auth_methods_supported: Vec<String>,
    code_challenge_methods_supported: Vec<String>,
    claims_supported: Vec<String>,
    prompt_values_supported: Vec<String>,
    authorization_response_iss_parameter_supported: bool,
}

/// The hosted sign-in form (`application/x-www-form-urlencoded`): the authorization
/// request's parameters again, and these.
#[derive(ToSchema)]
pub struct SignInForm {
    login: String,
    password: String,
    /// The value of the page's hidden field, matched against its cookie.
    csrf: String,
    client_id: String,
    redirect_uri: String,
    response_type: String,
    scope: String,
    code_challenge: String,
    code_challenge_method: String,
    #[schema(required = false)]
    state: Option<String>,
    #[schema(required = false)]
    nonce: Option<String>,
}

/// The sign-out form (`application/x-www-form-urlencoded`).
#[derive(ToSchema)]
pub struct LogoutForm {
    /// The value of the page's hidden field, matched against its cookie.
    csrf: String,
    #[schema(required = false)]
    client_id: Option<String>,
    #[schema(required = false)]
    post_logout_redirect_uri: Option<String>,
    #[schema(required = false)]
    state: Option<String>,
}

/// A revocation or introspection request (`application/x-www-form-urlencoded`), with
/// the client's authentication as at the token endpoint.
#[derive(ToSchema)]
pub struct TokenOnly {
    token: String,
    /// access_token or refresh_token; only a hint.
    #[schema(required = false)]
    token_type_hint: Option<String>,
    #[schema(required = false)]
    client_id: Option<String>,
    #[schema(required = false)]
    client_secret: Option<String>,
    /// private_key_jwt, as at the token endpoint.
    #[schema(required = false)]
    client_assertion_type: Option<String>,
    #[schema(required = false)]
    client_assertion: Option<String>,
}

/// RFC 7662's answer: `active`, and for a live token what it is.
#[derive(ToSchema)]
pub struct Introspection {
    active: bool,
    #[schema(required = false)]
    token_type: Option<String>,
    #[schema(required = false)]
    client_id: Option<String>,
    #[schema(required = false)]
    scope: Option<String>,
    #[schema(required = false)]
    sub: Option<String>,
    #[schema(required = false)]
    exp: Option<u64>,
    #[schema(required = false)]
    iat: Option<u64>,
    #[schema(required = false)]
    iss: Option<String>,
    #[schema(required = false)]
    aud: Option<String>,
    #[schema(required = false)]
    jti: Option<String>,
}
