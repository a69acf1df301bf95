//! RESP2, the Redis protocol, as a client speaks it to the server: requests in, replies out.
//!
//! A request is an array of bulk strings (`*<n>\r\n` then `$<len>\r\n<bytes>\r\n` each), what
//! redis-cli, redis-benchmark and client libraries send, or an inline command (one line of words,
//! what a person types over telnet). Bytes from a client are untrusted: [`parse_request`] never
//! panics, never allocates more than the bytes it was given plus what [`Limits`] allow, and
//! answers malformed input with a [`ProtocolError`] (the server replies with it and closes the
//! connection, as Redis does).

use std::fmt;

/// How large a request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Arguments in one request (the command included).
    pub args_max: usize,
    /// Bytes of one argument.
    pub arg_bytes_max: usize,
    /// Bytes of an inline command line.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    /// 65,536 arguments (Redis allows 1,048,576), 512 MiB per argument (Redis's
    /// `proto-max-bulk-len`), 64 KiB per inline line (Redis's inline limit).
    fn default() -> Limits {
        Limits { args_max: 65_536, arg_bytes_max: 512 << 20, inline_bytes_max: 64 << 10 }
    }
}

/// Why bytes from a client are not a request: where and what (Redis's wording where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {what} (at byte {offset})")]
pub struct ProtocolError {
    /// Offset in the bytes given.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

fn error(offset: usize, what: impl Into<String>) -> ProtocolError {
    ProtocolError { offset, what: what.into() }
}

/// The line starting at `at` (without its `\r\n`) and the offset after it, if complete.
fn line(bytes: &[u8], at: usize, max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &bytes[at..];
    match rest.iter().position(|&b| b == b'\n') {
        None if rest.len() > max => Err(error(at, format!("a line longer than {max} bytes"))),
        None => Ok(None),
        Some(n) if n > max => Err(error(at, format!("a line longer than {max} bytes"))),
        Some(n) => {
            let l = &rest[..n];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            Ok(Some((l, at + n + 1)))
        }
    }
}

/// A decimal number of a header line (`*3`, `$5`), within `0..=max`.
fn number(digits: &[u8], at: usize, what: &str, max: usize) -> Result<usize, ProtocolError> {
    let text = std::str::from_utf8(digits).map_err(|_| error(at, format!("invalid {what}")))?;
    let n: i64 = text.parse().map_err(|_| error(at, format!("invalid {what}")))?;
    if n < 0 || n as u64 > max as u64 {
        return Err(error(at, format!("invalid {what} {n} (at most {max})")));
    }
    Ok(n as usize)
}

/// A parsed request: its arguments (the command first) and the bytes it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses the request at the start of `bytes`: `Ok(None)` if more bytes are needed, or the
/// arguments and the bytes they took.
pub fn parse_request(bytes: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some(&first) = bytes.first() else { return Ok(None) };
    if first != b'*' {
        return parse_inline(bytes, limits);
    }
    let Some((header, mut at)) = line(bytes, 0, 32)? else { return Ok(None) };
    let count = number(&header[1..], 1, "multibulk length", limits.args_max)?;
    // Each argument takes at least 6 bytes (`$0\r\n\r\n`): reserve no more than could be honest.
    let mut args = Vec::with_capacity(count.min(bytes.len() / 6 + 1));
    for _ in 0..count {
        let Some((header, after)) = line(bytes, at, 32)? else { return Ok(None) };
        if header.first() != Some(&b'$') {
            return Err(error(at, format!("expected '$', got '{}'", header.first().map_or('?', |&b| b as char))));
        }
        let len = number(&header[1..], at + 1, "bulk length", limits.arg_bytes_max)?;
        if bytes.len() < after + len + 2 {
            return Ok(None);
        }
        if &bytes[after + len..after + len + 2] != b"\r\n" {
            return Err(error(after + len, "a bulk string not followed by CRLF"));
        }
        args.push(bytes[after..after + len].to_vec());
        at = after + len + 2;
    }
    Ok(Some((args, at)))
}

/// An inline command: words separated by spaces, up to a newline.
fn parse_inline(bytes: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some((l, at)) = line(bytes, 0, limits.inline_bytes_max)? else { return Ok(None) };
    let args: Vec<Vec<u8>> =
        l.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty()).map(<[u8]>::to_vec).collect();
    if args.len() > limits.args_max {
        return Err(error(0, format!("more than {} arguments", limits.args_max)));
    }
    Ok(Some((args, at)))
}

