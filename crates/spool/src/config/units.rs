//! Sizes (`64MiB`, `1GB`, `4096`) and durations (`500ms`, `30s`, `5m`, `1d`) as written in the
//! configuration, with their serde glue. One parser per unit, used by the file, the
//! environment overlay and the error messages alike, so the rules cannot drift apart.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a size may look like (quoted in error messages).
pub const SIZE_FORMS: &str =
    "a size such as 4096, \"512KiB\", \"64MiB\", \"1GiB\" (powers of 1024) or \"500KB\", \"1GB\" (powers of 1000)";

/// What a duration may look like (quoted in error messages).
pub const DURATION_FORMS: &str =
    "a duration with a unit such as \"500ms\", \"30s\", \"5m\", \"1h30m\", \"1d\"";

/// A number of bytes. Written as a plain integer or as a string with a unit; printed back with
/// the largest binary unit that divides it exactly (`268435456` prints as `256MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Units accepted after a number, lowercase. The bare `k`/`m`/`g` are refused on purpose:
/// half the tools read `64M` as 64,000,000 bytes and the other half as 64 MiB.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Parses a size: digits, optional spaces, an optional unit from [`SIZE_UNITS`] (any case).
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("{s:?} does not start with a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is too large a number"))?;
    let unit = unit.trim_start().to_ascii_lowercase();
    if unit.is_empty() {
        return Ok(ByteSize(n));
    }
    if unit.starts_with('.') {
        return Err(format!(
            "{s:?} has a fraction: write a whole number of a smaller unit (1536MiB, not 1.5GiB)"
        ));
    }
    let Some(&(_, mult)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(format!(
            "{s:?} has an unknown unit {unit:?}: use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB"
        ));
    };
    n.checked_mul(mult)
        .map(ByteSize)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.trailing_zeros() >= 10 && self.0 != 0 {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(SIZE_FORMS))? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a duration: humantime's syntax, but a bare number is refused (is `30` seconds or
/// milliseconds?) with a hint.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        if t.bytes().all(|b| b == b'0') {
            return Ok(Duration::ZERO);
        }
        return Err(format!(
            "{s:?} has no unit: write e.g. \"{t}s\" for seconds or \"{t}ms\" for milliseconds"
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration ({e})"))
}

/// Prints a duration with the largest unit that divides it exactly (`86400s` is `1d`), so that
/// the printed form parses back to the same value.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string().replace(' ', "");
    }
    if ms == 0 {
        return "0s".into();
    }
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// `#[serde(with = "duration")]` for `Duration` fields.
pub mod duration {
    use super::{format_duration, parse_duration, Duration, DURATION_FORMS};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d).map_err(|_| serde::de::Error::custom(DURATION_FORMS))?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn size(s: &str, want: u64) {
        assert_eq!(parse_size(s), Ok(ByteSize(want)), "{s}");
    }

    #[track_caller]
    fn bad_size(s: &str, says: &str) {
        let e = parse_size(s).expect_err(s);
        assert!(e.contains(says), "{s}: {e}");
    }

    #[test]
    fn sizes_with_and_without_units() {
        size("0", 0);
        size("4096", 4096);
        size("64MiB", 64 << 20);
        size("64 mib", 64 << 20);
        size("1GB", 1_000_000_000);
        size("1GiB", 1 << 30);
        size("500kb", 500_000);
        size("7B", 7);
        size("2TiB", 2 << 40);
    }

    #[test]
    fn sizes_refused_with_reason() {
        bad_size("64M", "unknown unit \"m\"");
        bad_size("1.5GiB", "fraction");
        bad_size("MiB", "does not start with a number");
        bad_size("", "does not start with a number");
        bad_size("-1", "does not start with a number");
        bad_size("99999999999999999999", "too large a number");
        bad_size("20000000TiB", "too large");
    }

    #[test]
    fn sizes_print_back_to_what_parses() {
        for n in [
            0,
            1,
            1000,
            1024,
            1536,
            64 << 20,
            3 << 30,
            5 << 40,
            1_000_000_000,
        ] {
            let shown = ByteSize(n).to_string();
            assert_eq!(parse_size(&shown), Ok(ByteSize(n)), "{shown}");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn sizes_from_toml_integers_and_strings() {
        let v: ByteSize = toml::Value::Integer(10).try_into().unwrap();
        assert_eq!(v, ByteSize(10));
        let v: ByteSize = toml::Value::String("1KiB".into()).try_into().unwrap();
        assert_eq!(v, ByteSize(1024));
        let e = ByteSize::deserialize(toml::Value::Boolean(true)).unwrap_err();
        assert!(e.to_string().contains("a size such as"), "{e}");
        let e = ByteSize::deserialize(toml::Value::Integer(-3)).unwrap_err();
        assert!(e.to_string().contains("a size such as"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let e = parse_duration("30").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"30s\""), "{e}");
        let e = parse_duration("30 parsecs").unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn durations_print_back_to_what_parses() {
        for ms in [
            0, 1, 500, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_000, 90_000_000,
        ] {
            let d = Duration::from_millis(ms);
            let shown = format_duration(d);
            assert_eq!(parse_duration(&shown), Ok(d), "{shown}");
        }
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
