//! Request validation: every problem in a request is found and reported together.
//!
//! Bodies are parsed to a JSON value first and then checked field by field, so that
//! unknown fields, missing fields, wrong types and bad values are all listed in one
//! answer (`{error, details: [{field, problem}]}`) instead of the first one only.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::accounts::error::Problem;
use crate::crypto::password::{SaltPosition, LEGACY_ALGORITHMS};

pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_PASSWORD_LEN: usize = 256;
pub const MAX_PROFILE_FIELDS: usize = 64;
pub const MAX_PROFILE_KEY_LEN: usize = 64;
pub const MAX_PROFILE_VALUE_LEN: usize = 1024;

/// Trims and lower-cases an email address and checks its form.
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("must not be empty".into());
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(format!("must be at most {MAX_EMAIL_LEN} characters"));
    }
    let valid = email_address::EmailAddress::parse_with_options(
        &email,
        email_address::Options::default()
            .without_display_text()
            .without_domain_literal(),
    )
    .is_ok();
    let domain_ok = email
        .rsplit_once('@')
        .is_some_and(|(_, d)| d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
    if !valid || !domain_ok || email.chars().any(char::is_whitespace) {
        return Err("is not a valid email address".into());
    }
    Ok(email)
}

/// Parses a phone number in international form and returns it as E.164.
pub fn normalize_phone(raw: &str) -> Result<String, String> {
    const HINT: &str = "must be a phone number in international format, e.g. +14155552671";
    let trimmed = raw.trim();
    if !trimmed.starts_with('+') || trimmed.len() > 32 {
        return Err(HINT.into());
    }
    let number = phonenumber::parse(None, trimmed).map_err(|_| HINT.to_string())?;
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    let digits = e164.len().saturating_sub(1);
    if !(8..=15).contains(&digits) {
        return Err(HINT.into());
    }
    Ok(e164)
}

/// Passwords rejected however long the minimum: the most common ones.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "passw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "qwerty123",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "letmein1",
    "admin123",
    "abc12345",
    "11111111",
    "00000000",
    "123123123",
    "1q2w3e4r",
    "1qaz2wsx",
    "qwertyui",
    "asdfghjk",
    "zxcvbnm1",
    "trustno1",
    "superman",
    "starwars",
    "dragon12",
    "master12",
    "monkey12",
    "changeme",
    "whatever",
    "computer",
    "internet",
    "michelle",
    "jennifer",
    "passpass",
];

