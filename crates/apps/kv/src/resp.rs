//! RESP2, the Redis protocol: a streaming, bounded parser for client commands and an encoder
//! for replies. Pure code: bytes in, commands or bytes out, no IO.
//!
//! # Parsing
//!
//! Clients send either a *multibulk* command, an array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), or an *inline* command, one line of space-separated
//! words (`PING\r\n`; quotes as in Redis: `SET k "a b\n"`). [`RespParser`] is fed the bytes
//! received so far and returns one command at a time, keeping what it has parsed of an
//! incomplete command between calls, so each input byte is examined a bounded number of times
//! however the stream is split. [`parse_command`] is the same parser as a stateless function.
//!
//! # Limits
//!
//! [`ParserLimits`] bounds the argument count, each bulk length, the inline line length and the
//! total bytes of one command. A declared count or length is checked against its limit before
//! any memory is reserved for it, and bulk bytes are copied only once all of them have arrived,
//! so a client claiming `$999999999999` costs nothing but an error.
//!
//! # Protocol errors and resynchronisation
//!
//! Redis closes a connection after a protocol error; this parser recovers instead. On an error
//! it drops the partial command and discards input up to and including the end of the offending
//! line (the next `\n`, waiting for more input if it has not arrived yet); parsing resumes after
//! it. The offending line is the count line for a bad `*N`, the length line for a bad `$N`, the
//! line itself for an inline command, and for bulk data not followed by `\r\n`, whatever
//! follows the declared length up to the next line feed. The bytes of a rejected bulk (for
//! example one over the length limit) are not skipped by length, since the length is not
//! trusted: they are parsed as further commands and typically produce more errors. A client
//! that sends valid RESP never sees any of this.

use std::fmt;

use bytes::BufMut;

/// Bounds on what the parser accepts. Defaults in parentheses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParserLimits {
    /// Most arguments in one command, the command name included (65 536).
    pub args_max: usize,
    /// Longest bulk string, in bytes (1 MiB; Redis allows 512 MiB). Above the service's value
    /// limit so that an over-long value gets the service's error rather than a protocol error.
    pub bulk_bytes_max: usize,
    /// Longest inline command line, in bytes, without its line ending (64 KiB, as Redis).
    pub inline_bytes_max: usize,
    /// Most bytes in all arguments of one command together (4 MiB).
    pub command_bytes_max: usize,
}

impl Default for ParserLimits {
    fn default() -> ParserLimits {
        ParserLimits {
            args_max: 1 << 16,
            bulk_bytes_max: 1 << 20,
            inline_bytes_max: 64 << 10,
            command_bytes_max: 4 << 20,
        }
    }
}

impl ParserLimits {
    /// The most bytes the parser may need buffered at once to make progress: the longest
    /// element (a bulk with its header and line ending, or an inline line). A connection's input
    /// buffer never needs more than this plus one read.
    pub fn element_bytes_max(&self) -> usize {
        (self.bulk_bytes_max + HEADER_LINE_BYTES_MAX + 2).max(self.inline_bytes_max + 2)
    }
}

/// Longest `*N` / `$N` line including `\r\n`: a marker, a sign, 19 digits and the line end
/// fit; anything longer cannot be a valid count.
const HEADER_LINE_BYTES_MAX: usize = 32;

/// Arguments reserved up front for a multibulk command; more grow the vector as they arrive,
/// so a client declaring `*65536` and sending nothing costs nothing.
const ARGS_PREALLOCATE_MAX: usize = 16;

/// A violation of RESP. Its `Display` is the message Redis sends (`Protocol error: ...`);
/// the gateway answers `-ERR ` followed by it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An inline command line longer than [`ParserLimits::inline_bytes_max`].
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// An inline command with an unterminated quote or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A `*N` line that does not end within a few bytes.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `*N` line whose `N` is not an integer.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A command with more than [`ParserLimits::args_max`] arguments.
    #[error("Protocol error: too many arguments (args_max {0})")]
    TooManyArgs(usize),
    /// A `$N` line that does not end within a few bytes.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// A multibulk element that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", DisplayByte(*.0))]
    ExpectedDollar(u8),
    /// A `$N` line whose `N` is not an integer, is negative, or exceeds
    /// [`ParserLimits::bulk_bytes_max`].
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Bulk data not followed by `\r\n`.
    #[error("Protocol error: expected '\\r\\n' after bulk data")]
    MissingBulkTerminator,
    /// A command whose arguments together exceed [`ParserLimits::command_bytes_max`].
    #[error("Protocol error: too big request (command_bytes_max {0})")]
    CommandTooLarge(usize),
}

