//! The name a filter is registered under: 1 to 64 bytes of `[A-Za-z0-9_.-]`.
//!
//! Names appear in URLs (`?filter=us_private`), command lines and metric labels, so the
//! alphabet needs no quoting anywhere; a value of this type has always been checked.

use std::fmt;

use crate::model::{check_len, InvalidInput};

/// Longest accepted filter name, in bytes.
pub const MAX_FILTER_NAME_LEN: usize = 64;

/// A validated filter name, e.g. `us_private`. Compared exactly (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilterName(String);

impl FilterName {
    /// Validates a name: 1 to 64 bytes, each one of `[A-Za-z0-9_.-]`.
    pub fn new(name: &str) -> Result<Self, InvalidInput> {
        const FIELD: &str = "filter_name";
        check_len(FIELD, name.len(), MAX_FILTER_NAME_LEN)?;
        if let Some((i, c)) = name
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(InvalidInput::Malformed {
                field: FIELD,
                reason: format!("{c:?} at byte {i} is outside [A-Za-z0-9_.-]"),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FilterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for FilterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for FilterName {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_name_accepts_its_alphabet_up_to_64_bytes() {
        for ok in ["us_private", "A.b-c_9", "x", &"n".repeat(64)] {
            let name = FilterName::new(ok).expect("a valid name");
            assert_eq!((name.as_str(), name.to_string().as_str()), (ok, ok));
        }
    }

    #[test]
    fn filter_name_refuses_empty_long_and_foreign_characters() {
        assert_eq!(
            FilterName::new(""),
            Err(InvalidInput::Missing {
                field: "filter_name"
            })
        );
        assert_eq!(
            FilterName::new(&"n".repeat(65)),
            Err(InvalidInput::TooLong {
                field: "filter_name",
                len: 65,
                max: 64
            })
        );
        for (bad, msg) in [
            (
                "us private",
                "filter_name: ' ' at byte 2 is outside [A-Za-z0-9_.-]",
            ),
            (
                "camp:7",
                "filter_name: ':' at byte 4 is outside [A-Za-z0-9_.-]",
            ),
            ("é", "filter_name: 'é' at byte 0 is outside [A-Za-z0-9_.-]"),
        ] {
            let e = FilterName::new(bad).expect_err("an invalid name");
            assert_eq!(e.to_string(), msg);
        }
    }
}
