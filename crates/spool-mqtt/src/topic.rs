//! Topic names, topic filters, and which filter matches which topic (MQTT 5 section 4.7,
//! the same rules as MQTT 3.1.1).
//!
//! A topic *name* is what a PUBLISH carries: no wildcards. A topic *filter* is what a
//! SUBSCRIBE carries: `+` stands for exactly one level, `#` for any number of levels
//! (including none) and must be the last level. Levels are separated by `/`; empty levels are
//! allowed (`a//b`, `/a`). Topics starting with `$` (`$SYS/...`) are not matched by a filter
//! whose first level is a wildcard.

/// The longest topic name or filter MQTT can carry (a two-byte length prefix).
pub const TOPIC_BYTES_MAX: usize = 65_535;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty names and filters are not allowed by MQTT.
    #[error("topic is empty; a topic needs at least one character")]
    Empty,
    /// Over [`TOPIC_BYTES_MAX`] bytes.
    #[error("topic is {len} bytes long; MQTT allows at most 65535")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The NUL character is forbidden in topics.
    #[error("topic {topic:?} contains a NUL character, which MQTT forbids")]
    ContainsNul {
        /// The topic.
        topic: String,
    },
    /// A topic name (for PUBLISH) may not contain `+` or `#`.
    #[error("topic name {topic:?} contains a wildcard ('+' or '#'); wildcards are only allowed in subscription filters")]
    WildcardInName {
        /// The topic.
        topic: String,
    },
    /// `#` must be the whole last level of a filter.
    #[error("topic filter {filter:?} has '#' somewhere else than as the whole last level (use 'a/#', not 'a#' or 'a/#/b')")]
    MisplacedHash {
        /// The filter.
        filter: String,
    },
    /// `+` must be a whole level of a filter.
    #[error("topic filter {filter:?} has '+' inside a level; '+' must be a whole level (use 'a/+/b', not 'a/b+')")]
    MisplacedPlus {
        /// The filter.
        filter: String,
    },
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong { len: topic.len() });
    }
    if topic.contains('\0') {
        return Err(TopicError::ContainsNul {
            topic: topic.to_owned(),
        });
    }
    Ok(())
}

/// Checks a topic name (what a PUBLISH is sent to).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName {
            topic: topic.to_owned(),
        });
    }
    Ok(())
}

/// Checks a topic filter (what a SUBSCRIBE asks for).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash {
                filter: filter.to_owned(),
            });
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus {
                filter: filter.to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `filter` matches `topic`.
///
/// Both are assumed valid (see [`validate_topic_filter`], [`validate_topic_name`]); for an
/// invalid input the answer is some boolean, never a panic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    // MQTT 4.7.2: a filter starting with a wildcard does not match a topic starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` matches the rest, including nothing ("a/#" matches "a"); both ending
            // together is a match.
            (Some("#"), _) | (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(filter: &str, topic: &str, expected: bool) {
        assert_eq!(
            topic_matches(filter, topic),
            expected,
            "filter {filter:?} on topic {topic:?}"
        );
    }

    #[test]
    fn exact_levels() {
        check("a/b/c", "a/b/c", true);
        check("a/b/c", "a/b", false);
        check("a/b", "a/b/c", false);
        check("a/b/c", "a/b/d", false);
        check("A/b", "a/b", false);
        check("a//b", "a//b", true);
        check("a//b", "a/b", false);
        check("/a", "/a", true);
        check("/a", "a", false);
        check("a/", "a/", true);
        check("a/", "a", false);
    }

    #[test]
    fn plus_is_exactly_one_level() {
        check("+", "a", true);
        check("+", "a/b", false);
        check("+", "", true);
        check("a/+", "a/b", true);
        check("a/+", "a/", true);
        check("a/+", "a", false);
        check("a/+", "a/b/c", false);
        check("a/+/c", "a/b/c", true);
        check("a/+/c", "a//c", true);
        check("+/+", "/a", true);
        check("+/+", "a", false);
        check("/+", "/a", true);
        check("+/b/+", "a/b/c", true);
    }

    #[test]
    fn hash_is_any_number_of_levels_including_the_parent() {
        check("#", "a", true);
        check("#", "a/b/c", true);
        check("#", "/", true);
        check("a/#", "a", true);
        check("a/#", "a/", true);
        check("a/#", "a/b/c", true);
        check("a/#", "b/a", false);
        check("a/#", "ab", false);
        check("a/+/#", "a/b", true);
        check("a/+/#", "a", false);
        check("+/#", "a/b", true);
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        check("#", "$SYS/broker/uptime", false);
        check("+/broker/uptime", "$SYS/broker/uptime", false);
        check("+", "$SYS", false);
        check("$SYS/#", "$SYS/broker/uptime", true);
        check("$SYS/+/uptime", "$SYS/broker/uptime", true);
        check("$SYS", "$SYS", true);
        // Only the first level matters: a '$' further down is an ordinary character.
        check("a/+", "a/$b", true);
        check("a/#", "a/$b/c", true);
    }

    #[test]
    fn names_refuse_wildcards_empty_and_nul() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic_name("a/+"),
            Err(TopicError::WildcardInName { .. })
        ));
        assert!(matches!(
            validate_topic_name("a#"),
            Err(TopicError::WildcardInName { .. })
        ));
        assert!(matches!(
            validate_topic_name("a\0b"),
            Err(TopicError::ContainsNul { .. })
        ));
        let long = "x".repeat(TOPIC_BYTES_MAX + 1);
        assert_eq!(
            validate_topic_name(&long),
            Err(TopicError::TooLong {
                len: TOPIC_BYTES_MAX + 1
            })
        );
        assert_eq!(validate_topic_name(&long[1..]), Ok(()));
    }

    #[test]
    fn filters_need_whole_level_wildcards() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/#", "a//+", "$SYS/#", "+/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a/b#", "##"] {
            assert!(
                matches!(
                    validate_topic_filter(bad),
                    Err(TopicError::MisplacedHash { .. })
                ),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "++", "+a/b"] {
            assert!(
                matches!(
                    validate_topic_filter(bad),
                    Err(TopicError::MisplacedPlus { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = validate_topic_filter("a/b#").unwrap_err().to_string();
        assert!(e.contains("a/#"), "{e}");
        let e = validate_topic_name("a/+").unwrap_err().to_string();
        assert!(e.contains("only allowed in subscription filters"), "{e}");
    }

    proptest::proptest! {
        /// A topic always matches itself used as a filter, "#" (unless it starts with '$'),
        /// and the filter made by turning any one level into '+'.
        #[test]
        fn generated_topics_match_their_generalisations(
            levels in proptest::collection::vec("[a-c$]{0,3}", 1..5),
            pick in 0usize..5,
        ) {
            let topic = levels.join("/");
            proptest::prop_assert!(topic_matches(&topic, &topic));
            proptest::prop_assert_eq!(topic_matches("#", &topic), !topic.starts_with('$'));
            let i = pick % levels.len();
            let mut generalised = levels.clone();
            generalised[i] = "+".to_owned();
            let filter = generalised.join("/");
            let dollar_blocked = i == 0 && topic.starts_with('$');
            proptest::prop_assert_eq!(topic_matches(&filter, &topic), !dollar_blocked);
            let mut prefix = levels[..i].to_vec();
            prefix.push("#".to_owned());
            let filter = prefix.join("/");
            proptest::prop_assert_eq!(topic_matches(&filter, &topic), !dollar_blocked);
        }
    }
}