/// A reply to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (the text includes its prefix, `ERR` or another).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`, or `$-1` for none.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`, or `*-1` for none.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply's bytes. Simple strings and errors never carry a newline (replaced by spaces).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        match self {
            Reply::Simple(s) => out.extend_from_slice(format!("+{}\r\n", clean(s)).as_bytes()),
            Reply::Error(s) => out.extend_from_slice(format!("-{}\r\n", clean(s)).as_bytes()),
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|r| r.encode(out));
            }
        }
    }
}

/// A parsed reply and the bytes it took.
pub type ParsedReply = (Reply, usize);

/// Parses the reply at the start of `bytes` (what a server sends: this server asks another
/// member on a client's behalf): `Ok(None)` if more bytes are needed. Untrusted like a request:
/// never panics, nests at most 4 arrays deep, and takes at most `bytes_max` bytes in all.
pub fn parse_reply(bytes: &[u8], bytes_max: usize) -> Result<Option<ParsedReply>, ProtocolError> {
    parse_reply_at(bytes, 0, bytes_max, 4)
}

fn parse_reply_at(
    bytes: &[u8],
    at: usize,
    bytes_max: usize,
    depth: usize,
) -> Result<Option<ParsedReply>, ProtocolError> {
    let Some((l, after)) = line(bytes, at, 64 << 10)? else { return Ok(None) };
    let Some((&kind, rest)) = l.split_first() else { return Err(error(at, "an empty reply line")) };
    let text = |what: &str| {
        std::str::from_utf8(rest).map(str::to_string).map_err(|_| error(at, format!("{what} that is not UTF-8")))
    };
    let signed = |what: &str| -> Result<i64, ProtocolError> {
        std::str::from_utf8(rest).ok().and_then(|t| t.parse().ok()).ok_or_else(|| error(at, format!("invalid {what}")))
    };
    let reply = match kind {
        b'+' => Reply::Simple(text("a simple string")?),
        b'-' => Reply::Error(text("an error")?),
        b':' => Reply::Integer(signed("integer")?),
        b'$' => match bulk_len(bytes, at, after, rest, bytes_max)? {
            None => return Ok(None),
            Some(None) => Reply::Bulk(None),
            Some(Some(n)) => return Ok(Some((Reply::Bulk(Some(bytes[after..after + n].to_vec())), after + n + 2))),
        },
        b'*' => match signed("multibulk length")? {
            -1 => Reply::Array(None),
            n if n < 0 || n as u64 > bytes_max as u64 / 4 => {
                return Err(error(at, format!("invalid multibulk length {n}")));
            }
            _ if depth == 0 => return Err(error(at, "arrays nested too deep")),
            n => {
                // Each item takes at least 4 bytes (`:0\r\n`): reserve no more than could be honest.
                let mut items = Vec::with_capacity((n as usize).min(bytes.len() / 4 + 1));
                let mut at = after;
                for _ in 0..n {
                    let Some((item, next)) = parse_reply_at(bytes, at, bytes_max, depth - 1)? else { return Ok(None) };
                    items.push(item);
                    at = next;
                }
                return Ok(Some((Reply::Array(Some(items)), at)));
            }
        },
        other => return Err(error(at, format!("unknown reply type '{}'", other as char))),
    };
    if after > bytes_max {
        return Err(error(at, format!("a reply longer than {bytes_max} bytes")));
    }
    Ok(Some((reply, after)))
}

/// The bulk string whose header line (`rest`, after its `$`) starts at `at` and ends at `after`:
/// `Some(None)` for the null bulk, `Some(Some(n))` for `n` bytes present with their CRLF, `None`
/// if more bytes are needed.
fn bulk_len(
    bytes: &[u8],
    at: usize,
    after: usize,
    rest: &[u8],
    bytes_max: usize,
) -> Result<Option<Option<usize>>, ProtocolError> {
    let n: i64 =
        std::str::from_utf8(rest).ok().and_then(|t| t.parse().ok()).ok_or_else(|| error(at, "invalid bulk length"))?;
    if n == -1 {
        return Ok(Some(None));
    }
    if n < 0 || n as u64 > bytes_max as u64 {
        return Err(error(at, format!("invalid bulk length {n} (at most {bytes_max})")));
    }
    let n = n as usize;
    if bytes.len() < after + n + 2 {
        return Ok(None);
    }
    if &bytes[after + n..after + n + 2] != b"\r\n" {
        return Err(error(after + n, "a bulk string not followed by CRLF"));
    }
    Ok(Some(Some(n)))
}

