//! `/openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, generated from the
//! handlers' `#[utoipa::path]` attributes and the shapes in `schema`.
//!
//! Left out: `/v1/admin/faults`, which exists only on nodes started with fault
//! injection enabled (tests and the chaos harness).

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::handlers::{account_tokens, admin, factors, health, oauth, peers, sessions, users};
use crate::api::schema;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "authsync",
        description = "One account and one login across regions: every region accepts \
                       every request, and changes replicate to the others.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        users::create_user,
        users::find_user,
        users::get_user,
        users::patch_user,
        users::delete_user,
        users::put_password,
        users::put_status,
        users::import,
        sessions::login,
        sessions::refresh,
        sessions::logout,
        sessions::jwks,
        health::healthz,
        health::readyz,
        health::metrics_text,
        admin::digest,
        admin::list_retry,
        admin::list_dead,
        admin::show_dead,
        admin::replay_dead,
        admin::drop_dead,
        admin::list_api_keys,
        admin::add_api_key,
        admin::revoke_api_key,
        admin::rotate_signing_key,
        admin::key_usage,
        account_tokens::mint,
        account_tokens::redeem,
        account_tokens::internal_redeem,
        factors::get_factors,
        factors::enrol_totp,
        factors::confirm_totp,
        factors::remove_totp,
        factors::new_recovery_codes,
        peers::internal_digests,
        peers::internal_bucket,
        peers::internal_records,
        peers::internal_exchange,
        oauth::discovery,
        oauth::authorize,
        oauth::sign_in,
        oauth::token,
        oauth::revoke,
        oauth::introspect,
        oauth::userinfo,
        oauth::userinfo_post,
        oauth::logout,
        oauth::end_session,
        oauth::add_client,
        oauth::list_clients,
        oauth::remove_client,
    ),
    components(schemas(schema::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "users", description = "Accounts: create, read, look up, change, erase, import."),
        (name = "sessions", description = "Logins, refresh tokens and the keys tokens verify with."),
        (name = "recovery", description = "Password reset and address verification: single-use tokens sent through the delivery hook."),
        (name = "factors", description = "Second factors of an account: a TOTP authenticator and its recovery codes."),
        (name = "admin", description = "Operators: replication queues, API keys, key usage (scope admin)."),
        (name = "health", description = "Probes and metrics, without an API key."),
        (name = "internal", description = "Between regions only, signed with the region's key."),
        (name = "oidc", description = "The OpenID Connect provider: discovery, the hosted sign-in, tokens, userinfo."),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer <key>`. Reads need `read`, \
                         changes `write`, `/v1/admin/` `admin`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from `/oauth2/token`: `Authorization: Bearer <token>`.",
                    ))
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "peer",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-authsync-peer",
                "region:ms:nonce:signer:signature, by the requesting region's signing key",
            ))),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}
