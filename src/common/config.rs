//! What every component's config section check returns: the problem, naming the key
//! (`http.listen`, `peers[1].region`). The node's config gathers the sections and
//! turns an [`Invalid`] into its own error.

/// A config value refused: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub problem: String,
}

pub fn invalid(key: &str, problem: impl Into<String>) -> Invalid {
    Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}
