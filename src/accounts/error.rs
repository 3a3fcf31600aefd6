//! The accounts layer's errors and outcomes, below every other accounts file so that
//! entries, lockout, API keys, users and tokens share them without importing each
//! other. Which HTTP status each becomes is decided in `api/error.rs`, not here.

use serde::Serialize;
use uuid::Uuid;

use crate::common::hlc::ClockSkew;
use crate::crypto::password::PasswordError;
use crate::crypto::primitives::CryptoError;
use crate::storage::store::StoreError;

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub field: String,
    pub problem: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user not found")]
    NotFound,
    #[error("invalid request")]
    Invalid(Vec<Problem>),
    #[error("already taken")]
    Conflict(Vec<Problem>),
    #[error("account was merged into {0}")]
    Merged(Uuid),
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A failed login, counted: the next attempt must wait `retry_after_ms` (0: none).
    #[error("invalid credentials")]
    LoginFailed { retry_after_ms: u64 },
    /// Too soon after repeated failures: refused without checking the password.
    #[error("too many failed logins; retry in {retry_after_ms} ms")]
    TooManyAttempts { retry_after_ms: u64 },
    #[error("account is {0}")]
    Forbidden(&'static str),
    /// The password was right at credentials `credentials_ms`; the account has a
    /// second factor and none was given.
    #[error("a second factor is required")]
    SecondFactorRequired { user: Uuid, credentials_ms: u64 },
    /// A second factor that is wrong, or used already (inside the user service).
    #[error("invalid second factor")]
    InvalidSecondFactor,
    /// A wrong second factor, counted as a failed login: the next attempt must wait
    /// `retry_after_ms` (0: none).
    #[error("invalid second factor")]
    SecondFactorFailed { retry_after_ms: u64 },
    /// Integrity failure: deliberately says nothing more.
    #[error("record is unreadable")]
    Unreadable,
    #[error("no key to open this record in region {0} yet")]
    KeyUnavailable(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("crypto: {0}")]
    Crypto(CryptoError),
    #[error("password hashing: {0}")]
    Password(#[from] PasswordError),
}

/// What applying a replicated change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Newer than the stored version: stored.
    Applied,
    /// Stored, and it collided with another account over an email or phone: one was
    /// merged into the other.
    Merged,
    /// Not newer than the stored version (older, equal, a duplicate): nothing changed.
    Skipped,
}

/// Why a replicated change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event cannot ever be applied as it is.
    #[error("malformed event: {0}")]
    Malformed(&'static str),
    /// The record's MAC does not verify: altered in transit or at the source.
    #[error("event failed its integrity check")]
    Integrity,
    /// From a clock too far ahead; may be applied once local time catches up.
    #[error("refused: {0}")]
    Skew(#[from] ClockSkew),
    /// A storage or key problem here; may succeed later.
    #[error(transparent)]
    User(#[from] UserError),
    /// A failure switched on by fault injection.
    #[error("injected failure: {0}")]
    Injected(&'static str),
}

impl ApplyError {
    /// The reason label parked events and metrics carry.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Malformed(_) => "malformed",
            ApplyError::Integrity => "integrity",
            ApplyError::Skew(_) => "clock_skew",
            ApplyError::Injected(_) => "injected",
            ApplyError::User(UserError::KeyUnavailable(_)) => "key_unavailable",
            ApplyError::User(UserError::Conflict(_)) => "conflict",
            ApplyError::User(_) => "storage",
        }
    }

    /// Whether trying again can ever help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ApplyError::Malformed(_) | ApplyError::Integrity)
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::User(UserError::Store(e))
    }
}
