//! A TCP relay in front of one local service that keeps what its clients sent, as the service
//! received it: the oracle for settings that only show on the wire (the Kafka client id and
//! the replication factor of created topics in the request bytes; how long an HTTP client
//! waits for an answer that never comes, and when it tries again). `hold` turns it into a
//! server that accepts, reads and never answers; `delay` into a slow link towards the service
//! (each request reaches the service late: an INSERT lands long after it was sent). Each
//! request is also timed ([`Request`]: when it came, when its answer began), so how many of a
//! client's requests were outstanding at once can be read from the outside.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of each connection's client side that are kept.
const KEPT: usize = 4 << 20;

/// A client quiet this long before it sends again starts a new request (for `delay`).
pub const QUIET: Duration = Duration::from_millis(20);

/// One client connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub accepted: Instant,
    /// When the client closed it (or the relay cut it).
    pub closed: Option<Instant>,
    /// Accepted while held: nothing was forwarded or answered.
    pub held: bool,
    /// What the client sent, from the start (the first [`KEPT`] bytes).
    pub sent: Vec<u8>,
}

impl Connection {
    /// The Kafka requests the client sent on it (complete frames only).
    pub fn kafka_requests(&self) -> Vec<KafkaRequest> {
        kafka_frames(&self.sent)
    }
}

/// One request (what a client sends after [`QUIET`] without sending) and when it was answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// The index of its connection in [`Relay::connections`].
    pub connection: usize,
    /// When its first bytes reached the relay.
    pub sent: Instant,
    /// When the first bytes of the service's answer came back, if they did.
    pub answered: Option<Instant>,
    /// Its first bytes (an HTTP request line and headers).
    pub head: Vec<u8>,
}

/// Bytes of each request's beginning kept in [`Request::head`].
const HEAD: usize = 1024;

#[derive(Default)]
struct State {
    connections: Vec<Connection>,
    requests: Vec<Request>,
    /// Open streams (client side) of forwarded connections, to cut them on [`Relay::hold`].
    open: Vec<(usize, TcpStream)>,
}

/// See the module documentation. Stops accepting on drop.
pub struct Relay {
    pub port: u16,
    state: Arc<Mutex<State>>,
    held: Arc<AtomicBool>,
    /// Milliseconds each request waits before it is forwarded.
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// One Kafka request frame: its header and the bytes after the client id.
#[derive(Debug, Clone)]
pub struct KafkaRequest {
    pub api_key: i16,
    pub api_version: i16,
    pub client_id: Option<String>,
    pub rest: Vec<u8>,
}

impl Relay {
    /// A relay on a free port to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Self {
        Self::start_on(super::free_port(), target)
    }

