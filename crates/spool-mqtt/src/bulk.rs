//! Bulk mode: several outbox records packed into one MQTT message, for slow links where the
//! per-message overhead (fixed header, topic, packet id, one PUBACK each) dominates.
//!
//! The rules (`docs/mqtt.md`, "Bulk mode"):
//! - Only **consecutive** records of the delivery order are packed, so the order in which a
//!   consumer sees the payloads is the outbox's order.
//! - A pack holds records with the same topic and QoS, no retain flag and no user properties
//!   (a pack has one of each); with `json-array` every payload must be a JSON value, with
//!   `ndjson` no payload may hold a newline. Any other record is sent alone, as it is.
//! - A pack is at most `max_records` records and `max_bytes` bytes of packed payload; a record
//!   too large to share a pack is sent alone.
//! - A pack goes to the records' topic followed by `topic_suffix`, with the MQTT 5 user
//!   property `spool-bulk` = the number of records in it. Its expiry is its members' earliest.
//! - The pack is acked (PUBACK / PUBCOMP) as a whole: every member leaves the outbox together.
//!
//! Packing is a pure function of the records, so a QoS 2 pack rebuilt from its members after a
//! restart is byte for byte the PUBLISH that was sent (a broker that compares a resent PUBLISH
//! with the one it holds sees the same message).

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::session::OutRecord;

/// The user property naming a pack and its record count (MQTT 5).
pub const BULK_PROPERTY: &str = "spool-bulk";

/// The most records one pack may hold (one lease of the outbox).
pub const MAX_RECORDS_LIMIT: usize = 10_000;

/// How the payloads of a pack are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkFormat {
    /// One JSON array of the payloads, each of which must be a JSON value: `[p1,p2,...]`.
    JsonArray,
    /// The payloads one per line, each followed by `\n` (newline-delimited, as NDJSON).
    Ndjson,
}

impl BulkFormat {
    /// The byte stored in a QoS 2 progress record.
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            BulkFormat::JsonArray => 1,
            BulkFormat::Ndjson => 2,
        }
    }

    /// The format of a progress record's byte.
    pub(crate) fn from_u8(b: u8) -> Option<BulkFormat> {
        match b {
            1 => Some(BulkFormat::JsonArray),
            2 => Some(BulkFormat::Ndjson),
            _ => None,
        }
    }

    /// Whether a payload can go into a pack of this format.
    fn accepts(self, payload: &[u8]) -> bool {
        match self {
            BulkFormat::JsonArray => {
                serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
            }
            BulkFormat::Ndjson => !payload.contains(&b'\n'),
        }
    }

    /// Packed bytes of `n` payloads totalling `sum` bytes.
    fn packed_len(self, n: usize, sum: usize) -> usize {
        match self {
            // "[" + payloads joined by "," + "]"
            BulkFormat::JsonArray => sum + n.saturating_sub(1) + 2,
            // each payload + "\n"
            BulkFormat::Ndjson => sum + n,
        }
    }
}

/// When packing happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkWhen {
    /// Whenever consecutive records can share a pack.
    Always,
    /// Only while more than this many records wait in the outbox (catching up after an
    /// outage); live traffic goes one record per message.
    Backlog(u64),
}

/// Bulk mode settings (off unless given to the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkConfig {
    /// How payloads are joined.
    pub format: BulkFormat,
    /// Records per pack at most (at least 2 to pack anything).
    pub max_records: usize,
    /// Bytes of packed payload at most.
    pub max_bytes: usize,
    /// When to pack.
    pub when: BulkWhen,
    /// Appended to the records' topic for a pack (empty: the same topic). With MQTT 3.1.1,
    /// which has no user properties, this is how a consumer tells a pack from a record.
    pub topic_suffix: String,
}

impl BulkConfig {
    /// A config with the defaults of the agent's `[outbox.bulk]`: 100 records, 64 KiB, only
    /// while more than 1000 records wait, the records' own topic.
    pub fn new(format: BulkFormat) -> BulkConfig {
        BulkConfig {
            format,
            max_records: 100,
            max_bytes: 64 << 10,
            when: BulkWhen::Backlog(1000),
            topic_suffix: String::new(),
        }
    }

    /// Checks the settings; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_records < 2 {
            return Err(format!(
                "bulk max_records is {}: a pack needs at least 2 records",
                self.max_records
            ));
        }
        if self.max_records > MAX_RECORDS_LIMIT {
            return Err(format!(
                "bulk max_records is {}: use at most {MAX_RECORDS_LIMIT}",
                self.max_records
            ));
        }
        if self.max_bytes == 0 {
            return Err("bulk max_bytes is 0: give the largest packed payload in bytes".into());
        }
        if self
            .topic_suffix
            .chars()
            .any(|c| c == '+' || c == '#' || c == '\0')
        {
            return Err(format!(
                "bulk topic_suffix {:?} holds a wildcard or NUL: a topic name cannot",
                self.topic_suffix
            ));
        }
        Ok(())
    }
}