/// Every reason `password` is too weak, empty when it is acceptable.
pub fn password_problems(password: &str, min_length: usize, email: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let chars = password.chars().count();
    if chars < min_length {
        out.push(format!("must be at least {min_length} characters"));
    }
    if chars > MAX_PASSWORD_LEN {
        out.push(format!("must be at most {MAX_PASSWORD_LEN} characters"));
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        out.push("is too common".into());
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if chars > 0 && distinct.len() <= 2 {
        out.push("uses too few different characters".into());
    }
    if let Some(email) = email {
        if !email.is_empty() && lower == email.to_lowercase() {
            out.push("must not be the email address".into());
        }
    }
    out
}

/// Checks one profile key and value.
fn profile_key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_PROFILE_KEY_LEN {
        return Some(format!("keys must be 1-{MAX_PROFILE_KEY_LEN} characters"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Some("keys may hold only letters, digits, '_', '-' and '.'".into());
    }
    None
}

/// A JSON object being checked, collecting problems as it goes.
pub struct Checker<'a> {
    prefix: String,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub fn new(prefix: impl Into<String>, problems: &'a mut Vec<Problem>) -> Checker<'a> {
        Checker {
            prefix: prefix.into(),
            problems,
        }
    }

    pub fn name(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    pub fn problem(&mut self, field: &str, problem: impl Into<String>) {
        let name = self.name(field);
        self.problems.push(Problem::new(name, problem));
    }

    /// The value as an object; `what` names it when it is not one.
    pub fn object<'v>(
        &mut self,
        value: &'v Value,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => {
                for key in map.keys() {
                    if !allowed.contains(&key.as_str()) {
                        self.problem(key, "is not a known field");
                    }
                }
                Some(map)
            }
            other => {
                let field = if self.prefix.is_empty() {
                    "body".to_string()
                } else {
                    self.prefix.clone()
                };
                self.problems.push(Problem::new(
                    field,
                    format!("must be a JSON object, found {}", kind(other)),
                ));
                None
            }
        }
    }

    /// A string field; `None` when absent, null (if `required` is false) or wrong.
    pub fn string<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        field: &str,
        required: bool,
    ) -> Option<&'v str> {
        match map.get(field) {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.problem(field, "is required");
                None
            }
            Some(other) => {
                self.problem(field, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    /// A required email, normalised.
    pub fn email(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        required: bool,
    ) -> Option<String> {
        let raw = self.string(map, field, required)?;
        match normalize_email(raw) {
            Ok(e) => Some(e),
            Err(p) => {
                self.problem(field, p);
                None
            }
        }
    }

    pub fn phone(&mut self, map: &Map<String, Value>, field: &str) -> Option<String> {
        let raw = self.string(map, field, false)?;
        match normalize_phone(raw) {
            Ok(p) => Some(p),
            Err(p) => {
                self.problem(field, p);
                None
            }
        }
    }

    /// A profile map. With `allow_null`, a null value means "remove this key".
    pub fn profile(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        allow_null: bool,
    ) -> Option<BTreeMap<String, Option<String>>> {
        let value = match map.get(field) {
            None | Some(Value::Null) => return None,
            Some(v) => v,
        };
        let Value::Object(obj) = value else {
            self.problem(
                field,
                format!("must be an object of strings, found {}", kind(value)),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        if obj.len() > MAX_PROFILE_FIELDS {
            self.problem(
                field,
                format!("must have at most {MAX_PROFILE_FIELDS} fields"),
            );
        }
        for (k, v) in obj {
            let name = format!("{field}.{k}");
            if let Some(p) = profile_key_problem(k) {
                self.problem(&name, p);
                continue;
            }
            match v {
                Value::String(s) if s.chars().count() > MAX_PROFILE_VALUE_LEN => {
                    self.problem(
                        &name,
                        format!("must be at most {MAX_PROFILE_VALUE_LEN} characters"),
                    );
                }
                Value::String(s) => {
                    out.insert(k.clone(), Some(s.clone()));
                }
                Value::Null if allow_null => {
                    out.insert(k.clone(), None);
                }
                other => self.problem(&name, format!("must be a string, found {}", kind(other))),
            }
        }
        Some(out)
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn finish<T>(value: Option<T>, problems: Vec<Problem>) -> Result<T, Vec<Problem>> {
    match value {
        Some(v) if problems.is_empty() => Ok(v),
        _ => Err(problems),
    }
}

/// `POST /v1/users`.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub phone: Option<String>,
    pub password: String,
    pub profile: BTreeMap<String, String>,
}

pub fn new_user(body: &Value, min_password: usize) -> Result<NewUser, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut c = Checker::new("", &mut problems);
    let out = c
        .object(body, &["email", "phone", "password", "profile"])
        .and_then(|m| {
            let email = c.email(m, "email", true);
            let phone = c.phone(m, "phone");
            let password = c.string(m, "password", true).map(str::to_string);
            if let Some(pw) = &password {
                for p in password_problems(pw, min_password, email.as_deref()) {
                    c.problem("password", p);
                }
            }
            let profile = c.profile(m, "profile", false).unwrap_or_default();
            Some(NewUser {
                email: email?,
                phone,
                password: password?,
                profile: profile
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect(),
            })
        });
    finish(out, problems)
}

/// A field a PATCH may set, clear or leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    Keep,
    Clear,
    Set(T),
}

/// `PATCH /v1/users/{id}`.
#[derive(Debug, Clone)]
pub struct UserPatch {
    pub email: Option<String>,
    pub phone: Change<String>,
    /// Keys to set (`Some`) or remove (`None`).
    pub profile: BTreeMap<String, Option<String>>,
}

pub fn user_patch(body: &Value) -> Result<UserPatch, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut c = Checker::new("", &mut problems);
    let out = c.object(body, &["email", "phone", "profile"]).map(|m| {
        if m.is_empty() {
            c.problem("body", "must change at least one of email, phone, profile");
        }
        if matches!(m.get("email"), Some(Value::Null)) {
            c.problem("email", "cannot be removed");
        }
        let email = c.email(m, "email", false);
        let phone = match m.get("phone") {
            None => Change::Keep,
            Some(Value::Null) => Change::Clear,
            Some(_) => c.phone(m, "phone").map(Change::Set).unwrap_or(Change::Keep),
        };
        let profile = c.profile(m, "profile", true).unwrap_or_default();
        UserPatch {
            email,
            phone,
            profile,
        }
    });
    finish(out, problems)
}

/// `PUT /v1/users/{id}/password`.
pub fn new_password(body: &Value, min_password: usize) -> Result<String, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut c = Checker::new("", &mut problems);
    let out = c.object(body, &["password"]).and_then(|m| {
        let pw = c.string(m, "password", true)?;
        for p in password_problems(pw, min_password, None) {
            c.problem("password", p);
        }
        Some(pw.to_string())
    });
    finish(out, problems)
}

