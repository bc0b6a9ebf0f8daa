//! DNS message headers and questions (RFC 1035 §4.1), parsed from the first bytes of a UDP or
//! TCP payload; anything that does not look like one DNS message with one question is refused.

/// The longest name a question can carry, dotted, without the root's trailing dot.
pub const MAX_NAME: usize = 253;

/// What flowlens keeps of one DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// QR: this is a response.
    pub response: bool,
    /// RCODE (the header's 4 bits).
    pub rcode: u8,
    /// QNAME, lower-case, dotted, no trailing dot ("" for the root); `None` when the copied
    /// bytes end inside it.
    pub name: Option<String>,
    /// QTYPE; 0 when the copied bytes end before it.
    pub qtype: u16,
}

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// Why a payload is not taken as a DNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Shorter than a header (after TCP's length prefix).
    Short,
    /// OPCODE other than QUERY (0), or a question count other than 1.
    NotAQuery,
    /// A label longer than 63 bytes, a compression pointer or a name past 253 bytes in the
    /// question.
    BadName,
    /// TCP: the length prefix is shorter than a header, or longer than the segment (and the
    /// segment is not the message's start).
    BadLength,
}

/// Parses the DNS message at the start of `data` (the copied part of a payload of
/// `payload_len` bytes). Over TCP a message is preceded by its 2-byte length, and only a
/// segment that starts a message is parsed.
pub fn parse(data: &[u8], payload_len: usize, tcp: bool) -> Result<Message, Refused> {
    let data = if tcp {
        if data.len() < 2 {
            return Err(Refused::Short);
        }
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        // A segment holds the start of one message, possibly the whole of it and more.
        if len < 12 || payload_len < 2 + 12 {
            return Err(Refused::BadLength);
        }
        &data[2..]
    } else {
        data
    };
    if data.len() < 12 {
        return Err(Refused::Short);
    }
    let id = u16::from_be_bytes([data[0], data[1]]);
    let flags = u16::from_be_bytes([data[2], data[3]]);
    let qdcount = u16::from_be_bytes([data[4], data[5]]);
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 || qdcount != 1 {
        return Err(Refused::NotAQuery);
    }
    let (name, qtype) = question(&data[12..])?;
    Ok(Message {
        id,
        response: flags & 0x8000 != 0,
        rcode: (flags & 0xf) as u8,
        name,
        qtype,
    })
}

/// The question's name and type; the name is `None` when `q` ends inside it.
fn question(q: &[u8]) -> Result<(Option<String>, u16), Refused> {
    let mut name = String::new();
    let mut at = 0;
    loop {
        let Some(&len) = q.get(at) else {
            return Ok((None, 0));
        };
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(Refused::BadName);
        }
        let Some(label) = q.get(at..at + len as usize) else {
            return Ok((None, 0));
        };
        at += len as usize;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // Printable ASCII as is (lower-cased); other bytes escaped as \DDD (RFC 4343).
            match b {
                b'!'..=b'~' if b != b'\\' && b != b'.' => name.push(b.to_ascii_lowercase() as char),
                _ => name.push_str(&format!("\\{b:03}")),
            }
        }
        if name.len() > MAX_NAME {
            return Err(Refused::BadName);
        }
    }
    let qtype = q
        .get(at..at + 2)
        .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    Ok((Some(name), qtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (dotted) of type A with id 0x1234; `flags` as given.
    fn message(name: &str, flags: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn query_and_response() {
        let q = message("WWW.Example.org", 0x0100);
        let m = parse(&q, q.len(), false).unwrap();
        assert_eq!(
            m,
            Message {
                id: 0x1234,
                response: false,
                rcode: 0,
                name: Some("www.example.org".into()),
                qtype: 1
            }
        );
        let r = message("nope.example.org", 0x8183);
        let m = parse(&r, r.len(), false).unwrap();
        assert!(m.response);
        assert_eq!(m.rcode, RCODE_NXDOMAIN);
    }

    #[test]
    fn tcp_length_prefix() {
        let q = message("a.b", 0x0100);
        let mut t = (q.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(&q);
        let m = parse(&t, t.len(), true).unwrap();
        assert_eq!(m.name.as_deref(), Some("a.b"));
        // A continuation segment (no length prefix before a header) is refused.
        assert!(parse(&[0, 3, 1, 2, 3], 5, true).is_err());
    }

    #[test]
    fn truncated_copy_keeps_the_header() {
        let q = message("long.example.org", 0x0100);
        let m = parse(&q[..16], 400, false).unwrap();
        assert_eq!((m.name, m.qtype), (None, 0));
    }

    #[test]
    fn refuses_what_is_not_one_query() {
        assert_eq!(parse(&[0; 11], 11, false), Err(Refused::Short));
        let mut q = message("a.b", 0x2800); // OPCODE 5 (UPDATE)
        assert_eq!(parse(&q, q.len(), false), Err(Refused::NotAQuery));
        q = message("a.b", 0x0100);
        q[5] = 2;
        assert_eq!(parse(&q, q.len(), false), Err(Refused::NotAQuery));
        let mut p = message("a.b", 0x0100);
        p[12] = 0xc0; // compression pointer in the question
        assert_eq!(parse(&p, p.len(), false), Err(Refused::BadName));
    }

    #[test]
    fn odd_bytes_are_escaped() {
        let mut q = message("ab.c", 0x0100);
        q[13] = b'.';
        q[14] = 0;
        let m = parse(&q, q.len(), false).unwrap();
        assert_eq!(m.name.as_deref(), Some("\\046\\000.c"));
    }
}