    /// A relay on 127.0.0.1:`port` to 127.0.0.1:`target`.
    pub fn start_on(port: u16, target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Self {
            port,
            state: Arc::default(),
            held: Arc::default(),
            delay_ms: Arc::default(),
            stop: Arc::default(),
        };
        let (state, held, stop) = (relay.state.clone(), relay.held.clone(), relay.stop.clone());
        let delay_ms = relay.delay_ms.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let held = held.load(Ordering::SeqCst);
                        accept(&state, client, target, held, delay_ms.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        relay
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `true`: every open connection is cut, new ones are read and never answered; `false`:
    /// new connections are forwarded again.
    pub fn hold(&self, on: bool) {
        self.held.store(on, Ordering::SeqCst);
        if on {
            for (_, stream) in self.state.lock().unwrap().open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Each request a client sends from now on (what it sends after [`QUIET`] without
    /// sending) waits `delay` before it is forwarded; the rest of it follows at once.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every connection so far, in the order they were accepted.
    pub fn connections(&self) -> Vec<Connection> {
        self.state.lock().unwrap().connections.clone()
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The Kafka requests of every connection, in order (complete frames only).
    pub fn kafka_requests(&self) -> Vec<KafkaRequest> {
        self.connections()
            .iter()
            .flat_map(Connection::kafka_requests)
            .collect()
    }

    /// The number of records in each Produce request sent as `client_id`.
    pub fn records_per_produce(&self, client_id: &str) -> Vec<usize> {
        self.kafka_requests()
            .iter()
            .filter(|r| r.api_key == 0 && r.client_id.as_deref() == Some(client_id))
            .filter_map(produced_records)
            .collect()
    }

    /// (topic, partitions, replication factor) of every topic a CreateTopics request asked for.
    pub fn created_topics(&self) -> Vec<(String, i32, i16)> {
        self.kafka_requests()
            .iter()
            .filter(|r| r.api_key == 19)
            .flat_map(create_topics)
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, stream) in self.state.lock().unwrap().open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept(
    state: &Arc<Mutex<State>>,
    client: TcpStream,
    target: u16,
    held: bool,
    delay_ms: Arc<AtomicU64>,
) {
    let index = {
        let mut s = state.lock().unwrap();
        s.connections.push(Connection {
            accepted: Instant::now(),
            closed: None,
            held,
            sent: Vec::new(),
        });
        s.connections.len() - 1
    };
    let upstream = if held {
        None
    } else {
        match TcpStream::connect(("127.0.0.1", target)) {
            Ok(u) => Some(u),
            Err(_) => {
                let _ = client.shutdown(Shutdown::Both);
                state.lock().unwrap().connections[index].closed = Some(Instant::now());
                return;
            }
        }
    };
    if let Some(upstream) = &upstream {
        let mut s = state.lock().unwrap();
        s.open.push((index, client.try_clone().unwrap()));
        let (mut from, mut to) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
        let state = state.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                if let Some(r) = state
                    .lock()
                    .unwrap()
                    .requests
                    .iter_mut()
                    .rev()
                    .find(|r| r.connection == index)
                    .filter(|r| r.answered.is_none())
                {
                    r.answered = Some(now);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let (state, mut client) = (state.clone(), client);
    std::thread::spawn(move || {
        let mut upstream = upstream;
        let mut buf = [0u8; 64 * 1024];
        let mut last = Instant::now() - QUIET;
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut s = state.lock().unwrap();
                let sent = &mut s.connections[index].sent;
                let room = KEPT.saturating_sub(sent.len()).min(n);
                sent.extend_from_slice(&buf[..room]);
                if last.elapsed() >= QUIET {
                    s.requests.push(Request {
                        connection: index,
                        sent: Instant::now(),
                        answered: None,
                        head: Vec::new(),
                    });
                }
                if let Some(r) = s.requests.iter_mut().rev().find(|r| r.connection == index) {
                    let room = HEAD.saturating_sub(r.head.len()).min(n);
                    r.head.extend_from_slice(&buf[..room]);
                }
            }
            if let Some(u) = &mut upstream {
                let delay = delay_ms.load(Ordering::SeqCst);
                if delay > 0 && last.elapsed() >= QUIET {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                last = Instant::now();
                if u.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        if let Some(u) = &upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
        let mut s = state.lock().unwrap();
        s.connections[index].closed = Some(Instant::now());
        s.open.retain(|(i, _)| *i != index);
    });
}

/// Big-endian reader over a byte slice; `None` past its end.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    /// ARRAY (int32 length) or COMPACT_ARRAY (uvarint length + 1): the number of elements.
    fn array(&mut self, compact: bool) -> Option<usize> {
        if compact {
            Some(self.uvarint()?.checked_sub(1)? as usize)
        } else {
            usize::try_from(self.i32()?).ok()
        }
    }
    /// Tagged fields (flexible versions only): skipped.
    fn tags(&mut self, flexible: bool) -> Option<()> {
        if flexible {
            for _ in 0..self.uvarint()? {
                self.uvarint()?;
                let len = self.uvarint()? as usize;
                self.take(len)?;
            }
        }
        Some(())
    }
    /// STRING (int16 length) or COMPACT_STRING (uvarint length + 1).
    fn string(&mut self, compact: bool) -> Option<String> {
        let len = if compact {
            self.uvarint()?.checked_sub(1)? as usize
        } else {
            usize::try_from(self.i16()?).ok()?
        };
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

/// The complete request frames at the start of a client's byte stream.
fn kafka_frames(mut sent: &[u8]) -> Vec<KafkaRequest> {
    let mut out = Vec::new();
    while sent.len() >= 4 {
        let size = i32::from_be_bytes(sent[..4].try_into().unwrap());
        let Ok(size) = usize::try_from(size) else {
            break;
        };
        let Some(frame) = sent.get(4..4 + size) else {
            break;
        };
        sent = &sent[4 + size..];
        let mut c = Cursor(frame);
        let (Some(api_key), Some(api_version), Some(_correlation)) = (c.i16(), c.i16(), c.i32())
        else {
            break;
        };
        // The request header's client id is a nullable STRING in every header version.
        let client_id = match c.i16() {
            Some(-1) => None,
            Some(len) => c
                .take(usize::try_from(len).unwrap_or(0))
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            None => break,
        };
        out.push(KafkaRequest {
            api_key,
            api_version,
            client_id,
            rest: c.0.to_vec(),
        });
    }
    out
}

/// The records of a Produce request (v3-v8, or flexible v9+): the sum of its record batches'
/// counts.
fn produced_records(request: &KafkaRequest) -> Option<usize> {
    let flexible = request.api_version >= 9;
    if request.api_version < 3 {
        return None;
    }
    let mut c = Cursor(&request.rest);
    c.tags(flexible)?;
    c.string(flexible); // transactional id (nullable)
    c.take(2 + 4)?; // acks, timeout
    let mut records = 0usize;
    for _ in 0..c.array(flexible)? {
        c.string(flexible)?;
        for _ in 0..c.array(flexible)? {
            c.i32()?;
            let len = if flexible {
                c.uvarint()?.checked_sub(1)? as usize
            } else {
                usize::try_from(c.i32()?).ok()?
            };
            let mut batches = c.take(len)?;
            // Record batches: base offset (8), length (4), then 45 bytes up to the count.
            while batches.len() >= 61 {
                let length = i32::from_be_bytes(batches[8..12].try_into().ok()?);
                let count = i32::from_be_bytes(batches[57..61].try_into().ok()?);
                records += usize::try_from(count).ok()?;
                batches = batches.get(12 + usize::try_from(length).ok()?..)?;
            }
            c.tags(flexible)?;
        }
        c.tags(flexible)?;
    }
    Some(records)
}

/// The topics of a CreateTopics request (v0-v4, or flexible v5+).
fn create_topics(request: &KafkaRequest) -> Vec<(String, i32, i16)> {
    let flexible = request.api_version >= 5;
    let mut c = Cursor(&request.rest);
    let mut out = Vec::new();
    let mut parse = || -> Option<()> {
        // Flexible versions: the header's tagged fields come first.
        c.tags(flexible)?;
        let count = c.array(flexible)?;
        for _ in 0..count {
            let name = c.string(flexible)?;
            let partitions = c.i32()?;
            let replication = c.i16()?;
            out.push((name, partitions, replication));
            // Assignments: (partition, broker ids); configs: (name, nullable value).
            for _ in 0..c.array(flexible)? {
                c.i32()?;
                let brokers = c.array(flexible)?;
                c.take(4 * brokers)?;
                c.tags(flexible)?;
            }
            for _ in 0..c.array(flexible)? {
                c.string(flexible)?;
                c.string(flexible);
                c.tags(flexible)?;
            }
            c.tags(flexible)?;
        }
        Some(())
    };
    parse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_and_create_topics_v4() {
        let mut body = Vec::new();
        body.extend_from_slice(&19i16.to_be_bytes());
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&5i16.to_be_bytes());
        body.extend_from_slice(b"topic");
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&14i16.to_be_bytes());
        body.extend_from_slice(b"cleanup.policy");
        body.extend_from_slice(&7i16.to_be_bytes());
        body.extend_from_slice(b"compact");
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let requests = kafka_frames(&frame);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].client_id.as_deref(), Some("abc"));
        assert_eq!(create_topics(&requests[0]), [("topic".into(), 3, 2)]);
    }

    #[test]
    fn counts_the_records_of_a_produce_v7_request() {
        let batch = |count: i32| {
            let mut b = vec![0u8; 61];
            b[8..12].copy_from_slice(&49i32.to_be_bytes());
            b[57..61].copy_from_slice(&count.to_be_bytes());
            b
        };
        let mut records = batch(3);
        records.extend(batch(4));
        let mut rest = Vec::new();
        rest.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
        rest.extend_from_slice(&(-1i16).to_be_bytes()); // acks
        rest.extend_from_slice(&30_000i32.to_be_bytes());
        rest.extend_from_slice(&1i32.to_be_bytes());
        rest.extend_from_slice(&1i16.to_be_bytes());
        rest.extend_from_slice(b"t");
        rest.extend_from_slice(&1i32.to_be_bytes());
        rest.extend_from_slice(&0i32.to_be_bytes());
        rest.extend_from_slice(&(records.len() as i32).to_be_bytes());
        rest.extend_from_slice(&records);
        let request = KafkaRequest {
            api_key: 0,
            api_version: 7,
            client_id: None,
            rest,
        };
        assert_eq!(produced_records(&request), Some(7));
    }
}