/// Account states a caller may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettableStatus {
    Active,
    Locked,
    Disabled,
}

pub fn new_status(body: &Value) -> Result<SettableStatus, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut c = Checker::new("", &mut problems);
    let out = c
        .object(body, &["status"])
        .and_then(|m| match c.string(m, "status", true)? {
            "active" => Some(SettableStatus::Active),
            "locked" => Some(SettableStatus::Locked),
            "disabled" => Some(SettableStatus::Disabled),
            _ => {
                c.problem("status", "must be one of active, locked, disabled");
                None
            }
        });
    finish(out, problems)
}

/// `POST /v1/login`. The login is kept raw: an unparseable one is just unknown.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub login: String,
    pub password: String,
    /// The second factor, for an account that has one.
    pub factor: Option<SecondFactor>,
}

/// What a login presents beside the password, for an account with a second factor
/// ([`crate::accounts::users::factors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondFactor {
    /// The authenticator's current six-digit code.
    Totp(String),
    /// One of the account's recovery codes.
    RecoveryCode(String),
}

/// The longest second factor taken (a recovery code with dashes is 14 characters).
const MAX_FACTOR_LEN: usize = 32;

/// `{login, password, totp?, recovery_code?}`: at most one second factor.
pub fn login(body: &Value) -> Result<LoginRequest, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut c = Checker::new("", &mut problems);
    let out = c
        .object(body, &["login", "password", "totp", "recovery_code"])
        .and_then(|m| {
            let login = c.string(m, "login", true);
            let password = c.string(m, "password", true);
            if password.is_some_and(|p| p.chars().count() > MAX_PASSWORD_LEN) {
                c.problem(
                    "password",
                    format!("must be at most {MAX_PASSWORD_LEN} characters"),
                );
            }
            if login.is_some_and(|l| l.len() > MAX_EMAIL_LEN) {
                c.problem(
                    "login",
                    format!("must be at most {MAX_EMAIL_LEN} characters"),
                );
            }
            let mut factor = None;
            for field in ["totp", "recovery_code"] {
                let Some(v) = c.string(m, field, false) else {
                    continue;
                };
                if v.is_empty() || v.len() > MAX_FACTOR_LEN {
                    c.problem(field, format!("must be 1 to {MAX_FACTOR_LEN} characters"));
                } else if factor.is_some() {
                    c.problem(field, "give one second factor: totp or recovery_code");
                } else if field == "totp" {
                    factor = Some(SecondFactor::Totp(v.to_string()));
                } else {
                    factor = Some(SecondFactor::RecoveryCode(v.to_string()));
                }
            }
            Some(LoginRequest {
                login: login?.to_string(),
                password: password?.to_string(),
                factor,
            })
        });
    finish(out, problems)
}

/// One legacy hash to import.
#[derive(Debug, Clone)]
pub struct LegacyHashInput {
    pub algorithm: String,
    pub hash: String,
    pub salt: Option<String>,
    pub salt_position: SaltPosition,
}

/// One item of `POST /v1/users/import`.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub email: String,
    pub phone: Option<String>,
    pub profile: BTreeMap<String, String>,
    pub legacy_hash: LegacyHashInput,
    pub source: String,
}

