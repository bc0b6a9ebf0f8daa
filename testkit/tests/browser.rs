//! The browser harness against a small static page served by Python's http.server: a page
//! whose script fetches JSON, draws SVG bars and says "ready"; clicks, typing, JavaScript, the
//! console log, a screenshot, the selector named when a lookup fails, and no Chromium left after
//! the drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flowlens_testkit::{free_port, require, wait_port, Browser, ChildGuard, CHROMEDRIVER};
use serde_json::json;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title></head><body>
<p id="status">loading</p>
<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="200" height="120"></svg>
<button id="toggle">off</button>
<input id="name" value="initial">
<p id="echo"></p>
<script>
const SVG = "http://www.w3.org/2000/svg";
fetch("data.json").then(r => r.json()).then(data => {
  const chart = document.getElementById("chart");
  data.bars.forEach((h, i) => {
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("class", "bar");
    bar.setAttribute("x", 10 + i * 40);
    bar.setAttribute("y", 100 - h);
    bar.setAttribute("width", 30);
    bar.setAttribute("height", h);
    bar.setAttribute("data-value", h);
    chart.appendChild(bar);
  });
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 10);
  label.setAttribute("y", 115);
  label.textContent = data.title;
  chart.appendChild(label);
  console.log("loaded", data.bars.length, "bars");
  document.getElementById("status").textContent = "ready";
});
document.getElementById("toggle").addEventListener("click", e => {
  e.target.textContent = e.target.textContent === "off" ? "on" : "off";
});
document.getElementById("name").addEventListener("input", e => {
  document.getElementById("echo").textContent = e.target.value;
});
</script>
</body></html>
"#;

const DATA: &str = r#"{"title": "flows per second", "bars": [20, 60, 90]}"#;

const WAIT: Duration = Duration::from_secs(10);

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let payload =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Whether process `pid` is gone (or a zombie nobody reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn drives_a_page_with_svg_fetch_clicks_typing_and_screenshot() {
    if require(CHROMEDRIVER, "CHROMIUM") {
        return;
    }
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), PAGE).unwrap();
    std::fs::write(site.path().join("data.json"), DATA).unwrap();
    let port = free_port();
    let log = site.path().join("http.log");
    let mut server = ChildGuard::spawn(
        "http.server",
        Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(site.path())
            .arg(port.to_string()),
        &log,
    );
    wait_port(port, &mut server, &log, WAIT);
    let url = format!("http://127.0.0.1:{port}/index.html");

    let browser = Browser::start();
    browser.goto(&url);
    browser.wait_text("#status", "ready", WAIT);
    assert_eq!(browser.current_url(), url);

    let bars = browser.find_all("#chart rect.bar");
    let values: Vec<_> = bars.iter().map(|b| b.attr("data-value")).collect();
    assert_eq!(
        values,
        [Some("20".into()), Some("60".into()), Some("90".into())]
    );
    assert_eq!(bars[2].attr("y").as_deref(), Some("10"));
    assert_eq!(bars[0].attr("no-such-attribute"), None);
    let chart = browser.wait_for("#chart", WAIT);
    assert_eq!(chart.find_all("rect").len(), 3);
    assert_eq!(browser.find("#chart text").text(), "flows per second");

    let toggle = browser.find("#toggle");
    toggle.click();
    browser.wait_text("#toggle", "on", WAIT);
    assert_eq!(toggle.text(), "on");

    let name = browser.find("#name");
    name.clear();
    name.send_keys("flowlens");
    browser.wait_text("#echo", "flowlens", WAIT);
    assert_eq!(
        name.attr("value").as_deref(),
        Some("initial"),
        "the attribute, not the property"
    );
    let typed = browser.execute("return document.getElementById('name').value", vec![]);
    assert_eq!(typed, json!("flowlens"));
    let sum = browser.execute(
        "return arguments[0] + arguments[1].length",
        vec![json!(40), json!([1, 2])],
    );
    assert_eq!(sum, json!(42));

    let console = browser.console_log();
    assert!(
        console
            .iter()
            .any(|e| e.contains("loaded") && e.contains("3")),
        "console: {console:?}"
    );

    let shot = site.path().join("page.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..8.min(png.len())]
    );
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1400, "viewport width at scale factor 1");

    let missing = panic_message(|| {
        browser.find("#no-such-thing");
    });
    assert!(missing.contains("#no-such-thing"), "{missing}");
    let late = panic_message(|| browser.wait_text("#absent", "x", Duration::from_millis(200)));
    assert!(late.contains("absent") && late.contains(&url), "{late}");
    assert!(
        late.contains("loaded"),
        "the console log in the message: {late}"
    );

    let chromium = browser
        .chromium_pid()
        .expect("chromedriver reports Chromium's pid");
    drop(browser);
    assert!(
        gone(chromium),
        "Chromium {chromium} still running after the drop"
    );
    assert!(Path::new(&shot).exists());
}
