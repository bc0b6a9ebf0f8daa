//! HTTP/1.x request lines and status lines (RFC 9112 §3, §4) at the start of a TCP segment's
//! payload; a segment that starts with neither (a body, a header continued) is no message start.

/// The longest path kept of a request target (bytes).
pub const MAX_PATH: usize = 128;

/// Methods taken as a request's start (RFC 9110 §9 and PATCH); the kernel taps segments that
/// start with their first four bytes, or with "HTTP".
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// What flowlens keeps of one HTTP message start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request line: the method and the target's path (no query, no fragment; the
    /// authority of an absolute-form target left out; at most [`MAX_PATH`] bytes, bytes
    /// outside printable ASCII percent-encoded).
    Request { method: &'static str, path: String },
    /// A status line.
    Response { status: u16 },
}

/// The HTTP/1.x message starting `data` (the copied part of a segment's payload), if one does.
pub fn parse(data: &[u8]) -> Option<Message> {
    if let Some(rest) = data.strip_prefix(b"HTTP/1.") {
        // "HTTP/1.x SP 3DIGIT SP"
        let line = rest.get(..5)?;
        let digits = &line[2..5];
        if !line[0].is_ascii_digit() || line[1] != b' ' || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        return (100..=999)
            .contains(&status)
            .then_some(Message::Response { status });
    }
    let space = data.iter().position(|&b| b == b' ')?;
    let method = *METHODS.iter().find(|m| m.as_bytes() == &data[..space])?;
    let rest = &data[space + 1..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let target = &rest[..end];
    // With the whole line copied, it must end with the version.
    if end < rest.len() && !rest[end + 1..].starts_with(b"HTTP/1.") {
        let copied_to_end =
            rest.len() - end - 1 < b"HTTP/1.".len() && b"HTTP/1.".starts_with(&rest[end + 1..]);
        if !copied_to_end {
            return None;
        }
    }
    if target.is_empty() {
        return None;
    }
    Some(Message::Request {
        method,
        path: path(target),
    })
}

/// The path of a request target, bounded and printable.
fn path(target: &[u8]) -> String {
    // absolute-form: scheme "://" authority path
    let target = match target.windows(3).position(|w| w == b"://") {
        Some(at) => {
            let after = &target[at + 3..];
            &after[after.iter().position(|&b| b == b'/').unwrap_or(after.len())..]
        }
        None => target,
    };
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let mut out = String::new();
    for &b in &target[..end] {
        let piece = if (b'!'..=b'~').contains(&b) {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        };
        if out.len() + piece.len() > MAX_PATH {
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &'static str, path: &str) -> Option<Message> {
        Some(Message::Request {
            method,
            path: path.into(),
        })
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse(b"GET /api/items?id=3 HTTP/1.1\r\nHost: x\r\n\r\n"),
            request("GET", "/api/items")
        );
        assert_eq!(
            parse(b"POST http://example.org:8080/submit#top HTTP/1.0\r\n"),
            request("POST", "/submit")
        );
        assert_eq!(parse(b"OPTIONS * HTTP/1.1\r\n"), request("OPTIONS", "*"));
        // The copy ends inside the target or the version: still a request.
        assert_eq!(parse(b"GET /very/long"), request("GET", "/very/long"));
        assert_eq!(parse(b"GET /a HTT"), request("GET", "/a"));
        let long = format!("GET /{} HTTP/1.1\r\n", "x".repeat(300));
        let Some(Message::Request { path, .. }) = parse(long.as_bytes()) else {
            panic!()
        };
        assert_eq!(path.len(), MAX_PATH);
        assert_eq!(
            parse(b"GET /caf\xc3\xa9 HTTP/1.1"),
            request("GET", "/caf%C3%A9")
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse(b"HTTP/1.1 404 Not Found\r\n"),
            Some(Message::Response { status: 404 })
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 \r\n"),
            Some(Message::Response { status: 200 })
        );
    }

    #[test]
    fn what_is_no_message_start() {
        for data in [
            &b"GETX / HTTP/1.1"[..],
            b"get / HTTP/1.1",
            b"GET / SMTP/1.0\r\n",
            b"GET  HTTP/1.1",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2x0 OK",
            b"HTTP/2 200",
            b"\x16\x03\x01\x02\x00",
            b"",
        ] {
            assert_eq!(parse(data), None, "{:?}", String::from_utf8_lossy(data));
        }
    }
}