/// The whole import is checked before anything is written: one bad item refuses
/// the request, with every problem of every item listed (`[3].email`).
pub fn import(body: &Value, max_items: usize) -> Result<Vec<ImportItem>, Vec<Problem>> {
    let mut problems = Vec::new();
    let Value::Array(items) = body else {
        problems.push(Problem::new(
            "body",
            format!("must be a JSON array of users, found {}", kind(body)),
        ));
        return Err(problems);
    };
    if items.is_empty() {
        problems.push(Problem::new("body", "must hold at least one user"));
    }
    if items.len() > max_items {
        problems.push(Problem::new(
            "body",
            format!("must hold at most {max_items} users"),
        ));
        return Err(problems);
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut c = Checker::new(format!("[{i}]"), &mut problems);
        let Some(m) = c.object(
            item,
            &["email", "phone", "profile", "legacy_hash", "source"],
        ) else {
            continue;
        };
        let email = c.email(m, "email", true);
        let phone = c.phone(m, "phone");
        let profile = c.profile(m, "profile", false).unwrap_or_default();
        let source = c.string(m, "source", true).map(str::to_string);
        if source
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.len() > 128)
        {
            c.problem("source", "must be 1-128 characters");
        }
        let legacy = match m.get("legacy_hash") {
            None | Some(Value::Null) => {
                c.problem("legacy_hash", "is required");
                None
            }
            Some(v) => {
                let mut lc = Checker::new(c.name("legacy_hash"), c.problems);
                lc.object(v, &["algorithm", "hash", "salt", "salt_position"])
                    .and_then(|lm| {
                        let algorithm = lc.string(lm, "algorithm", true);
                        let hash = lc.string(lm, "hash", true);
                        let salt = lc.string(lm, "salt", false);
                        let position = match lc.string(lm, "salt_position", false) {
                            None | Some("prefix") => Some(SaltPosition::Prefix),
                            Some("suffix") => Some(SaltPosition::Suffix),
                            Some(_) => {
                                lc.problem("salt_position", "must be prefix or suffix");
                                None
                            }
                        };
                        let algorithm = algorithm.map(|a| {
                            crate::crypto::password::canonical_legacy_algorithm(a).unwrap_or(a)
                        });
                        if let (Some(a), Some(h)) = (algorithm, hash) {
                            if !LEGACY_ALGORITHMS.contains(&a) {
                                lc.problem(
                                    "algorithm",
                                    format!("must be one of {}", LEGACY_ALGORITHMS.join(", ")),
                                );
                            } else if let Err(p) = crate::crypto::password::check_legacy(a, h, salt)
                            {
                                lc.problem("hash", p);
                            }
                        }
                        if salt.is_some_and(|s| s.len() > 256) {
                            lc.problem("salt", "must be at most 256 characters");
                        }
                        Some(LegacyHashInput {
                            algorithm: algorithm?.to_string(),
                            hash: hash?.to_string(),
                            salt: salt.map(str::to_string),
                            salt_position: position?,
                        })
                    })
            }
        };
        if let (Some(email), Some(legacy_hash), Some(source)) = (email, legacy, source) {
            out.push(ImportItem {
                email,
                phone,
                profile: profile
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect(),
                legacy_hash,
                source,
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalize_email("  Ada.Lovelace@Example.COM ").unwrap(),
            "ada.lovelace@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(
            normalize_phone("+1 (415) 555-2671").unwrap(),
            "+14155552671"
        );
        assert_eq!(
            normalize_phone("+44 20 7946 0958").unwrap(),
            "+442079460958"
        );
        for bad in ["4155552671", "+", "+1", "phone", "+999 123"] {
            assert!(normalize_phone(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn weak_passwords_get_every_reason() {
        assert!(password_problems("correct horse battery", 8, None).is_empty());
        let p = password_problems("aaa", 8, None);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(password_problems("Password123", 8, None).contains(&"is too common".to_string()));
        assert!(!password_problems("ada@example.com", 8, Some("ada@example.com")).is_empty());
    }

    #[test]
    fn every_problem_of_a_create_is_listed() {
        let body = json!({"email": "nope", "phone": 12, "password": "short", "profile": {"a b": "x", "ok": 3}, "extra": true});
        let problems = new_user(&body, 8).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "extra",
            "email",
            "phone",
            "password",
            "profile.a b",
            "profile.ok",
        ] {
            assert!(fields.contains(&f), "{f} missing from {problems:?}");
        }
        let missing = new_user(&json!({}), 8).unwrap_err();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(new_user(&json!([1]), 8).unwrap_err()[0].field == "body");
    }

    #[test]
    fn import_items_are_checked_with_their_index() {
        let body = json!([
            {"email": "a@example.com", "legacy_hash": {"algorithm": "md5", "hash": "5f4dcc3b5aa765d61d8327deb882cf99"}, "source": "shop"},
            {"email": "bad", "legacy_hash": {"algorithm": "rot13", "hash": "x"}, "source": ""},
        ]);
        let problems = import(&body, 10).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["[1].email", "[1].source", "[1].legacy_hash.algorithm"],
            "{problems:?}"
        );
        assert_eq!(import(&json!([body[0].clone()]), 10).unwrap().len(), 1);
        let spelled = json!([{"email": "a@example.com", "source": "shop",
            "legacy_hash": {"algorithm": "SHA_256", "hash": "a".repeat(64), "salt": null}}]);
        assert_eq!(
            import(&spelled, 10).unwrap()[0].legacy_hash.algorithm,
            "sha256"
        );
    }

    #[test]
    fn patch_distinguishes_keep_clear_and_set() {
        let p = user_patch(&json!({"phone": null, "profile": {"nick": null, "city": "Lagos"}}))
            .unwrap();
        assert_eq!(p.phone, Change::Clear);
        assert_eq!(p.profile.get("nick"), Some(&None));
        assert_eq!(p.profile.get("city"), Some(&Some("Lagos".into())));
        assert!(user_patch(&json!({})).is_err());
        assert!(user_patch(&json!({"email": null})).is_err());
    }
}
