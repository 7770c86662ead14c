//! HTTP/1.1 framing for the upstream side (RFC 9112): the request head we write to a backend,
//! the response head we read back, how long the response body is, and the chunked decoder.
//!
//! Why our own: hyper's client connection cost about 14.5k instructions per proxied request
//! (a third of the total; see bench/README.md), most of it in its dispatcher, which is built for
//! a connection that lives in a task of its own. The pool (`pool.rs`) drives its connections from
//! the request's task, so all it needs is this: a head encoder, `httparse` for the response head
//! (the parser hyper itself uses), and the body-length rules.
//!
//! Pure functions over bytes: this module does no I/O and must not look at routes or policy.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The largest response head we accept (nginx's `proxy_buffer_size` is 4 or 8 KiB; we are
/// more lenient, since cookies and CSP headers grow).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head, as hyper's default.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Spare header maps kept per thread, and the largest one kept.
const SPARE_MAPS: usize = 64;
const SPARE_MAX_CAPACITY: usize = 64;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `capacity` fields: a spare one when this thread has one.
/// Each HTTP/1 exchange builds two maps (the request's, the response's); allocating and freeing
/// their two tables each was 3% of a small request's instructions.
pub(crate) fn header_map(capacity: usize) -> HeaderMap {
    let mut map = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    map.reserve(capacity);
    map
}

/// Gives a map that is done with back for [`header_map`] to hand out again, emptied.
pub(crate) fn recycle_map(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAX_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// A backend's response that we cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H1Error {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("an upgrade (101) to a request that did not ask for one")]
    UnexpectedUpgrade,
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body: the head says whatever the client's head said (`Content-Length: 0` or nothing).
    None,
    Length(u64),
    Chunked,
}

/// Chooses the request framing: the client's body is re-framed, never trusted as declared,
/// since `Transfer-Encoding` is hop-by-hop and the proxy strips it (RFC 9112 §6.1).
pub fn request_framing(end_stream: bool, exact_len: Option<u64>) -> ReqFraming {
    match (end_stream, exact_len) {
        (true, _) => ReqFraming::None,
        (false, Some(n)) => ReqFraming::Length(n),
        (false, None) => ReqFraming::Chunked,
    }
}

