use proptest::prelude::*;

use super::*;

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// Every frame in `input`, fed in pieces of `chunk` bytes.
fn decode_all(input: &[u8], chunk: usize, limits: Limits) -> Result<Vec<Frame>, RespError> {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f);
        }
    }
    assert!(buf.is_empty() && !d.in_frame(), "left over: {buf:?}");
    Ok(out)
}

fn encoded(frame: &Frame, proto: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, proto, &mut out);
    out.to_vec()
}

#[test]
fn a_request_decodes_the_same_whatever_the_split() {
    let input = b"*3\r\n$5\r\nQPUSH\r\n$1\r\nq\r\n$12\r\nhello\r\nworld\r\n";
    let want = vec![Frame::Array(vec![
        bulk("QPUSH"),
        bulk("q"),
        bulk("hello\r\nworld"),
    ])];
    for chunk in 1..=input.len() {
        assert_eq!(
            decode_all(input, chunk, Limits::default()).unwrap(),
            want,
            "{chunk}"
        );
    }
}

#[test]
fn pipelined_requests_come_out_one_by_one() {
    let input = b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\nPING\r\n";
    let got = decode_all(input, 7, Limits::default()).unwrap();
    assert_eq!(
        got,
        vec![
            Frame::Array(vec![bulk("PING")]),
            Frame::Array(vec![bulk("ECHO"), bulk("")]),
            Frame::Array(vec![bulk("PING")]),
        ]
    );
}

#[test]
fn inline_commands_are_words_and_empty_lines_are_ignored() {
    let got = decode_all(b"\r\nQPUSH  q\thello\r\n\r\nPING\r\n", 3, Limits::default()).unwrap();
    assert_eq!(
        got,
        vec![
            Frame::Array(vec![bulk("QPUSH"), bulk("q"), bulk("hello")]),
            Frame::Array(vec![bulk("PING")]),
        ]
    );
}

#[test]
fn every_resp3_type_decodes() {
    let input = b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n~2\r\n#t\r\n#f\r\n>1\r\n,1.5\r\n(-12345678901234567890\r\n=8\r\ntxt:abcd\r\n!5\r\noops!\r\n_\r\n$-1\r\n*-1\r\n*0\r\n,inf\r\n";
    let got = decode_all(input, 5, Limits::default()).unwrap();
    assert_eq!(
        got,
        vec![
            Frame::Map(vec![
                (Frame::Simple(Bytes::from_static(b"a")), Frame::Integer(1)),
                (
                    bulk("b"),
                    Frame::Set(vec![Frame::Boolean(true), Frame::Boolean(false)])
                ),
            ]),
            Frame::Push(vec![Frame::Double(1.5)]),
            Frame::BigNumber(Bytes::from_static(b"-12345678901234567890")),
            Frame::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"abcd")
            },
            Frame::Error(Bytes::from_static(b"oops!")),
            Frame::Null,
            Frame::Null,
            Frame::NullArray,
            Frame::Array(Vec::new()),
            Frame::Double(f64::INFINITY),
        ]
    );
}

#[test]
fn an_oversize_bulk_is_dropped_as_it_arrives_and_the_connection_goes_on() {
    let limits = Limits {
        bulk_max: 100,
        bulk_discard_max: 1000,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"*3\r\n$5\r\nQPUSH\r\n$1\r\nq\r\n$500\r\n"[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    // The body arrives in pieces; none of it is kept.
    for _ in 0..5 {
        buf.extend_from_slice(&[b'x'; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "dropped as it arrives");
    }
    buf.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Frame::Array(vec![
            bulk("QPUSH"),
            bulk("q"),
            Frame::Oversize { len: 500 }
        ]))
    );
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Frame::Array(vec![bulk("PING")]))
    );
    let args = request_args(Frame::Array(vec![
        bulk("QPUSH"),
        Frame::Oversize { len: 500 },
    ]));
    assert_eq!(args.unwrap().len(), 2);
}

#[test]
fn limits_are_checked_from_the_prefixes_before_any_body() {
    let limits = Limits {
        bulk_max: 100,
        bulk_discard_max: 1000,
        aggregate_max: 10,
        depth_max: 2,
        line_max: 64,
    };
    let err = |input: &[u8]| {
        let mut d = Decoder::new(limits);
        let mut buf = BytesMut::from(input);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error for {input:?}"),
                Err(e) => return e,
            }
        }
    };
    // The header alone: the body was never sent.
    assert_eq!(
        err(b"*2\r\n$4\r\nQPUT\r\n$1001\r\n"),
        RespError::TooLarge {
            what: "a bulk string",
            size: 1001,
            max: 1000
        }
    );
    assert!(matches!(
        err(b"*11\r\n"),
        RespError::TooLarge {
            what: "an aggregate",
            ..
        }
    ));
    assert!(matches!(
        err(b"*1\r\n*1\r\n*1\r\n"),
        RespError::TooLarge {
            what: "nesting",
            ..
        }
    ));
    assert!(matches!(
        err(&[b'a'; 65]),
        RespError::TooLarge { what: "a line", .. }
    ));
    let e = err(b"$abc\r\n");
    assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
    assert!(matches!(err(b"$-2\r\n"), RespError::Protocol(_)));
    assert!(
        matches!(err(b"*1\r\nfoo\r\n"), RespError::Protocol(_)),
        "inline inside an array"
    );
    assert!(
        matches!(err(b"$3\r\nfooXX"), RespError::Protocol(_)),
        "no CRLF after the body"
    );
    assert!(matches!(err(b"|1\r\n"), RespError::Protocol(_)));
    assert!(matches!(err(b"#x\r\n"), RespError::Protocol(_)));
    assert!(matches!(err(b",1.5.5\r\n"), RespError::Protocol(_)));
    assert!(matches!(err(b"=3\r\nabc\r\n"), RespError::Protocol(_)));
    assert!(matches!(err(b":12a\r\n"), RespError::Protocol(_)));
}