/// Shows a byte as a character when printable, `\xNN` otherwise.
struct DisplayByte(u8);

impl fmt::Display for DisplayByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "{}", self.0 as char)
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

/// A command: its arguments, the name first. Never empty.
pub type Command = Vec<Vec<u8>>;

/// Where the parser is between calls.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a command.
    Idle,
    /// Inside a multibulk command: `args` are complete, `expected` in all.
    Multibulk {
        expected: usize,
        args: Vec<Vec<u8>>,
        arg_bytes: usize,
    },
    /// After a protocol error: discarding input up to and including the next `\n`.
    Skipping,
}

/// The outcome of [`RespParser::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of the input the parser has used up (a prefix of it). The caller must drop them
    /// before the next call; the parser never consumes more than it was given.
    pub consumed: usize,
    /// `Ok(Some(command))`: a complete command. `Ok(None)`: the input holds no complete
    /// command; call again with more bytes appended. `Err`: a protocol error; the parser has
    /// resynchronised (see the module documentation) and the next call continues.
    pub result: Result<Option<Command>, ProtocolError>,
}

/// A streaming RESP2 command parser (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespParser {
    limits: ParserLimits,
    state: State,
}

/// Result of looking for the end of a line.
enum Line {
    /// The line's content (without `\r\n`) ends before index `next`, where the rest begins.
    Complete { end: usize, next: usize },
    /// No line end yet, within the limit.
    Incomplete,
    /// No line end within the limit.
    TooLong,
}

/// Finds a `\r\n`-terminated line at the start of `buf`, at most `max` bytes including `\r\n`.
fn header_line(buf: &[u8], max: usize) -> Line {
    let window = &buf[..buf.len().min(max)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Line::Complete { end, next: end + 2 },
        None if buf.len() >= max => Line::TooLong,
        None => Line::Incomplete,
    }
}

impl RespParser {
    /// A parser at the start of a stream.
    pub fn new(limits: ParserLimits) -> RespParser {
        RespParser {
            limits,
            state: State::Idle,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ParserLimits {
        &self.limits
    }

    /// Whether the parser holds part of a command (or is skipping after an error): if the
    /// stream ends now, that input is lost.
    pub fn is_mid_command(&self) -> bool {
        self.state != State::Idle
    }

    /// Parses from the start of `input`, the bytes received and not yet consumed. Returns
    /// after one complete command, a protocol error, or when `input` is used up. Never panics,
    /// whatever the bytes.
    pub fn parse(&mut self, input: &[u8]) -> Parsed {
        let mut pos = 0;
        let result = self.parse_from(input, &mut pos);
        Parsed {
            consumed: pos,
            result,
        }
    }

    fn parse_from(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Command>, ProtocolError> {
        loop {
            let buf = &input[*pos..];
            match &mut self.state {
                State::Skipping => match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        *pos += i + 1;
                        self.state = State::Idle;
                    }
                    None => {
                        *pos = input.len();
                        return Ok(None);
                    }
                },
                State::Idle => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        let before = *pos;
                        match self.parse_inline(buf, pos)? {
                            Some(command) => return Ok(Some(command)),
                            // An incomplete line: wait for more bytes.
                            None if *pos == before => return Ok(None),
                            // A blank line, consumed: go on.
                            None => continue,
                        }
                    }
                    let (end, next) = match header_line(buf, HEADER_LINE_BYTES_MAX) {
                        Line::Complete { end, next } => (end, next),
                        Line::Incomplete => return Ok(None),
                        Line::TooLong => {
                            self.state = State::Skipping;
                            return Err(ProtocolError::TooBigMultibulkCount);
                        }
                    };
                    *pos += next;
                    let count = crate::ops::parse_integer(&buf[1..end])
                        .ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if count <= 0 {
                        // `*0` and `*-1` are empty commands; Redis ignores them too.
                        continue;
                    }
                    let count = usize::try_from(count).unwrap_or(usize::MAX);
                    if count > self.limits.args_max {
                        return Err(ProtocolError::TooManyArgs(self.limits.args_max));
                    }
                    self.state = State::Multibulk {
                        expected: count,
                        args: Vec::with_capacity(count.min(ARGS_PREALLOCATE_MAX)),
                        arg_bytes: 0,
                    };
                }
                State::Multibulk {
                    expected,
                    args,
                    arg_bytes,
                } => {
                    if args.len() == *expected {
                        let command = std::mem::take(args);
                        self.state = State::Idle;
                        return Ok(Some(command));
                    }
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        self.state = State::Skipping;
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let (end, next) = match header_line(buf, HEADER_LINE_BYTES_MAX) {
                        Line::Complete { end, next } => (end, next),
                        Line::Incomplete => return Ok(None),
                        Line::TooLong => {
                            self.state = State::Skipping;
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                    };
                    let len = crate::ops::parse_integer(&buf[1..end])
                        .and_then(|len| usize::try_from(len).ok())
                        .filter(|&len| len <= self.limits.bulk_bytes_max);
                    let Some(len) = len else {
                        *pos += next;
                        self.state = State::Idle;
                        return Err(ProtocolError::InvalidBulkLength);
                    };
                    if *arg_bytes + len > self.limits.command_bytes_max {
                        *pos += next;
                        self.state = State::Idle;
                        return Err(ProtocolError::CommandTooLarge(
                            self.limits.command_bytes_max,
                        ));
                    }
                    // Wait for the whole bulk and its line end; the header is re-read then
                    // (it is at most HEADER_LINE_BYTES_MAX bytes).
                    let data_end = next + len;
                    if buf.len() < data_end + 2 {
                        return Ok(None);
                    }
                    if &buf[data_end..data_end + 2] != b"\r\n" {
                        *pos += data_end;
                        self.state = State::Skipping;
                        return Err(ProtocolError::MissingBulkTerminator);
                    }
                    args.push(buf[next..data_end].to_vec());
                    *arg_bytes += len;
                    *pos += data_end + 2;
                }
            }
        }
    }