/// One record of a pack: its sequence number and its own expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its sequence number in the outbox.
    pub seq: u64,
    /// When the record itself expires.
    pub expires_at: Option<Instant>,
}

/// A pack: what it is made of and how, so that it can be recorded and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    /// The records in it, in order (the first one's seq is the pack's seq).
    pub members: Vec<Member>,
    /// How it was joined.
    pub format: BulkFormat,
    /// The topic suffix it was sent with.
    pub topic_suffix: String,
}

/// Whether `r` may share a pack at all.
fn packable(r: &OutRecord, format: BulkFormat) -> bool {
    !r.retain && r.user_properties.is_empty() && format.accepts(&r.payload)
}

/// Packs consecutive compatible records (see the module documentation). Returns the records
/// to offer, each with its pack when it is one (a pack of one record is the record itself).
pub fn pack(records: Vec<OutRecord>, config: &BulkConfig) -> Vec<(OutRecord, Option<Pack>)> {
    let mut out = Vec::with_capacity(records.len());
    let mut group: Vec<OutRecord> = Vec::new();
    let mut group_bytes = 0usize;
    let flush =
        |group: &mut Vec<OutRecord>, out: &mut Vec<(OutRecord, Option<Pack>)>| match group.len() {
            0 => {}
            1 => out.extend(group.drain(..).map(|r| (r, None))),
            _ => {
                let members = std::mem::take(group);
                out.push(join(members, config.format, &config.topic_suffix));
            }
        };
    for r in records {
        if !packable(&r, config.format) {
            flush(&mut group, &mut out);
            group_bytes = 0;
            out.push((r, None));
            continue;
        }
        let fits = group.first().is_some_and(|first| {
            first.topic == r.topic
                && first.qos == r.qos
                && group.len() < config.max_records
                && config
                    .format
                    .packed_len(group.len() + 1, group_bytes + r.payload.len())
                    <= config.max_bytes
        });
        if !fits {
            flush(&mut group, &mut out);
            group_bytes = 0;
        }
        group_bytes += r.payload.len();
        group.push(r);
    }
    flush(&mut group, &mut out);
    out
}

