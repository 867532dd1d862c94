//! Arbitrary bytes as what a client of the queue server sends over RESP: the first byte picks
//! how the stream is cut (1 to 16 bytes per piece, then the rest of the input), the rest is
//! the stream. `spool_resp::Decoder` must never panic whatever the cuts; a decoded frame
//! encodes as RESP3 and decodes again to itself (oversize markers, null arrays and NaN aside);
//! after an error the decoder is not used again (the server closes the connection). Also runs
//! with small limits, so that every limit path is reached.
//!
//! Seeds: with `SPOOL_FUZZ_WRITE_SEEDS=<dir>` this binary writes a few requests and replies
//! to `<dir>/resp_decoder/` and exits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spool_resp::{encode, Decoder, Frame, Limits, Protocol};

fuzz_target!(init: write_seeds_from_env(), |data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 16) + 1;
    decode_all(Limits::default(), stream, chunk);
    decode_all(
        Limits {
            bulk_max: 8,
            bulk_discard_max: 32,
            aggregate_max: 4,
            depth_max: 2,
            line_max: 16,
        },
        stream,
        chunk,
    );
});

fn decode_all(limits: Limits, stream: &[u8], chunk: usize) {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(frame)) => round_trip(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Whether `frame` encodes to RESP3 bytes that decode to an equal frame.
fn comparable(frame: &Frame) -> bool {
    match frame {
        Frame::Oversize { .. } | Frame::NullArray => false,
        Frame::Double(d) => !d.is_nan(),
        Frame::Simple(s) | Frame::Error(s) => !s.contains(&b'\r') && !s.contains(&b'\n'),
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => v.iter().all(comparable),
        Frame::Map(pairs) => pairs.iter().all(|(k, v)| comparable(k) && comparable(v)),
        _ => true,
    }
}

fn round_trip(frame: &Frame) {
    for proto in [Protocol::Resp2, Protocol::Resp3] {
        let mut out = BytesMut::new();
        encode(frame, proto, &mut out);
        let mut d = Decoder::new(Limits {
            bulk_max: usize::MAX / 4,
            bulk_discard_max: usize::MAX / 4,
            aggregate_max: usize::MAX / 4,
            depth_max: 64,
            line_max: usize::MAX / 4,
        });
        let bytes = out.to_vec();
        let again = d
            .decode(&mut out)
            .unwrap_or_else(|e| panic!("{proto:?} encoding of {frame:?} does not decode: {e}: {bytes:?}"));
        let again = again.unwrap_or_else(|| panic!("{proto:?} encoding of {frame:?} is incomplete: {bytes:?}"));
        assert!(out.is_empty(), "{proto:?} encoding of {frame:?} decoded partly");
        if proto == Protocol::Resp3 && comparable(frame) {
            assert_eq!(&again, frame, "RESP3 round trip: {bytes:?}");
        }
    }
}

fn write_seeds_from_env() {
    let Some(dir) = std::env::var_os("SPOOL_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("resp_decoder");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let seeds: &[(&str, &[u8])] = &[
        (
            "pipelined-requests",
            b"\x03*3\r\n$5\r\nQPUSH\r\n$1\r\nq\r\n$5\r\nhello\r\n*2\r\n$4\r\nQGET\r\n$1\r\nq\r\nPING\r\n",
        ),
        ("inline", b"\x00QPUSH q hello\r\n\r\nQUIT\r\n"),
        (
            "resp3-replies",
            b"\x07%2\r\n+a\r\n:1\r\n$1\r\nb\r\n~2\r\n#t\r\n#f\r\n>1\r\n,1.5\r\n(-123\r\n=8\r\ntxt:abcd\r\n!5\r\noops!\r\n_\r\n$-1\r\n*-1\r\n*0\r\n",
        ),
        ("oversize", b"\x0f*2\r\n$4\r\nQPUT\r\n$20\r\nxxxxxxxxxxxxxxxxxxxx\r\n"),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
    std::process::exit(0);
}