    /// Parses one inline line at the start of `buf` (which is `input[*pos..]`). Returns
    /// `Ok(None)` without consuming when the line is incomplete, `Ok(None)` after consuming an
    /// empty line, or the command.
    fn parse_inline(
        &mut self,
        buf: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Command>, ProtocolError> {
        let max = self.limits.inline_bytes_max;
        // Content plus "\r\n": the '\n' must be within max + 2 bytes.
        let window = &buf[..buf.len().min(max + 2)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() >= max + 2 {
                self.state = State::Skipping;
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(None);
        };
        let mut line = &buf[..newline];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        *pos += newline + 1;
        if line.len() > max {
            return Err(ProtocolError::TooBigInline);
        }
        let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
        if args.len() > self.limits.args_max {
            return Err(ProtocolError::TooManyArgs(self.limits.args_max));
        }
        if args.is_empty() {
            return Ok(None);
        }
        Ok(Some(args))
    }
}

/// Splits an inline command line into arguments as Redis's `sdssplitargs` does: words separated
/// by whitespace; `"..."` with escapes `\n \r \t \b \a \\ \" \xHH`; `'...'` with `\'`. A closing
/// quote must be followed by whitespace or the end. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = line.get(i).copied();
            if in_double {
                match c {
                    None => return None,
                    Some(b'\\') if hex_escape(line, i).is_some() => {
                        current.extend(hex_escape(line, i));
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        current.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => b'\x08',
                            b'a' => b'\x07',
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // The closing quote must be followed by a space or the end.
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else if in_single {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        current.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if is_space(b) => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => current.push(other),
                }
            }
            i += 1;
        }
        args.push(current);
    }
}

/// The byte of a `\xHH` escape starting at `line[i]`, if there is one.
fn hex_escape(line: &[u8], i: usize) -> Option<u8> {
    match line.get(i..i + 4)? {
        [b'\\', b'x', high, low] => Some(hex(*high)? * 16 + hex(*low)?),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses one command from the start of `buf` with a fresh parser: the stateless form of
/// [`RespParser`], for fuzzing and one-shot use.
///
/// Returns `Ok(Some((command, consumed)))` for a complete command that ends `consumed` bytes
/// into `buf` (empty commands before it, `*0\r\n` or blank lines, are consumed too), `Ok(None)`
/// when `buf` holds no complete command yet, and `Err` for a protocol error. It re-parses from
/// the start on every call, so a stream should be parsed with [`RespParser`], which also
/// resynchronises after errors.
pub fn parse_command(
    buf: &[u8],
    limits: &ParserLimits,
) -> Result<Option<(Command, usize)>, ProtocolError> {
    let mut parser = RespParser::new(limits.clone());
    let parsed = parser.parse(buf);
    Ok(parsed.result?.map(|command| (command, parsed.consumed)))
}

/// A RESP2 reply value, for replies built as a tree; the `write_*` functions write the same
/// encoding directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    /// `+text\r\n`. Line breaks in the text are written as spaces.
    Simple(String),
    /// `-text\r\n`: the whole error line, code first (`ERR syntax error`). Line breaks in
    /// the text are written as spaces.
    Error(String),
    /// `:n\r\n`.
    Integer(i64),
    /// `$len\r\nbytes\r\n`.
    Bulk(Vec<u8>),
    /// The nil bulk string `$-1\r\n`.
    Nil,
    /// `*n\r\n` followed by the elements.
    Array(Vec<RespValue>),
    /// The nil array `*-1\r\n`.
    NilArray,
}

impl RespValue {
    /// A bulk string from anything byte-like.
    pub fn bulk(bytes: impl AsRef<[u8]>) -> RespValue {
        RespValue::Bulk(bytes.as_ref().to_vec())
    }

    /// Appends the encoding to `out`.
    pub fn encode_into<B: BufMut>(&self, out: &mut B) {
        match self {
            RespValue::Simple(text) => write_simple(out, text),
            RespValue::Error(text) => write_error(out, text),
            RespValue::Integer(n) => write_integer(out, *n),
            RespValue::Bulk(bytes) => write_bulk(out, bytes),
            RespValue::Nil => write_nil(out),
            RespValue::Array(items) => {
                write_array_len(out, items.len());
                for item in items {
                    item.encode_into(out);
                }
            }
            RespValue::NilArray => out.put_slice(b"*-1\r\n"),
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Writes a line's text with `\r` and `\n` replaced by spaces (a line break would end the
/// reply early and desynchronise the client; Redis does the same for error messages).
fn put_line_text<B: BufMut>(out: &mut B, text: &str) {
    for chunk in text
        .as_bytes()
        .split(|&b| b == b'\r' || b == b'\n')
        .enumerate()
    {
        if chunk.0 > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(chunk.1);
    }
}

/// Writes a simple string: `+text\r\n`.
pub fn write_simple<B: BufMut>(out: &mut B, text: &str) {
    out.put_u8(b'+');
    put_line_text(out, text);
    out.put_slice(b"\r\n");
}

/// Writes an error: `-line\r\n`, where `line` starts with the error code (`ERR ...`).
pub fn write_error<B: BufMut>(out: &mut B, line: &str) {
    out.put_u8(b'-');
    put_line_text(out, line);
    out.put_slice(b"\r\n");
}

fn put_decimal<B: BufMut>(out: &mut B, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

/// Writes an integer: `:n\r\n`.
pub fn write_integer<B: BufMut>(out: &mut B, n: i64) {
    out.put_u8(b':');
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

fn put_len<B: BufMut>(out: &mut B, marker: u8, len: usize) {
    out.put_u8(marker);
    put_decimal(out, i64::try_from(len).unwrap_or(i64::MAX));
    out.put_slice(b"\r\n");
}

/// Writes a bulk string: `$len\r\nbytes\r\n`.
pub fn write_bulk<B: BufMut>(out: &mut B, bytes: &[u8]) {
    put_len(out, b'$', bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Writes the nil bulk string: `$-1\r\n`.
pub fn write_nil<B: BufMut>(out: &mut B) {
    out.put_slice(b"$-1\r\n");
}

/// Writes an array header `*n\r\n`; the caller writes the `n` elements after it.
pub fn write_array_len<B: BufMut>(out: &mut B, n: usize) {
    put_len(out, b'*', n);
}

/// Writes a command as a client sends it: an array of bulk strings.
pub fn encode_command<B: BufMut, A: AsRef<[u8]>>(out: &mut B, args: &[A]) {
    write_array_len(out, args.len());
    for arg in args {
        write_bulk(out, arg.as_ref());
    }
}

#[cfg(test)]
mod tests;
