use proptest::prelude::*;

use super::*;

type Outcome = Result<Command, ProtocolError>;

fn cmd(args: &[&str]) -> Command {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// Feeds `chunks` one after another to one parser, as a connection would, and collects every
/// command and error. Checks on the way that the parser never consumes more than it was given.
fn parse_chunks(chunks: &[&[u8]], limits: &ParserLimits) -> (Vec<Outcome>, usize) {
    let mut parser = RespParser::new(limits.clone());
    let mut buf = Vec::new();
    let mut outcomes = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let parsed = parser.parse(&buf);
            assert!(parsed.consumed <= buf.len(), "consumed more than given");
            buf.drain(..parsed.consumed);
            match parsed.result {
                Ok(Some(command)) => outcomes.push(Ok(command)),
                Ok(None) => break,
                Err(e) => outcomes.push(Err(e)),
            }
        }
    }
    (outcomes, buf.len())
}

fn parse_all(input: &[u8]) -> Vec<Outcome> {
    let (outcomes, _) = parse_chunks(&[input], &ParserLimits::default());
    outcomes
}

fn limits(args_max: usize, bulk_bytes_max: usize, inline_bytes_max: usize) -> ParserLimits {
    ParserLimits {
        args_max,
        bulk_bytes_max,
        inline_bytes_max,
        command_bytes_max: 1 << 20,
    }
}

