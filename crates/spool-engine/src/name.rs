//! Queue and topic names: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`. Names appear in file-free places
//! only (log entries, metrics labels, URLs), and this rule keeps them safe in all of them.

use crate::error::{Error, Result};

/// The longest name allowed, in bytes.
pub const NAME_LEN_MAX: usize = 128;

/// Checks a queue or topic name.
pub fn validate(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.chars().take(NAME_LEN_MAX + 8).collect(),
            reason,
        })
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > NAME_LEN_MAX {
        return bad("it is longer than 128 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("it contains a character other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "Z9", "jobs.dlq", "a_b-c.d", &"x".repeat(128)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        for bad in ["", ".a", "-a", "_a", "a b", "a/b", "é", &"x".repeat(129)] {
            let err = validate(bad).unwrap_err().to_string();
            assert!(err.contains("invalid name"), "{bad}: {err}");
        }
    }
}
