//! Arbitrary bytes as what a broker (or a local client of the agent) sends: the first byte
//! picks the protocol (even: MQTT 3.1.1, odd: MQTT 5), the rest is the byte stream. Decoding
//! packet after packet (`spool_mqtt::Codec::decode`) must never panic; a packet that decodes
//! consumed bytes; "need more" consumed nothing; a decoded packet encodes without panicking and
//! what it encodes to decodes again, whole. Also decodes the stream with a small size limit.
//!
//! Seeds: with `SPOOL_FUZZ_WRITE_SEEDS=<dir>` this binary writes a few packets of both
//! versions to `<dir>/mqtt_decoder/` and exits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spool_mqtt::{Codec, Protocol};

fuzz_target!(init: write_seeds_from_env(), |data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let protocol = if first % 2 == 0 { Protocol::V311 } else { Protocol::V5 };
    decode_all(&Codec::new(protocol, 1 << 20), stream);
    decode_all(&Codec::new(protocol, 64), stream);
});

fn decode_all(codec: &Codec, stream: &[u8]) {
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed no bytes");
                let mut out = BytesMut::new();
                if codec.encode(&packet, &mut out).is_ok() {
                    let len = out.len();
                    let bytes = out.to_vec();
                    let again = Codec::new(codec.protocol(), usize::MAX);
                    match again.decode(&mut out) {
                        Ok(Some(_)) => assert!(
                            out.is_empty(),
                            "re-encoded packet of {len} B decoded partly: {packet:?} as {bytes:02x?}"
                        ),
                        Ok(None) => {
                            panic!("re-encoded packet of {len} B is incomplete: {packet:?} as {bytes:02x?}")
                        }
                        Err(e) => {
                            panic!("re-encoded packet does not decode: {e}: {packet:?} as {bytes:02x?}")
                        }
                    }
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "'need more bytes' consumed some");
                return;
            }
            Err(_) => return,
        }
    }
}

fn write_seeds_from_env() {
    let Some(dir) = std::env::var_os("SPOOL_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("mqtt_decoder");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let seeds: &[(&str, &[u8])] = &[
        // 3.1.1: CONNACK, PUBLISH QoS 1 "a/b" id 1 "hi", PUBACK 1, SUBACK, PINGRESP, PUBREC,
        // PUBREL, PUBCOMP, UNSUBACK, all in one stream.
        (
            "v311-stream",
            &[
                0, 0x20, 2, 0, 0, 0x32, 9, 0, 3, b'a', b'/', b'b', 0, 1, b'h', b'i', 0x40, 2, 0,
                1, 0x90, 3, 0, 2, 1, 0xd0, 0, 0x50, 2, 0, 3, 0x62, 2, 0, 3, 0x70, 2, 0, 3, 0xb0,
                2, 0, 4,
            ],
        ),
        // 3.1.1 CONNACK refused (bad user name or password).
        ("v311-connack-refused", &[0, 0x20, 2, 0, 4]),
        // 5: CONNACK with session present and Receive Maximum 10, PUBLISH QoS 2 with message
        // expiry 60, PUBACK with reason 0x10, DISCONNECT with reason 0x8b, SUBACK with a
        // failure, an empty DISCONNECT.
        (
            "v5-stream",
            &[
                1, 0x20, 6, 1, 0, 3, 0x21, 0, 10, 0x34, 15, 0, 3, b'a', b'/', b'b', 0, 7, 5,
                0x02, 0, 0, 0, 60, b'h', b'i', 0x40, 4, 0, 7, 0x10, 0, 0x90, 4, 0, 2, 0, 0x87,
                0xe0, 2, 0x8b, 0, 0xe0, 0,
            ],
        ),
        // 5 CONNACK refused (not authorized) with a reason string.
        ("v5-connack-refused", &[1, 0x20, 8, 0, 0x87, 5, 0x1f, 0, 2, b'n', b'o']),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
    std::process::exit(0);
}