/// The pack of `members` (at least one), in order: the same bytes for the same records.
pub fn join(
    members: Vec<OutRecord>,
    format: BulkFormat,
    topic_suffix: &str,
) -> (OutRecord, Option<Pack>) {
    let sum: usize = members.iter().map(|r| r.payload.len()).sum();
    let mut payload = BytesMut::with_capacity(format.packed_len(members.len(), sum));
    match format {
        BulkFormat::JsonArray => {
            payload.put_u8(b'[');
            for (i, r) in members.iter().enumerate() {
                if i > 0 {
                    payload.put_u8(b',');
                }
                payload.put_slice(&r.payload);
            }
            payload.put_u8(b']');
        }
        BulkFormat::Ndjson => {
            for r in &members {
                payload.put_slice(&r.payload);
                payload.put_u8(b'\n');
            }
        }
    }
    let expires_at = members.iter().filter_map(|r| r.expires_at).min();
    let pack = Pack {
        members: members
            .iter()
            .map(|r| Member {
                seq: r.seq,
                expires_at: r.expires_at,
            })
            .collect(),
        format,
        topic_suffix: topic_suffix.to_owned(),
    };
    let first = &members[0];
    let record = OutRecord {
        seq: first.seq,
        topic: format!("{}{}", first.topic, topic_suffix),
        payload: Bytes::from(payload),
        qos: first.qos,
        retain: false,
        expires_at,
        user_properties: vec![(BULK_PROPERTY.to_owned(), members.len().to_string())],
    };
    (record, Some(pack))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::packet::QoS;

    fn rec(seq: u64, topic: &str, payload: &str) -> OutRecord {
        OutRecord {
            seq,
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            qos: QoS::AtLeastOnce,
            retain: false,
            expires_at: None,
            user_properties: Vec::new(),
        }
    }

    fn config(format: BulkFormat) -> BulkConfig {
        BulkConfig {
            when: BulkWhen::Always,
            ..BulkConfig::new(format)
        }
    }

    fn shape(out: &[(OutRecord, Option<Pack>)]) -> Vec<(u64, usize, String)> {
        out.iter()
            .map(|(r, p)| {
                (
                    r.seq,
                    p.as_ref().map_or(1, |p| p.members.len()),
                    String::from_utf8_lossy(&r.payload).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn consecutive_records_of_one_topic_and_qos_share_a_pack_in_order() {
        let records = vec![
            rec(1, "a", "1"),
            rec(2, "a", "{\"x\":2}"),
            rec(3, "b", "3"),
            rec(4, "b", "\"four\""),
            rec(5, "a", "5"),
        ];
        let out = pack(records, &config(BulkFormat::JsonArray));
        assert_eq!(
            shape(&out),
            [
                (1, 2, "[1,{\"x\":2}]".to_owned()),
                (3, 2, "[3,\"four\"]".to_owned()),
                (5, 1, "5".to_owned()),
            ]
        );
        let (r, p) = &out[0];
        assert_eq!(r.topic, "a");
        assert_eq!(
            r.user_properties,
            [(BULK_PROPERTY.to_owned(), "2".to_owned())]
        );
        assert_eq!(
            p.as_ref()
                .unwrap()
                .members
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(
            out[2].0.user_properties.is_empty(),
            "a lone record goes as it is"
        );
    }

    #[test]
    fn records_that_cannot_share_a_pack_go_alone_and_split_the_run() {
        let mut retained = rec(2, "a", "2");
        retained.retain = true;
        let mut with_props = rec(4, "a", "4");
        with_props.user_properties = vec![("k".into(), "v".into())];
        let mut qos2 = rec(6, "a", "6");
        qos2.qos = QoS::ExactlyOnce;
        let records = vec![
            rec(1, "a", "1"),
            retained,
            rec(3, "a", "not json"),
            with_props,
            rec(5, "a", "5"),
            qos2,
            rec(7, "a", "7"),
            rec(8, "a", "8"),
        ];
        let out = pack(records, &config(BulkFormat::JsonArray));
        let seqs: Vec<(u64, usize)> = shape(&out).into_iter().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(
            seqs,
            [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 2)]
        );
    }

    #[test]
    fn ndjson_refuses_newlines_and_ends_every_payload_with_one() {
        let records = vec![
            rec(1, "t", "a b"),
            rec(2, "t", "not json is fine"),
            rec(3, "t", "two\nlines"),
            rec(4, "t", ""),
            rec(5, "t", "x"),
        ];
        let out = pack(records, &config(BulkFormat::Ndjson));
        assert_eq!(
            shape(&out),
            [
                (1, 2, "a b\nnot json is fine\n".to_owned()),
                (3, 1, "two\nlines".to_owned()),
                (4, 2, "\nx\n".to_owned()),
            ]
        );
    }

    #[test]
    fn limits_on_records_and_bytes_hold() {
        let mut cfg = config(BulkFormat::Ndjson);
        cfg.max_records = 3;
        let records: Vec<OutRecord> = (1..=7).map(|i| rec(i, "t", "xx")).collect();
        let n: Vec<usize> = pack(records.clone(), &cfg)
            .iter()
            .map(|(_, p)| p.as_ref().map_or(1, |p| p.members.len()))
            .collect();
        assert_eq!(n, [3, 3, 1]);
        // 3 bytes per record packed: 7 bytes hold two.
        cfg.max_records = 100;
        cfg.max_bytes = 7;
        let out = pack(records, &cfg);
        assert!(out.iter().all(|(r, _)| r.payload.len() <= 7));
        let n: Vec<usize> = out
            .iter()
            .map(|(_, p)| p.as_ref().map_or(1, |p| p.members.len()))
            .collect();
        assert_eq!(n, [2, 2, 2, 1]);
        // A record larger than max_bytes goes alone, unchanged.
        let big = vec![
            rec(1, "t", "small"),
            rec(2, "t", &"y".repeat(50)),
            rec(3, "t", "z"),
        ];
        let out = pack(big, &cfg);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].0.payload.len(), 50);
    }

    #[test]
    fn a_pack_expires_with_its_earliest_member_and_takes_the_suffix() {
        let now = Instant::now();
        let mut a = rec(1, "t", "1");
        a.expires_at = Some(now + Duration::from_secs(5));
        let mut b = rec(2, "t", "2");
        b.expires_at = Some(now + Duration::from_secs(2));
        let c = rec(3, "t", "3");
        let mut cfg = config(BulkFormat::JsonArray);
        cfg.topic_suffix = "/bulk".into();
        let out = pack(vec![a, b, c], &cfg);
        assert_eq!(out.len(), 1);
        let (r, p) = &out[0];
        assert_eq!(r.topic, "t/bulk");
        assert_eq!(r.expires_at, Some(now + Duration::from_secs(2)));
        assert_eq!(p.as_ref().unwrap().members[2].expires_at, None);
    }

    #[test]
    fn joining_the_same_records_again_gives_the_same_message() {
        let records: Vec<OutRecord> = (1..=5)
            .map(|i| rec(i, "t", &format!("{{\"n\":{i}}}")))
            .collect();
        let cfg = config(BulkFormat::JsonArray);
        let first = pack(records.clone(), &cfg).remove(0);
        let again = join(records, BulkFormat::JsonArray, "");
        assert_eq!(first, again);
        let parsed: serde_json::Value = serde_json::from_slice(&first.0.payload).unwrap();
        assert_eq!(parsed.as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_change() {
        let mut cfg = config(BulkFormat::Ndjson);
        cfg.max_records = 1;
        assert!(cfg.validate().unwrap_err().contains("at least 2"));
        cfg.max_records = 2;
        cfg.topic_suffix = "/+".into();
        assert!(cfg.validate().unwrap_err().contains("wildcard"));
        cfg.topic_suffix = "/bulk".into();
        assert_eq!(cfg.validate(), Ok(()));
    }
}
