//! HTTP/1.1 on a blocking socket: reading one request (head parsed by `httparse`, body by
//! `Content-Length` or chunked transfer coding, `Expect: 100-continue` answered) under a
//! deadline, and writing a response with `Content-Length`. Connections stay open between
//! requests (keep-alive) unless the client or an error says otherwise.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 64;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The target without its query string.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (or the keep-alive wait ended) before a request began.
    Closed,
    /// The request did not arrive in time (408).
    Timeout,
    /// The request is malformed (400) or too large (413/431); the message says which.
    Bad { status: u16, message: String },
    /// A socket error mid-request.
    Io(io::Error),
}

/// A connection's read side: the socket and the bytes received but not yet consumed (the start
/// of a pipelined next request).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`. `Ok(false)`: the
    /// peer closed the connection.
    fn fill(&mut self, deadline: Instant) -> Result<bool, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(ReadError::Io)?;
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads the next request. The connection may sit idle for `idle` before its first byte;
    /// from then the whole request must arrive within `read_timeout`. Bodies over `max_body`
    /// are refused (413) without being read.
    pub fn read_request(
        &mut self,
        idle: Duration,
        read_timeout: Duration,
        max_body: usize,
    ) -> Result<Request, ReadError> {
        while self.buf.is_empty() {
            match self.fill(Instant::now() + idle) {
                Ok(true) => {}
                Ok(false) | Err(ReadError::Timeout) => return Err(ReadError::Closed),
                Err(e) => return Err(e),
            }
        }
        let deadline = Instant::now() + read_timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad {
                    status: 431,
                    message: format!("the request head is larger than {MAX_HEAD} bytes"),
                });
            }
            if !self.fill(deadline)? {
                return Err(ReadError::Closed);
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&self.buf[..head_end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => unreachable!("the head ends with an empty line"),
            Err(e) => {
                return Err(ReadError::Bad {
                    status: 400,
                    message: format!("malformed HTTP request: {e}"),
                })
            }
        }
        let method = parsed.method.unwrap_or("").to_owned();
        let target = parsed.path.unwrap_or("");
        let path = target.split('?').next().unwrap_or("").to_owned();
        let http10 = parsed.version == Some(0);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        self.buf.drain(..head_end);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let connection = get("connection").unwrap_or("").to_ascii_lowercase();
        let keep_alive = if http10 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = match get("content-length") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| ReadError::Bad {
                status: 400,
                message: format!("Content-Length {v:?} is not a number"),
            })?),
            None => None,
        };
        if length.is_some_and(|n| n > max_body) {
            return Err(too_large(max_body));
        }
        if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && (chunked || length.unwrap_or(0) > 0)
            && self.buf.is_empty()
        {
            let _ = (&self.stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = if chunked {
            self.read_chunked(deadline, max_body)?
        } else {
            let n = length.unwrap_or(0);
            while self.buf.len() < n {
                if !self.fill(deadline)? {
                    return Err(ReadError::Closed);
                }
            }
            self.buf.drain(..n).collect()
        };
        Ok(Request {
            method,
            path,
            headers,
            body,
            keep_alive,
        })
    }

    /// A chunked body (`size CRLF data CRLF ... 0 CRLF [trailers] CRLF`).
    fn read_chunked(&mut self, deadline: Instant, max_body: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if self.buf.len() > 1024 {
                    return Err(bad_chunk("a chunk size line is too long"));
                }
                if !self.fill(deadline)? {
                    return Err(ReadError::Closed);
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| bad_chunk(&format!("bad chunk size {size_text:?}")))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        if !self.fill(deadline)? {
                            return Err(ReadError::Closed);
                        }
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > max_body {
                return Err(too_large(max_body));
            }
            while self.buf.len() < size + 2 {
                if !self.fill(deadline)? {
                    return Err(ReadError::Closed);
                }
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(bad_chunk("a chunk is not followed by CRLF"));
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

fn too_large(limit: usize) -> ReadError {
    ReadError::Bad {
        status: 413,
        message: format!(
            "request body is larger than this server's limit of {limit} bytes \
             ([serve] max_body_bytes)"
        ),
    }
}

fn bad_chunk(what: &str) -> ReadError {
    ReadError::Bad {
        status: 400,
        message: format!("malformed chunked request body: {what}"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a complete response. `keep_alive` is announced with `Connection`.
pub fn write_response(
    mut out: &TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, String)],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in extra {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // One write for small responses: no Nagle delay between head and body.
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    out.write_all(&all)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair: (the server's side wrapped in a `Conn`, the client's socket).
    fn pair() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (Conn::new(s), c)
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn pipelined_requests_and_chunked_bodies() {
        let (mut conn, mut client) = pair();
        client
            .write_all(
                b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
                  POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                  3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
            )
            .unwrap();
        let a = conn.read_request(T, T, 100).unwrap();
        assert_eq!((a.method.as_str(), a.path.as_str()), ("POST", "/a"));
        assert_eq!(a.body, b"hello");
        assert!(a.keep_alive);
        assert_eq!(a.header("host"), Some("h"));
        let b = conn.read_request(T, T, 100).unwrap();
        assert_eq!(b.body, b"abcde");
        assert!(!b.keep_alive);
        drop(client);
        assert!(matches!(
            conn.read_request(T, T, 100),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn limits_and_malformed_input() {
        let (mut conn, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
            .unwrap();
        match conn.read_request(T, T, 10) {
            Err(ReadError::Bad { status: 413, .. }) => {}
            other => panic!("{other:?}"),
        }
        let (mut conn, mut client) = pair();
        client.write_all(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(
            conn.read_request(T, T, 10),
            Err(ReadError::Bad { status: 400, .. })
        ));
        let (mut conn, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .unwrap();
        assert!(matches!(
            conn.read_request(T, T, 10),
            Err(ReadError::Bad { status: 400, .. })
        ));
    }

    #[test]
    fn a_slow_sender_times_out_and_an_idle_one_is_closed() {
        let (mut conn, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let t = Instant::now();
        assert!(matches!(
            conn.read_request(T, Duration::from_millis(200), 100),
            Err(ReadError::Timeout)
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        let (mut conn, _client) = pair();
        assert!(matches!(
            conn.read_request(Duration::from_millis(100), T, 100),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn expect_continue_is_answered() {
        let (mut conn, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let reader = std::thread::spawn(move || conn.read_request(T, T, 100).map(|r| r.body));
        let mut got = [0u8; 25];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"xyz").unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), b"xyz");
    }
}
