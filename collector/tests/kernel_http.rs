//! HTTP/1.x visibility on real HTTP traffic between two namespaces: Python's http.server in B
//! (keep-alive, known statuses per path, one path answering after 150 ms), curl in A with one
//! connection for ten requests and another for a POST. The collector (the library's main loop,
//! tansu) watches A's veth, and so does a capture (dumpcap). Each connection's records must
//! count exactly its requests and responses by status class as curl reported them, the last
//! method, path and status, and one latency per answer: the capture's own (request line's
//! segment to the status line's, tshark's timestamps) within 1 ms, and curl's
//! request-to-first-byte time within 20 ms; the slow answer took at least the server's 150 ms.

mod common;

use std::time::Duration;

use flowlens_schemas::{Http, RawFlow};
use flowlens_testkit::{curl, web_server, Capture, CaptureFile, Transfer, SLOW_MS};

const PORT: u16 = 8080;
/// curl's source port for the ten GETs, and for the POST.
const GETS_FROM: u16 = 43_001;
const POST_FROM: u16 = 43_002;
const PATHS: [&str; 10] = [
    "/ok/1",
    "/ok/2?x=1",
    "/missing",
    "/fail",
    "/moved",
    "/slow",
    "/ok/3",
    "/nope",
    "/fail",
    "/ok/4",
];

/// The HTTP counts of every record of the TCP conversation from `port`, summed.
fn http_of(flows: &[RawFlow], port: u16) -> Http {
    let mut sum = Http::default();
    for f in flows
        .iter()
        .filter(|f| f.proto == 6 && (f.src_port as u16 == port || f.dst_port as u16 == port))
    {
        let Some(h) = &f.http else { continue };
        sum.requests += h.requests;
        sum.responses += h.responses;
        sum.status_2xx += h.status_2xx;
        sum.status_3xx += h.status_3xx;
        sum.status_4xx += h.status_4xx;
        sum.status_5xx += h.status_5xx;
        sum.status_other += h.status_other;
        sum.answered += h.answered;
        sum.latency_sum_ns += h.latency_sum_ns;
        sum.latency_max_ns = sum.latency_max_ns.max(h.latency_max_ns);
        sum.latencies_us.extend(&h.latencies_us);
        if h.last_method.is_some() {
            sum.last_method = h.last_method.clone();
            sum.last_path = h.last_path.clone();
        }
        if h.last_status != 0 {
            sum.last_status = h.last_status;
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_statuses_and_latency_against_curl() {
    let run = common::run_collector(
        "h",
        |c| c.collector.scan_interval_ms = 500,
        |pair| {
            let _server = web_server(&pair.ns_b, pair.ip_b, PORT);
            let base = format!("http://{}:{PORT}", pair.ip_b);
            let urls: Vec<String> = PATHS.iter().map(|p| format!("{base}{p}")).collect();
            let capture = Capture::start(&pair.ns_a, &pair.if_a);
            let gets = curl(&pair.ns_a, Some(GETS_FROM), &urls, None);
            let post = curl(
                &pair.ns_a,
                Some(POST_FROM),
                &[format!("{base}/submit?draft=1")],
                Some("name=flowlens"),
            );
            std::thread::sleep(Duration::from_millis(1_200));
            (gets, post, capture.stop())
        },
    )
    .await;
    let (gets, post, capture): &(Vec<Transfer>, Vec<Transfer>, CaptureFile) = &run.sent;
    let wireshark = capture.http_times_ms(PORT);
    let statuses: Vec<u16> = gets.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 404, 500, 301, 200, 200, 404, 500, 200],
        "curl's statuses"
    );
    assert_eq!(post.iter().map(|t| t.status).collect::<Vec<_>>(), [201]);

    let h = http_of(&run.flows, GETS_FROM);
    println!("GETs: {h:?}\ncurl: {gets:?}");
    let class = |c: u16| statuses.iter().filter(|s| **s / 100 == c).count() as i64;
    assert_eq!(
        (h.requests, h.responses, h.answered, h.status_other),
        (10, 10, 10, 0)
    );
    assert_eq!(
        (h.status_2xx, h.status_3xx, h.status_4xx, h.status_5xx),
        (class(2), class(3), class(4), class(5))
    );
    assert_eq!(
        (
            h.last_method.as_deref(),
            h.last_path.as_deref(),
            h.last_status
        ),
        (Some("GET"), Some("/ok/4"), 200)
    );
    assert_eq!(h.latencies_us.len(), 10);
    // Each listed latency is the sum's part truncated to µs.
    let listed: i64 = h.latencies_us.iter().sum();
    assert!((listed..=listed + 10).contains(&(h.latency_sum_ns / 1_000)));
    let shark = &wireshark[&GETS_FROM];
    assert_eq!(shark.len(), PATHS.len(), "responses in the capture");
    for (i, ((us, t), shark)) in h.latencies_us.iter().zip(gets).zip(shark).enumerate() {
        let ms = *us as f64 / 1e3;
        let curl_ms = t.latency_ms();
        println!(
            "{}: capture {shark:.3} ms, curl {curl_ms:.3} ms, flowlens {ms:.3} ms",
            PATHS[i]
        );
        assert!(
            (ms - shark).abs() <= 1.0,
            "request {i} ({}): {ms} ms in flowlens, the capture {shark} ms",
            PATHS[i]
        );
        // curl's time for a request on a reused connection is not always from the request's
        // sending (it was seen at 3 µs): a loose check only.
        assert!(
            (ms - curl_ms).abs() <= 20.0,
            "request {i} ({}): {ms} ms in the kernel, curl {curl_ms} ms",
            PATHS[i]
        );
    }
    let slow = h.latencies_us[5] as f64 / 1e3;
    assert!(slow >= SLOW_MS as f64, "/slow answered in {slow} ms");
    assert_eq!(
        h.latency_max_ns / 1_000,
        *h.latencies_us.iter().max().unwrap()
    );

    let p = http_of(&run.flows, POST_FROM);
    println!("POST: {p:?}");
    assert_eq!(
        (p.requests, p.responses, p.status_2xx, p.answered),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (
            p.last_method.as_deref(),
            p.last_path.as_deref(),
            p.last_status
        ),
        (Some("POST"), Some("/submit"), 201)
    );
}