/// Writes the request line and header section (origin-form, RFC 9112 §3.2.1).
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    appended: Option<&crate::headers::Appended<'_>>,
    framing: ReqFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if path_and_query.is_empty() {
        b"/"
    } else {
        path_and_query.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let reframed = framing != ReqFraming::None;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (reframed && name == header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(appended) = appended {
        appended.each(|name, value| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        });
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(decimal(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The size line that starts a chunk of `len` bytes (RFC 9112 §7.1).
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// Ends a chunked body, with trailer fields if there are any (RFC 9112 §7.1.2); without any,
/// the fixed five bytes (no allocation).
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(trailers) = trailers.filter(|t| !t.is_empty()) else {
        return Bytes::from_static(b"0\r\n\r\n");
    };
    let mut out = b"0\r\n".to_vec();
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// `n` in decimal, written into `buf` (a `to_string` was an allocation per response).
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The framing fields, read from the raw fields as they are parsed (looking them up in the
    /// map afterwards hashed each name: 4% of a small request's instructions).
    framing: Framing,
}

/// What a head's framing fields say (RFC 9112 §6.3, §9.3).
#[derive(Debug, Default, Clone, Copy)]
struct Framing {
    /// The last `Transfer-Encoding` field, if any: whether its last coding is `chunked`.
    te_chunked: Option<bool>,
    length: Length,
    /// `Connection` lists `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
}

/// Every `Content-Length` value and list element, merged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Is(u64),
    /// Malformed, or values that disagree.
    Invalid,
}

impl Framing {
    /// Takes one field into account, matching names as text.
    fn add(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            self.te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u64>().ok());
                self.length = match (self.length, n) {
                    (Length::Absent, Some(n)) => Length::Is(n),
                    (Length::Is(l), Some(n)) if l == n => Length::Is(n),
                    _ => Length::Invalid,
                };
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// Field offsets kept on the stack while a head is parsed; more spill to the heap.
const INLINE_FIELDS: usize = 24;

/// The name and value offsets of a parsed head's fields, `[name start, name end, value start,
/// value end]`, relative to the buffer parsed: the buffer can then be split and the values
/// share its bytes. On the stack for a usual head (a `Vec` here was an allocation per head).
pub(crate) struct FieldSpans {
    inline: [[usize; 4]; INLINE_FIELDS],
    len: usize,
    spilled: Vec<[usize; 4]>,
}

impl Default for FieldSpans {
    fn default() -> Self {
        FieldSpans {
            inline: [[0; 4]; INLINE_FIELDS],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl FieldSpans {
    /// Records the fields' offsets in `buf`, whose bytes they borrow.
    pub(crate) fn collect(&mut self, buf: &[u8], fields: &[httparse::Header<'_>]) {
        let base = buf.as_ptr() as usize;
        let span = |h: &httparse::Header<'_>| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            [name, name + h.name.len(), value, value + h.value.len()]
        };
        self.len = fields.len();
        if fields.len() <= INLINE_FIELDS {
            for (slot, h) in self.inline.iter_mut().zip(fields) {
                *slot = span(h);
            }
        } else {
            self.spilled = fields.iter().map(span).collect();
        }
    }

    pub(crate) fn as_slice(&self) -> &[[usize; 4]] {
        if self.len <= INLINE_FIELDS {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

/// Parses a response head from the front of `buf`, taking its bytes out of it.
/// `Ok(None)`: not all of it has arrived yet.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    // Uninitialized slots: zeroing 128 of them cost more than the parse (callgrind).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(H1Error::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Head("too many header fields"));
        }
        Err(_) => return Err(H1Error::Head("malformed")),
    };
    if len > MAX_HEAD {
        return Err(H1Error::HeadTooLarge);
    }
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Head("bad status code"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Offsets first (the field slices borrow `buf`, which is about to be split so that the
    // values can share its bytes instead of being copied).
    let mut spans = FieldSpans::default();
    spans.collect(buf, resp.headers);
    let spans = spans.as_slice();
    let mut framing = Framing::default();
    for h in resp.headers.iter() {
        framing.add(h.name, h.value);
    }
    let head = buf.split_to(len).freeze();
    let mut headers = header_map(spans.len());
    for &[ns, ne, vs, ve] in spans {
        let name =
            HeaderName::from_bytes(&head[ns..ne]).map_err(|_| H1Error::Head("bad field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::Head("bad field value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
    }))
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes: the connection cannot be reused.
    UntilClose,
}

/// The response body's length, from the request method and the response head.
pub fn response_body_len(method: &Method, head: &Head) -> Result<BodyLen, H1Error> {
    let s = head.status.as_u16();
    // §6.3 rule 1: HEAD responses, 1xx, 204 and 304 have no body whatever their headers say.
    if method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(BodyLen::Empty);
    }
    // Rule 4: Transfer-Encoding wins over Content-Length; chunked must be the last coding.
    let f = &head.framing;
    if let Some(chunked) = f.te_chunked {
        return Ok(if chunked {
            BodyLen::Chunked
        } else {
            BodyLen::UntilClose
        });
    }
    // Rule 5: every Content-Length value (and list element) must agree.
    Ok(match f.length {
        Length::Invalid => return Err(H1Error::ContentLength),
        Length::Is(0) => BodyLen::Empty,
        Length::Is(n) => BodyLen::Length(n),
        Length::Absent => BodyLen::UntilClose,
    })
}

/// Whether a head has both Transfer-Encoding and Content-Length (RFC 9112 §6.3 rule 3).
pub fn framed_twice(head: &Head) -> bool {
    head.framing.te_chunked.is_some() && head.framing.length != Length::Absent
}

/// Whether the connection may carry another request after this response (RFC 9112 §9.3).
pub fn keep_alive(head: &Head) -> bool {
    let f = &head.framing;
    !f.close && (head.version != Version::HTTP_10 || f.keep_alive)
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    Done,
}

/// What the decoder produced from the buffer.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Data(Bytes),
    /// The end of the body, with its trailer fields if there were any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

/// Decodes a chunked body (RFC 9112 §7.1) from a buffer the caller keeps filling.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes what it can from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, H1Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(H1Error::Chunked("chunk-size line too long"));
                        }
                        return Ok(Chunk::More);
                    };
                    let size = parse_chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::More);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = if left == n as u64 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n as u64)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunked("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Chunk::End(None));
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    trailers.append(n, v);
                                }
                            }
                            buf.advance(len);
                            self.state = ChunkState::Done;
                            return Ok(Chunk::End(Some(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                            return Ok(Chunk::More);
                        }
                        _ => return Err(H1Error::Chunked("invalid trailer section")),
                    }
                }
                ChunkState::Done => return Ok(Chunk::End(None)),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// `chunk-size [ chunk-ext ]`: hex digits, then optional whitespace and `;`-extensions, which
/// carry nothing we use.
fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::Chunked("chunk size is not hexadecimal"));
    }
    if digits > 15 {
        return Err(H1Error::Chunked("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .position(|&b| b == b';')
        .map_or(rest, |i| &rest[..i])
        .iter()
        .all(|&b| b == b' ' || b == b'\t');
    if !rest_ok {
        return Err(H1Error::Chunked("junk after chunk size"));
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| H1Error::Chunked("chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| H1Error::Chunked("chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        let mut b = BytesMut::from(raw);
        parse_response_head(&mut b).unwrap().unwrap()
    }

    fn encoded(method: Method, pq: &str, h: &[(&str, &str)], f: ReqFraming) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in h {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        encode_request_head(&mut out, &method, pq, &map, None, f);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_head_is_origin_form_with_fields_in_order() {
        let s = encoded(
            Method::GET,
            "/a?b=1",
            &[("host", "x"), ("accept", "*/*")],
            ReqFraming::None,
        );
        assert_eq!(s, "GET /a?b=1 HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\r\n");
    }

    #[test]
    fn request_head_writes_appended_fields_after_the_clients() {
        static HOST: HeaderValue = HeaderValue::from_static("app.example.com");
        let hop = crate::headers::Hop {
            peer: "10.0.0.1".parse().unwrap(),
            peer_text: "10.0.0.1",
            peer_trusted: false,
            client_ip: "10.0.0.1".parse().unwrap(),
            proto: "https",
            host: &HOST,
        };
        let mut map = HeaderMap::new();
        map.insert("host", HOST.clone());
        map.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let appended = crate::headers::untrusted_forwarding(&mut map, &hop, Some("/api"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::GET,
            "/x",
            &map,
            Some(&appended),
            ReqFraming::None,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nhost: app.example.com\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-real-ip: 10.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: app.example.com\r\nx-forwarded-prefix: /api\r\n\r\n"
        );
    }

    #[test]
    fn request_head_empty_path_becomes_slash() {
        let s = encoded(Method::OPTIONS, "", &[], ReqFraming::None);
        assert!(s.starts_with("OPTIONS / HTTP/1.1\r\n"));
    }

    #[test]
    fn request_head_reframes_a_known_length() {
        let s = encoded(
            Method::POST,
            "/",
            &[("content-length", "999")],
            ReqFraming::Length(5),
        );
        assert_eq!(s, "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
    }

    #[test]
    fn request_head_chunked_drops_content_length_and_old_transfer_encoding() {
        let s = encoded(
            Method::POST,
            "/",
            &[("content-length", "5"), ("transfer-encoding", "gzip")],
            ReqFraming::Chunked,
        );
        assert_eq!(s, "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
    }

    #[test]
    fn request_head_bodiless_keeps_the_clients_content_length_zero() {
        let s = encoded(
            Method::POST,
            "/",
            &[("content-length", "0")],
            ReqFraming::None,
        );
        assert_eq!(s, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn decimal_lengths() {
        for n in [0, 7, 10, 65_536, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_recycled_map_comes_back_empty() {
        let mut m = header_map(4);
        m.insert("x-a", HeaderValue::from_static("1"));
        recycle_map(m);
        let m = header_map(2);
        assert!(m.is_empty());
        assert!(m.capacity() >= 2);
    }

    #[test]
    fn framing_follows_the_body() {
        assert_eq!(request_framing(true, Some(0)), ReqFraming::None);
        assert_eq!(request_framing(false, Some(7)), ReqFraming::Length(7));
        assert_eq!(request_framing(false, None), ReqFraming::Chunked);
    }

    #[test]
    fn last_chunk_carries_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(&last_chunk(Some(&t))[..], b"0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(&last_chunk(None)[..], b"0\r\n\r\n");
        assert_eq!(&chunk_header(255)[..], b"ff\r\n");
    }

    #[test]
    fn response_head_partial_waits() {
        let raw = "HTTP/1.1 200 OK\r\nA: b\r\n";
        let mut b = BytesMut::from(raw);
        assert!(parse_response_head(&mut b).unwrap().is_none());
        assert_eq!(b.len(), raw.len(), "nothing consumed");
    }

    #[test]
    fn response_head_leaves_the_body_in_the_buffer() {
        let mut b = BytesMut::from(
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody",
        );
        let h = parse_response_head(&mut b).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers["x-a"], "1");
        // Several Set-Cookie fields stay several (RFC 6265 §3).
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(&b[..], b"body");
    }

    #[test]
    fn response_head_http10_is_recognised() {
        assert_eq!(head("HTTP/1.0 200 OK\r\n\r\n").version, Version::HTTP_10);
    }

    #[test]
    fn response_head_garbage_is_an_error() {
        let mut b = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
        assert!(parse_response_head(&mut b).is_err());
    }

    #[test]
    fn response_head_obs_fold_is_an_error() {
        // RFC 9112 §5.2: obsolete line folding is not accepted.
        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n");
        assert!(parse_response_head(&mut b).is_err());
    }

    #[test]
    fn response_head_too_large_is_an_error() {
        let mut b =
            BytesMut::from(format!("HTTP/1.1 200 OK\r\nA: {}", "x".repeat(MAX_HEAD)).as_str());
        assert_eq!(
            parse_response_head(&mut b).unwrap_err(),
            H1Error::HeadTooLarge
        );
    }

    #[test]
    fn body_len_head_request_is_empty() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(response_body_len(&Method::HEAD, &h), Ok(BodyLen::Empty));
    }

    #[test]
    fn body_len_204_and_304_are_empty() {
        for s in ["204 No Content", "304 Not Modified"] {
            let h = head(&format!("HTTP/1.1 {s}\r\nContent-Length: 10\r\n\r\n"));
            assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Empty));
        }
    }

    #[test]
    fn body_len_content_length() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Length(10)));
    }

    #[test]
    fn body_len_zero_is_empty() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Empty));
    }

    #[test]
    fn body_len_equal_repeated_lengths_are_one() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Length(3)));
    }

    #[test]
    fn body_len_conflicting_lengths_are_an_error() {
        // RFC 9112 §6.3 rule 5: a response smuggling attempt, never guess.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(
            response_body_len(&Method::GET, &h),
            Err(H1Error::ContentLength)
        );
    }

    #[test]
    fn body_len_signed_length_is_an_error() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n");
        assert_eq!(
            response_body_len(&Method::GET, &h),
            Err(H1Error::ContentLength)
        );
    }

    #[test]
    fn body_len_chunked_wins_over_content_length() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Chunked));
    }

    #[test]
    fn framed_twice_is_transfer_encoding_and_content_length_together() {
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(framed_twice(&head(both)));
        assert!(!framed_twice(&head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
        )));
        assert!(!framed_twice(&head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        )));
    }

    #[test]
    fn body_len_non_chunked_coding_reads_until_close() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::UntilClose));
    }

    #[test]
    fn body_len_the_last_transfer_encoding_field_decides() {
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::UntilClose));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n",
        );
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::Chunked));
    }

    #[test]
    fn body_len_empty_or_overflowing_length_is_an_error() {
        for v in ["", "1,", "99999999999999999999999"] {
            let h = head(&format!("HTTP/1.1 200 OK\r\nContent-Length: {v}\r\n\r\n"));
            assert_eq!(
                response_body_len(&Method::GET, &h),
                Err(H1Error::ContentLength),
                "{v:?}"
            );
        }
    }

    #[test]
    fn body_len_without_framing_reads_until_close() {
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(response_body_len(&Method::GET, &h), Ok(BodyLen::UntilClose));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(keep_alive(&head("HTTP/1.1 200 OK\r\n\r\n")));
        assert!(!keep_alive(&head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        )));
        assert!(!keep_alive(&head("HTTP/1.0 200 OK\r\n\r\n")));
        assert!(keep_alive(&head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"
        )));
        assert!(!keep_alive(&head(
            "HTTP/1.1 200 OK\r\nConnection: x, Close\r\n\r\n"
        )));
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        // One byte at a time: every state must cope with a split anywhere.
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            loop {
                match d.decode(&mut buf)? {
                    Chunk::Data(x) => out.extend_from_slice(&x),
                    Chunk::End(t) => return Ok((out, t)),
                    Chunk::More => break,
                }
            }
        }
        Err(H1Error::Chunked("incomplete"))
    }

    #[test]
    fn chunked_decodes_split_anywhere() {
        let (body, t) = decode_all(b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello!");
        assert!(t.is_none());
    }

    #[test]
    fn chunked_keeps_trailers() {
        let (body, t) = decode_all(b"2\r\nhi\r\n0\r\nX-Sum: 9\r\n\r\n").unwrap();
        assert_eq!(body, b"hi");
        assert_eq!(t.unwrap()["x-sum"], "9");
    }

    #[test]
    fn chunked_rejects_missing_crlf_after_data() {
        assert!(decode_all(b"2\r\nhiX\r\n0\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_rejects_bad_size() {
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"-1\r\n").is_err());
        assert!(decode_all(b"1 2\r\n").is_err());
    }

    #[test]
    fn chunked_rejects_oversized_size() {
        assert!(decode_all(b"ffffffffffffffff\r\n").is_err());
    }

    #[test]
    fn chunked_round_trips_random_bodies_split_at_random_points() {
        // A small deterministic generator: no dependency, same cases every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut wire = Vec::new();
            let mut body = Vec::new();
            for _ in 0..next(6) {
                let len = 1 + next(300) as usize;
                let chunk: Vec<u8> = (0..len).map(|_| next(256) as u8).collect();
                wire.extend_from_slice(format!("{len:X}").as_bytes());
                if next(3) == 0 {
                    wire.extend_from_slice(b";name=value");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&chunk);
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(&chunk);
            }
            wire.extend_from_slice(b"0\r\n\r\nNEXT");
            let mut d = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let end = loop {
                match d.decode(&mut buf).unwrap() {
                    Chunk::Data(x) => out.extend_from_slice(&x),
                    Chunk::End(t) => break t,
                    Chunk::More => {
                        assert!(!rest.is_empty(), "decoder wants more than the body");
                        let take = 1 + next(rest.len() as u64) as usize;
                        buf.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                    }
                }
            };
            assert!(end.is_none());
            assert_eq!(out, body);
            let mut left = buf.to_vec();
            left.extend_from_slice(rest);
            assert_eq!(left, b"NEXT", "bytes after the body are left alone");
        }
    }

    #[test]
    fn chunked_leaves_what_follows_in_the_buffer() {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Chunk::Data(Bytes::from_static(b"a")))
        );
        assert_eq!(d.decode(&mut buf), Ok(Chunk::End(None)));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
    }
}
