//! Opaque identifiers: 1–64 characters from `[A-Za-z0-9_-]`, safe in URLs, NATS
//! subjects and metric-free logs. They never carry personal data.

pub const MAX_ID_LEN: usize = 64;

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_subject_safe() {
        assert!(is_valid_id("grp_anxiety-01"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a*"));
        assert!(!is_valid_id("é"));
    }
}