#[test]
fn multibulk_commands() {
    assert_eq!(
        parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        vec![Ok(cmd(&["GET", "k"]))]
    );
    assert_eq!(
        parse_all(b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\na\r\nb\r\n"),
        vec![Ok(vec![b"SET".to_vec(), vec![], b"a\r\nb".to_vec()])],
        "bulk strings are binary safe"
    );
    assert_eq!(
        parse_command(b"*1\r\n$4\r\nPING\r\n*1\r\n", &ParserLimits::default()),
        Ok(Some((cmd(&["PING"]), 14)))
    );
}

#[test]
fn empty_commands_are_skipped() {
    assert_eq!(
        parse_all(b"*0\r\n*-1\r\n\r\n   \r\n*1\r\n$4\r\nPING\r\n"),
        vec![Ok(cmd(&["PING"]))]
    );
    assert_eq!(
        parse_command(b"*0\r\n\r\nPING\r\n", &ParserLimits::default()),
        Ok(Some((cmd(&["PING"]), 12)))
    );
}

#[test]
fn inline_commands() {
    assert_eq!(parse_all(b"PING\r\n"), vec![Ok(cmd(&["PING"]))]);
    assert_eq!(
        parse_all(b"PING\n"),
        vec![Ok(cmd(&["PING"]))],
        "a bare LF ends a line"
    );
    assert_eq!(
        parse_all(b"  set   key \t value  \r\n"),
        vec![Ok(cmd(&["set", "key", "value"]))]
    );
    assert_eq!(
        parse_all(b"SET k \"a b\\n\\x41\\\"\" 'it\\'s' \"\"\r\n"),
        vec![Ok(cmd(&["SET", "k", "a b\nA\"", "it's", ""]))]
    );
    assert_eq!(
        parse_all(b"ECHO \"\\xZZ\" \"\\q\"\r\n"),
        vec![Ok(cmd(&["ECHO", "xZZ", "q"]))],
        "invalid escapes keep the escaped byte, as in Redis"
    );
    assert_eq!(
        parse_all(b"ECHO a\"b c\"\r\n"),
        vec![Ok(cmd(&["ECHO", "ab c"]))]
    );
}

#[test]
fn incomplete_input_waits() {
    let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
    for cut in 0..full.len() {
        assert_eq!(
            parse_command(&full[..cut], &ParserLimits::default()),
            Ok(None),
            "cut at {cut}"
        );
    }
    assert_eq!(
        parse_command(full, &ParserLimits::default()),
        Ok(Some((cmd(&["GET", "hello"]), full.len())))
    );
    assert_eq!(parse_command(b"PIN", &ParserLimits::default()), Ok(None));
}

#[test]
fn stateful_parser_keeps_complete_arguments() {
    let mut parser = RespParser::new(ParserLimits::default());
    let first = b"*2\r\n$3\r\nGET\r\n$5\r\nhel";
    let parsed = parser.parse(first);
    assert_eq!(parsed.result, Ok(None));
    assert_eq!(
        parsed.consumed, 13,
        "the count and the first argument are consumed"
    );
    assert!(parser.is_mid_command());
    let parsed = parser.parse(b"$5\r\nhello\r\n");
    assert_eq!(parsed.result, Ok(Some(cmd(&["GET", "hello"]))));
    assert_eq!(parsed.consumed, 11);
    assert!(!parser.is_mid_command());
}

#[test]
fn pipelined_commands() {
    let mut input = Vec::new();
    for i in 0..50 {
        encode_command(&mut input, &[&b"SET"[..], format!("k{i}").as_bytes(), b"v"]);
        input.extend_from_slice(b"PING\r\n");
    }
    let outcomes = parse_all(&input);
    assert_eq!(outcomes.len(), 100);
    assert_eq!(outcomes[98], Ok(cmd(&["SET", "k49", "v"])));
    assert_eq!(outcomes[99], Ok(cmd(&["PING"])));
}

/// Each malformed input yields the error, then the parser resynchronises and the PING after it
/// parses.
#[test]
fn errors_then_resynchronisation() {
    let cases: Vec<(&[u8], ProtocolError)> = vec![
        (b"*abc\r\n", ProtocolError::InvalidMultibulkLength),
        (b"*+1\r\n", ProtocolError::InvalidMultibulkLength),
        (b"*1\r\n:5\r\n", ProtocolError::ExpectedDollar(b':')),
        (
            b"*2\r\n$3\r\nGET\r\n*1\r\n",
            ProtocolError::ExpectedDollar(b'*'),
        ),
        (b"*1\r\n$x\r\n", ProtocolError::InvalidBulkLength),
        (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
        (
            b"*1\r\n$3\r\nabcXY\r\n",
            ProtocolError::MissingBulkTerminator,
        ),
        (
            b"*1\r\n$3\r\nabc\n\r\n",
            ProtocolError::MissingBulkTerminator,
        ),
        (
            b"*111111111111111111111111111111111111\r\n",
            ProtocolError::TooBigMultibulkCount,
        ),
        (
            b"*1\r\n$111111111111111111111111111111111111\r\n",
            ProtocolError::TooBigBulkCount,
        ),
        (b"SET k \"unterminated\r\n", ProtocolError::UnbalancedQuotes),
        (b"SET k \"a\"b\r\n", ProtocolError::UnbalancedQuotes),
        (b"SET k 'a'b\r\n", ProtocolError::UnbalancedQuotes),
    ];
    for (bad, error) in cases {
        let mut input = bad.to_vec();
        input.extend_from_slice(b"PING\r\n");
        assert_eq!(
            parse_all(&input),
            vec![Err(error.clone()), Ok(cmd(&["PING"]))],
            "input {:?}",
            String::from_utf8_lossy(bad)
        );
        // The same through the stateless function: the error itself.
        assert_eq!(
            parse_command(&input, &ParserLimits::default()),
            Err(error),
            "input {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn skipping_waits_for_the_end_of_the_offending_line() {
    let limits = ParserLimits::default();
    let (outcomes, left) = parse_chunks(
        &[b"*1\r\n:garbage that goes on", b" and on", b"\r\nPING\r\n"],
        &limits,
    );
    assert_eq!(
        outcomes,
        vec![Err(ProtocolError::ExpectedDollar(b':')), Ok(cmd(&["PING"]))]
    );
    assert_eq!(left, 0);
}

#[test]
fn error_messages_read_like_redis() {
    assert_eq!(
        ProtocolError::InvalidBulkLength.to_string(),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        ProtocolError::ExpectedDollar(b'x').to_string(),
        "Protocol error: expected '$', got 'x'"
    );
    assert_eq!(
        ProtocolError::ExpectedDollar(b'\r').to_string(),
        "Protocol error: expected '$', got '\\x0d'"
    );
}

#[test]
fn bulk_length_limit_at_and_past() {
    let limits = limits(8, 10, 64);
    let mut at = Vec::new();
    encode_command(&mut at, &[b"0123456789"]);
    assert_eq!(
        parse_chunks(&[&at], &limits).0,
        vec![Ok(cmd(&["0123456789"]))]
    );
    let mut past = Vec::new();
    encode_command(&mut past, &[b"0123456789X"]);
    let (outcomes, _) = parse_chunks(&[&past], &limits);
    assert_eq!(outcomes[0], Err(ProtocolError::InvalidBulkLength));
}

#[test]
fn huge_declared_lengths_cost_nothing() {
    let mut parser = RespParser::new(ParserLimits::default());
    let parsed = parser.parse(b"*1\r\n$9223372036854775807\r\n");
    assert_eq!(parsed.result, Err(ProtocolError::InvalidBulkLength));
    let parsed = parser.parse(b"*9223372036854775807\r\n");
    assert_eq!(parsed.result, Err(ProtocolError::TooManyArgs(1 << 16)));
    // A large but allowed count reserves only a few slots.
    let parsed = parser.parse(b"*65536\r\n");
    assert_eq!(parsed.result, Ok(None));
    match &parser.state {
        State::Multibulk { args, .. } => assert!(args.capacity() <= ARGS_PREALLOCATE_MAX),
        other => panic!("unexpected state {other:?}"),
    }
}

#[test]
fn args_limit_at_and_past() {
    let limits = limits(3, 64, 64);
    let mut at = Vec::new();
    encode_command(&mut at, &[&b"a"[..], b"b", b"c"]);
    assert_eq!(
        parse_chunks(&[&at], &limits).0,
        vec![Ok(cmd(&["a", "b", "c"]))]
    );
    let mut past = Vec::new();
    encode_command(&mut past, &[&b"a"[..], b"b", b"c", b"d"]);
    assert_eq!(
        parse_chunks(&[&past], &limits).0[0],
        Err(ProtocolError::TooManyArgs(3))
    );
    assert_eq!(
        parse_chunks(&[b"a b c\r\n"], &limits).0,
        vec![Ok(cmd(&["a", "b", "c"]))]
    );
    assert_eq!(
        parse_chunks(&[b"a b c d\r\nPING\r\n"], &limits).0,
        vec![Err(ProtocolError::TooManyArgs(3)), Ok(cmd(&["PING"]))]
    );
}

#[test]
fn inline_limit_at_and_past() {
    let limits = limits(8, 64, 10);
    assert_eq!(
        parse_chunks(&[b"0123456789\r\n"], &limits).0,
        vec![Ok(cmd(&["0123456789"]))]
    );
    assert_eq!(
        parse_chunks(&[b"0123456789\n"], &limits).0,
        vec![Ok(cmd(&["0123456789"]))]
    );
    assert_eq!(
        parse_chunks(&[b"0123456789X\r\nPING\r\n"], &limits).0,
        vec![Err(ProtocolError::TooBigInline), Ok(cmd(&["PING"]))]
    );
    assert_eq!(
        parse_chunks(&[b"0123456789X\nPING\r\n"], &limits).0,
        vec![Err(ProtocolError::TooBigInline), Ok(cmd(&["PING"]))]
    );
    // No line end in sight: the error comes as soon as the limit is passed, and the rest of
    // the line is skipped as it arrives.
    let (outcomes, left) = parse_chunks(&[b"0123456789ABC", b"DEF", b"\r\nPING\r\n"], &limits);
    assert_eq!(
        outcomes,
        vec![Err(ProtocolError::TooBigInline), Ok(cmd(&["PING"]))]
    );
    assert_eq!(left, 0);
}

#[test]
fn command_bytes_limit_at_and_past() {
    let limits = ParserLimits {
        command_bytes_max: 10,
        ..ParserLimits::default()
    };
    let mut at = Vec::new();
    encode_command(&mut at, &[&b"SET"[..], b"key", b"val!"]);
    assert_eq!(
        parse_chunks(&[&at], &limits).0,
        vec![Ok(cmd(&["SET", "key", "val!"]))]
    );
    let mut past = Vec::new();
    encode_command(&mut past, &[&b"SET"[..], b"key", b"val!!"]);
    assert_eq!(
        parse_chunks(&[&past], &limits).0[0],
        Err(ProtocolError::CommandTooLarge(10))
    );
}

#[test]
fn element_bytes_max_covers_the_largest_element() {
    let limits = limits(8, 100, 10);
    assert_eq!(limits.element_bytes_max(), 100 + 32 + 2);
}

#[test]
fn encoder_writes_every_type() {
    assert_eq!(RespValue::Simple("OK".into()).to_bytes(), b"+OK\r\n");
    assert_eq!(
        RespValue::Error("ERR bad\r\nthing\n".into()).to_bytes(),
        b"-ERR bad  thing \r\n",
        "line breaks cannot end the reply early"
    );
    assert_eq!(RespValue::Integer(0).to_bytes(), b":0\r\n");
    assert_eq!(RespValue::Integer(-42).to_bytes(), b":-42\r\n");
    assert_eq!(
        RespValue::Integer(i64::MIN).to_bytes(),
        b":-9223372036854775808\r\n"
    );
    assert_eq!(
        RespValue::Integer(i64::MAX).to_bytes(),
        b":9223372036854775807\r\n"
    );
    assert_eq!(RespValue::bulk("a\r\nb").to_bytes(), b"$4\r\na\r\nb\r\n");
    assert_eq!(RespValue::bulk("").to_bytes(), b"$0\r\n\r\n");
    assert_eq!(RespValue::Nil.to_bytes(), b"$-1\r\n");
    assert_eq!(RespValue::NilArray.to_bytes(), b"*-1\r\n");
    assert_eq!(RespValue::Array(vec![]).to_bytes(), b"*0\r\n");
    assert_eq!(
        RespValue::Array(vec![
            RespValue::Integer(1),
            RespValue::Array(vec![RespValue::bulk("x"), RespValue::Nil]),
            RespValue::Simple("s".into()),
        ])
        .to_bytes(),
        b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n+s\r\n"
    );
    let mut buf = bytes::BytesMut::new();
    write_bulk(&mut buf, b"into BytesMut");
    assert_eq!(&buf[..], b"$13\r\ninto BytesMut\r\n");
}

fn arb_command() -> impl Strategy<Value = Command> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..6)
}

/// Bytes from an alphabet that makes RESP structure likely, to reach the parser's corners.
fn arb_resp_ish() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(&b"*"[..]),
            Just(&b"$"[..]),
            Just(&b"\r\n"[..]),
            Just(&b"\r"[..]),
            Just(&b"\n"[..]),
            Just(&b"1"[..]),
            Just(&b"2"[..]),
            Just(&b"-1"[..]),
            Just(&b"0"[..]),
            Just(&b"a"[..]),
            Just(&b" "[..]),
            Just(&b"\""[..]),
            Just(&b"'"[..]),
            Just(&b"\\"[..]),
            Just(&b"*1\r\n$4\r\nPING\r\n"[..]),
            Just(&b"$3\r\nabc\r\n"[..]),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Splits `input` at the given fractions.
fn split_at_points(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(input[start..point].to_vec());
        start = point;
    }
    chunks.push(input[start..].to_vec());
    chunks
}

fn small_limits() -> ParserLimits {
    ParserLimits {
        args_max: 4,
        bulk_bytes_max: 8,
        inline_bytes_max: 12,
        command_bytes_max: 16,
    }
}

proptest! {
    #[test]
    fn encode_then_parse_round_trips(commands in proptest::collection::vec(arb_command(), 1..5)) {
        let mut input = Vec::new();
        for command in &commands {
            encode_command(&mut input, command);
        }
        let expected: Vec<Outcome> = commands.iter().cloned().map(Ok).collect();
        let (outcomes, left) = parse_chunks(&[&input], &ParserLimits::default());
        prop_assert_eq!(outcomes, expected);
        prop_assert_eq!(left, 0);
        let (first, consumed) = parse_command(&input, &ParserLimits::default()).unwrap().unwrap();
        prop_assert_eq!(&first, &commands[0]);
        let mut one = Vec::new();
        encode_command(&mut one, &commands[0]);
        prop_assert_eq!(consumed, one.len());
    }

    #[test]
    fn any_split_of_a_valid_stream_parses_the_same(
        commands in proptest::collection::vec(arb_command(), 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut input = Vec::new();
        for command in &commands {
            encode_command(&mut input, command);
        }
        let chunks = split_at_points(&input, &cuts);
        let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let expected: Vec<Outcome> = commands.into_iter().map(Ok).collect();
        let (outcomes, left) = parse_chunks(&chunk_refs, &ParserLimits::default());
        prop_assert_eq!(outcomes, expected);
        prop_assert_eq!(left, 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_overconsume(
        input in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = parse_chunks(&[&input], &ParserLimits::default());
        let _ = parse_chunks(&[&input], &small_limits());
        if let Ok(Some((command, consumed))) = parse_command(&input, &small_limits()) {
            prop_assert!(consumed <= input.len());
            prop_assert!(!command.is_empty());
        }
    }

    /// Stronger than "valid streams split the same": for any bytes, commands and errors come
    /// out the same however the bytes arrive.
    #[test]
    fn outcomes_do_not_depend_on_how_bytes_arrive(
        input in arb_resp_ish(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        for limits in [ParserLimits::default(), small_limits()] {
            let whole = parse_chunks(&[&input], &limits);
            let chunks = split_at_points(&input, &cuts);
            let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(parse_chunks(&chunk_refs, &limits), whole.clone());
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(parse_chunks(&bytes, &limits), whole);
        }
    }

    #[test]
    fn commands_respect_the_limits(input in arb_resp_ish()) {
        let limits = small_limits();
        let (outcomes, _) = parse_chunks(&[&input], &limits);
        for command in outcomes.into_iter().flatten() {
            prop_assert!(!command.is_empty());
            prop_assert!(command.len() <= limits.args_max);
            let bytes: usize = command.iter().map(Vec::len).sum();
            prop_assert!(bytes <= limits.command_bytes_max.max(limits.inline_bytes_max));
        }
    }
}