#[test]
fn a_peers_count_reserves_no_memory() {
    // 1,000,000 elements announced, none sent: nothing is allocated for them.
    let mut d = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1000000\r\n"[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert!(d.in_frame());
    assert_eq!(d.stack[0].items.capacity(), 0);
}

#[test]
fn resp2_gets_the_equivalents_of_resp3_types() {
    let map = Frame::Map(vec![(bulk("k"), Frame::Boolean(true))]);
    assert_eq!(encoded(&map, Protocol::Resp2), b"*2\r\n$1\r\nk\r\n:1\r\n");
    assert_eq!(encoded(&map, Protocol::Resp3), b"%1\r\n$1\r\nk\r\n#t\r\n");
    assert_eq!(encoded(&Frame::Null, Protocol::Resp2), b"$-1\r\n");
    assert_eq!(encoded(&Frame::Null, Protocol::Resp3), b"_\r\n");
    assert_eq!(encoded(&Frame::NullArray, Protocol::Resp2), b"*-1\r\n");
    assert_eq!(
        encoded(&Frame::Double(2.5), Protocol::Resp2),
        b"$3\r\n2.5\r\n"
    );
    assert_eq!(encoded(&Frame::Double(2.0), Protocol::Resp3), b",2.0\r\n");
    assert_eq!(
        encoded(&Frame::Set(vec![Frame::Integer(1)]), Protocol::Resp2),
        b"*1\r\n:1\r\n"
    );
    let v = Frame::Verbatim {
        format: *b"txt",
        text: Bytes::from_static(b"hi"),
    };
    assert_eq!(encoded(&v, Protocol::Resp2), b"$2\r\nhi\r\n");
    assert_eq!(encoded(&v, Protocol::Resp3), b"=6\r\ntxt:hi\r\n");
    // An error with a newline cannot end its line early.
    assert_eq!(
        encoded(
            &Frame::Error(Bytes::from_static(b"ERR a\r\nb")),
            Protocol::Resp2
        ),
        b"-ERR a  b\r\n"
    );
}

#[test]
fn requests_are_arrays_of_bulk_strings() {
    assert!(request_args(Frame::Array(vec![])).is_err());
    assert!(request_args(bulk("PING")).is_err());
    assert!(request_args(Frame::Array(vec![bulk("A"), Frame::Integer(1)])).is_err());
    assert_eq!(
        request_args(Frame::Array(vec![bulk("PING")])).unwrap(),
        vec![bulk("PING")]
    );
}

/// Frames that survive a RESP3 round trip unchanged (NaN is not equal to itself; lines
/// cannot hold CR/LF; `Oversize` and `NullArray` are written as nulls).
fn frame() -> impl Strategy<Value = Frame> {
    let text = proptest::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..20,
    )
    .prop_map(Bytes::from);
    let leaf = prop_oneof![
        text.clone().prop_map(Frame::Simple),
        text.clone().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Frame::Bulk(Bytes::from(v))),
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        any::<f64>()
            .prop_filter("NaN", |d| !d.is_nan())
            .prop_map(Frame::Double),
        (any::<bool>(), proptest::collection::vec(0u8..10, 1..30)).prop_map(|(neg, d)| {
            let mut s: Vec<u8> = if neg { vec![b'-'] } else { Vec::new() };
            s.extend(d.iter().map(|x| b'0' + x));
            Frame::BigNumber(Bytes::from(s))
        }),
        (
            proptest::array::uniform3(b'a'..=b'z'),
            proptest::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(format, t)| Frame::Verbatim {
                format,
                text: Bytes::from(t)
            }),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Set),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Push),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Frame::Map),
        ]
    })
}

proptest! {
    #[test]
    fn resp3_frames_round_trip_whatever_the_split(
        frames in proptest::collection::vec(frame(), 1..5),
        chunk in 1usize..40,
    ) {
        let mut input = BytesMut::new();
        for f in &frames {
            encode(f, Protocol::Resp3, &mut input);
        }
        let got = decode_all(&input, chunk, Limits::default()).unwrap();
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..16) {
        let mut d = Decoder::new(Limits { depth_max: 4, line_max: 64, ..Limits::default() });
        let mut buf = BytesMut::new();
        'outer: for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }
}
