//! Region names: the one rule for what a region may be called.

/// Region names are used in topic names, key ids and metric labels.
pub fn check_region_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a region name (1-32 of a-z, 0-9 and '-', not starting or ending with '-')"
        ))
    }
}