/// Finds where the reply at the start of a growing buffer ends, resumably: it remembers how far
/// it got, so a reply read in many pieces is scanned once, not once per piece. It checks the
/// framing only (line types, lengths, CRLFs, array nesting at most 4 deep, `bytes_max`);
/// [`parse_reply`] of the bytes it delimits builds the reply.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    at: usize,
    /// Items each open array still expects, innermost last.
    open: Vec<usize>,
}

impl ReplyScanner {
    /// `Ok(Some(n))` once the first `n` bytes of `bytes` hold one whole reply; `Ok(None)` if
    /// more are needed. Call again with the same bytes and more appended.
    pub fn scan(&mut self, bytes: &[u8], bytes_max: usize) -> Result<Option<usize>, ProtocolError> {
        loop {
            let at = self.at;
            let Some((l, after)) = line(bytes, at, 64 << 10)? else { return Ok(None) };
            let Some((&kind, rest)) = l.split_first() else { return Err(error(at, "an empty reply line")) };
            let length = || -> Result<i64, ProtocolError> {
                std::str::from_utf8(rest).ok().and_then(|t| t.parse().ok()).ok_or_else(|| error(at, "invalid length"))
            };
            let end = match kind {
                b'+' | b'-' | b':' => after,
                b'$' => match bulk_len(bytes, at, after, rest, bytes_max)? {
                    None => return Ok(None),
                    Some(None) => after,
                    Some(Some(n)) => after + n + 2,
                },
                b'*' => match length()? {
                    -1 | 0 => after,
                    n if n < 0 || n as u64 > bytes_max as u64 / 4 => {
                        return Err(error(at, format!("invalid multibulk length {n}")));
                    }
                    _ if self.open.len() == 4 => return Err(error(at, "arrays nested too deep")),
                    n => {
                        self.open.push(n as usize);
                        self.at = after;
                        continue;
                    }
                },
                other => return Err(error(at, format!("unknown reply type '{}'", other as char))),
            };
            if end > bytes_max {
                return Err(error(at, format!("a reply longer than {bytes_max} bytes")));
            }
            self.at = end;
            // A value ended: so do the arrays it was the last item of.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(end)),
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
            }
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = Vec::new();
        self.encode(&mut b);
        write!(f, "{}", String::from_utf8_lossy(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn replies_round_trip_wait_when_cut_short_and_refuse_garbage() {
        let replies = [
            Reply::Simple("OK".into()),
            Reply::Error("NOSPACE full".into()),
            Reply::Integer(-42),
            Reply::Bulk(None),
            Reply::Bulk(Some(b"va\r\nlue".to_vec())),
            Reply::Array(None),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Bulk(None), Reply::Integer(7)])),
            Reply::Array(Some(vec![Reply::Array(Some(vec![]))])),
        ];
        for r in replies {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(parse_reply(&b, 1 << 20), Ok(Some((r.clone(), b.len()))), "{r}");
            for cut in 0..b.len() {
                assert_eq!(parse_reply(&b[..cut], 1 << 20), Ok(None), "{r} cut at {cut}");
            }
        }
        for bad in [&b"?x\r\n"[..], b"\r\n", b"$-2\r\n", b"$3\r\nabcd\r\n", b"*-5\r\n", b":x\r\n", b"$99999999999\r\n"]
        {
            assert!(parse_reply(bad, 1 << 20).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Nested too deep, and too large for the bound.
        assert!(parse_reply(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 1 << 20).is_err());
        assert!(parse_reply(b"$10\r\n", 4).is_err());
    }

    /// The scanner agrees with `parse_reply` on where a reply ends, fed a byte at a time, and
    /// scans a large reply read in pieces in time linear in its size.
    #[test]
    fn the_scanner_finds_where_a_reply_ends_fed_in_pieces() {
        let replies = [
            Reply::Simple("OK".into()),
            Reply::Bulk(Some(b"va\r\nlue".to_vec())),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Bulk(None), Reply::Integer(7)])),
            Reply::Array(Some(vec![Reply::Array(Some(vec![])), Reply::Array(Some(vec![Reply::Integer(1)]))])),
            Reply::Array(None),
        ];
        for r in replies {
            let mut b = Vec::new();
            r.encode(&mut b);
            b.extend_from_slice(b"+next\r\n");
            let whole = parse_reply(&b, 1 << 20).unwrap().unwrap().1;
            let mut scanner = ReplyScanner::default();
            let found = (1..=b.len()).find_map(|n| scanner.scan(&b[..n], 1 << 20).unwrap());
            assert_eq!(found, Some(whole), "{r}");
        }
        assert!(ReplyScanner::default().scan(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 1 << 20).is_err());
        // 200,000 items read 64 KiB at a time: one pass, not one per piece.
        let big =
            Reply::Array(Some((0..200_000).map(|i| Reply::Bulk(Some(format!("{i:040}").into_bytes()))).collect()));
        let mut b = Vec::new();
        big.encode(&mut b);
        let mut scanner = ReplyScanner::default();
        let mut found = None;
        for end in (65_536..b.len() + 65_536).step_by(65_536) {
            if let Some(n) = scanner.scan(&b[..end.min(b.len())], 64 << 20).unwrap() {
                found = Some(n);
                break;
            }
        }
        assert_eq!(found, Some(b.len()));
    }

    #[test]
    fn requests_parse_whole_and_wait_when_cut_short() {
        let limits = Limits::default();
        let bytes = request(&[b"SET", b"key", b"va\r\nlue"]);
        let (args, n) = parse_request(&bytes, &limits).unwrap().unwrap();
        assert_eq!((args, n), (vec![b"SET".to_vec(), b"key".to_vec(), b"va\r\nlue".to_vec()], bytes.len()));
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut], &limits), Ok(None), "cut at {cut}");
        }
        // Pipelined: two requests back to back.
        let mut two = request(&[b"PING"]);
        two.extend(request(&[b"GET", b"k"]));
        let (a, n) = parse_request(&two, &limits).unwrap().unwrap();
        assert_eq!(a, vec![b"PING".to_vec()]);
        assert_eq!(parse_request(&two[n..], &limits).unwrap().unwrap().0, vec![b"GET".to_vec(), b"k".to_vec()]);
        // Inline, as typed.
        assert_eq!(
            parse_request(b"set  a 1\r\n", &limits).unwrap().unwrap().0,
            vec![b"set".to_vec(), b"a".to_vec(), b"1".to_vec()]
        );
        assert_eq!(parse_request(b"ping", &limits), Ok(None));
    }

    #[test]
    fn malformed_and_oversized_requests_are_protocol_errors_before_allocating() {
        let limits = Limits { args_max: 8, arg_bytes_max: 16, inline_bytes_max: 32 };
        for bad in [
            &b"*-1\r\n"[..],
            b"*x\r\n",
            b"*9\r\n",
            b"*1\r\n+OK\r\n",
            b"*1\r\n$17\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*99999999999999999999\r\n",
            b"*1\r\n$-5\r\n",
        ] {
            assert!(parse_request(bad, &limits).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_request(&[b'a'; 40], &limits).is_err(), "an inline line past the limit, unterminated");
        assert!(parse_request(&[b'*'; 40], &limits).is_err(), "a header line past 32 bytes");
        // Every byte of a good request, flipped: an error, a wait or another request, never a
        // panic.
        let bytes = request(&[b"SET", b"k", b"v"]);
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = parse_request(&b, &Limits::default());
            }
        }
    }

    #[test]
    fn replies_encode_as_redis_does() {
        let mut out = Vec::new();
        Reply::Array(Some(vec![
            Reply::Simple("OK".into()),
            Reply::Error("ERR no\r\nsuch".into()),
            Reply::Integer(-3),
            Reply::Bulk(Some(b"v".to_vec())),
            Reply::Bulk(None),
            Reply::Array(None),
        ]))
        .encode(&mut out);
        assert_eq!(out, b"*6\r\n+OK\r\n-ERR no  such\r\n:-3\r\n$1\r\nv\r\n$-1\r\n*-1\r\n");
    }
}
